"""Prometheus metrics of the pre-trade flow (served by ``riskstream run`` and ``demo``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("riskstream_messages_total", "Input messages consumed, by topic.", ["topic"])
DECISIONS = Counter("riskstream_decisions_total", "Decisions published, by outcome.", ["decision"])
REASONS = Counter("riskstream_decision_reasons_total", "Reasons that fired, by code.", ["code"])
DEAD_LETTERS = Counter("riskstream_dlq_total", "Records sent to the dead-letter topic.", ["reason"])
DECISION_LATENCY = Histogram(
    "riskstream_decision_latency_seconds",
    "Wall-clock time from consuming a proposal to handing its RiskScore to the producer.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
INPUT_LAG = Gauge(
    "riskstream_input_lag_messages",
    "Messages on the broker not yet read, by input topic and partition.",
    ["topic", "partition"],
)
STATE_WRITE_FAILURES = Counter(
    "riskstream_redis_write_failures_total", "Redis state writes that failed (retried later)."
)
STATE_WRITES = Counter("riskstream_redis_writes_total", "Redis state keys written.")
OUTPUT_FAILURES = Counter(
    "riskstream_output_failures_total",
    "Records the broker never acknowledged (librdkafka gave up), by topic and error.",
    ["topic", "error"],
)
LATE_INPUTS = Counter(
    "riskstream_late_inputs_total",
    "Executions and controls that arrived after a later proposal was decided (applied anyway).",
    ["kind"],
)
TRADING_STATE = Gauge(
    "riskstream_trading_state",
    "Latest trading state by scope: 0 ACTIVE, 1 REDUCE_ONLY, 2 HALTED.",
    ["scope", "target"],
)
REGIME_PROBABILITY = Gauge(
    "riskstream_regime_probability",
    "Regime probabilities of the newest market bar, by regime (model order names).",
    ["regime"],
)
MODEL_INFERENCE = Histogram(
    "riskstream_model_inference_seconds",
    "Wall-clock time of one batched model call (all bars or rows of a batch), by model.",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
MODEL_INPUT_PSI = Gauge(
    "riskstream_model_input_psi",
    "Population stability index of live model inputs against training, by model and feature.",
    ["model", "feature"],
)
MODEL_LOAD_FAILURES = Counter(
    "riskstream_model_load_failures_total",
    "Models refused at load (missing artifact, hash mismatch) or calls that raised, by model.",
    ["model"],
)
MODEL_INFO = Gauge(
    "riskstream_model_info",
    "Models loaded by this process (value 1), by role (live, shadow), model, version, sha256.",
    ["role", "model", "version", "sha256"],
)
SHADOW_REGIME_AGREEMENT = Counter(
    "riskstream_shadow_regime_agreement_total",
    "Market bars where the shadow regime model's most likely regime agrees with the live one.",
    ["outcome"],
)
SHADOW_REGIME_DISTANCE = Histogram(
    "riskstream_shadow_regime_tv_distance",
    "Total-variation distance between the shadow and live regime probabilities, per bar.",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
)
SHADOW_VOL_DIFFERENCE = Histogram(
    "riskstream_shadow_vol_relative_difference",
    "|shadow - live| / live volatility forecast, per instrument and bar.",
    buckets=(1e-6, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SHADOW_FAILURES = Counter(
    "riskstream_shadow_failures_total",
    "Shadow models refused at load or calls that raised, by model (decisions unaffected).",
    ["model"],
)
CONTROL_REFUSED = Counter(
    "riskstream_control_refused_total",
    "Control commands the gate refused (dead-lettered), by reason code: UNSIGNED_CONTROL,"
    " UNKNOWN_KEY, BAD_SIGNATURE, EXPIRED_CONTROL, REPLAYED_CONTROL, INVALID_CONTROL.",
    ["reason"],
)
CONTROL_ACCEPTED = Counter(
    "riskstream_control_accepted_total",
    "Control commands that passed the gate (signature, freshness, nonce), by key id.",
    ["key_id"],
)
HISTORY_MISSES = Counter(
    "riskstream_instrument_history_misses_total",
    "Proposals the instrument step could not price as of their own ts_event, by reason:"
    " late (behind their partition's progress: priced as of it, stale), evicted (the tick or"
    " bar at or before it is no longer held, past the history cap or behind live idle"
    " progress: no market data, stale).",
    ["reason"],
)
