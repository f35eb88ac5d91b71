"""The production flow: the pre-trade dataflow between Kafka and Redis, from settings."""

from __future__ import annotations

import threading
from dataclasses import replace

from bytewax.dataflow import Dataflow

from dataflows.kafka_io import RecordSink, StoppableSource, consumer_config, producer_config
from dataflows.kafka_source import RiskSource, list_partitions
from dataflows.metrics_server import (
    Health,
    add_heartbeat,
    broker_check,
    models_check,
    redis_check,
)
from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from dataflows.redis_sink import RedisStateSink
from dataflows.settings import Settings
from export.manifest import ARTIFACTS
from models.runtime import verify_model_set
from operators.errors import ConfigError
from operators.market import (
    MarketConfig,
    ModelSources,
    RegimeOut,
    preload_models,
    use_model_sources,
)
from operators.records import AutoControl, DeadLetterItem, Decided
from operators.routing import count_dead_letters, count_decisions
from schemas.codec import Codec, make_codec


def codec_for(settings: Settings) -> Codec:
    """Registry framing when a registry URL is set, else single-object encoding."""
    conf = {k: v.get_secret_value() for k, v in settings.schema_registry_config.items()}
    url = settings.schema_registry_url
    return make_codec(url.get_secret_value() if url else None, conf)


def _score_key(d: Decided) -> bytes:
    return str(d.record["portfolio_id"]).encode()


def _control_key(c: AutoControl) -> bytes:
    return str(c.record["target"]).encode()


def _regime_key(r: RegimeOut) -> bytes:
    return str(r.record["scope"]).encode()


def _letter_key(d: DeadLetterItem) -> bytes | None:
    key = d.record["source_key"]
    return key if isinstance(key, bytes) else None


def configure_models(settings: Settings) -> dict[str, str]:
    """Verify and load this process's model sets; why each live model cannot be used.

    A configured set (``RISKSTREAM_MODEL_DIR``, ``RISKSTREAM_MODEL_MANIFEST_SHA256``,
    ``RISKSTREAM_SHADOW_MODEL_DIR``) whose manifest or artifacts do not match is refused
    with an ArtifactError; the shipped default only degrades (``MODEL_UNAVAILABLE``).
    """
    live = settings.model_dir or ARTIFACTS
    if settings.model_dir is not None or settings.model_manifest_sha256 is not None:
        verify_model_set(live, expected_sha256=settings.model_manifest_sha256)
    if settings.shadow_model_dir is not None:
        verify_model_set(settings.shadow_model_dir)
    use_model_sources(ModelSources(live, settings.shadow_model_dir))
    return preload_models(MarketConfig())


def probes(settings: Settings, model_problems: dict[str, str]) -> Health:
    """Liveness and readiness of this process: broker, Redis and models."""
    health = Health(settings.liveness_timeout_s)
    health.add_check("broker", broker_check(settings.kafka_client_config()))
    if settings.redis_url is not None:
        health.add_check("redis", redis_check(settings.redis_url.get_secret_value()))
    health.add_check("models", models_check(model_problems))
    return health


def kafka_flow(
    settings: Settings,
    *,
    from_end: bool = False,
    tail: bool = True,
    wait_for_data: bool = False,
    stop: threading.Event | None = None,
    health: Health | None = None,
    durable: bool = True,
) -> Dataflow:
    """The pre-trade flow reading and writing the configured topics and Redis.

    Setting ``stop`` ends the input, and the flow finishes after flushing its sinks.
    With ``health`` (and ``stop``), every worker also beats its liveness heartbeat.
    ``durable`` (with recovery): Kafka outputs are flushed every batch (at-least-once)
    and snapshots carry the state; without it snapshots are empty.
    """
    if not settings.brokers:
        raise ConfigError("RISKSTREAM_KAFKA_BOOTSTRAP is not set (riskstream demo starts a broker)")
    if settings.redis_url is None:
        raise ConfigError("RISKSTREAM_REDIS_URL is not set (riskstream demo starts a redis-server)")
    codec = codec_for(settings)
    topics = settings.topics
    conf = producer_config(settings)
    sinks = PretradeSinks(
        scores=RecordSink(
            conf,
            topics.name("scores"),
            "RiskScore",
            codec,
            lambda d: d.record,
            _score_key,
            count_decisions,
            durable,
        ),
        dead_letters=RecordSink(
            conf,
            topics.name("dlq"),
            "DeadLetter",
            codec,
            lambda d: d.record,
            _letter_key,
            count_dead_letters,
            durable,
        ),
        state=RedisStateSink(settings.redis_url.get_secret_value(), settings.redis_prefix),
        regimes=RecordSink(
            conf,
            topics.name("regimes"),
            "RegimeEvent",
            codec,
            lambda r: r.record,
            _regime_key,
            flush_each_batch=durable,
        ),
        controls=RecordSink(
            conf,
            topics.name("control"),
            "ControlCommand",
            codec,
            lambda c: c.record,
            _control_key,
            flush_each_batch=durable,
        ),
    )
    consumer = consumer_config(settings)
    fenced = [topics.name(role) for role in ("control", "executions", "instruments")]
    proposals, references = topics.name("proposals"), topics.name("instruments")
    parts = list_partitions(consumer, [*fenced, proposals])
    config = replace(
        settings.engine_config(wait_for_data=wait_for_data),
        fence=tuple(p for p in parts if p[0] != proposals),
        proposal_parts=tuple(p for p in parts if p[0] == proposals),
        reference_parts=tuple(p for p in parts if p[0] == references),
        recoverable=durable,
    )
    source = RiskSource(
        consumer, list(topics.input_kinds()), from_end=from_end, tail=tail,
        batch_size=settings.batch_size,
    )  # fmt: skip
    flow = build_pretrade_flow(
        source if stop is None else StoppableSource(source, stop),
        sinks,
        config,
        codec,
        topics.input_kinds(),
    )
    if health is not None and stop is not None:
        add_heartbeat(flow, health, stop)
    return flow
