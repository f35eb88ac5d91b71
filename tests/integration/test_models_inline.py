"""The regime and volatility models run inside the flow, on the real broker."""

from __future__ import annotations

import json

import fastavro
import redis

from dataflows.producer import ProduceOptions, simulated_events
from schemas.codec import load_schema
from tests.factories import T0
from tests.integration.conftest import consume, publish, run_to_end


def test_flow_when_market_warms_up_publishes_regimes_and_decides_with_models(settings):
    # one tick per instrument per 1 s bar; 130 bars: the regime window warms up after ~92
    opts = ProduceOptions(tick_rate=13, proposal_rate=0.5, portfolios=2, seed=5, duration_s=130)
    events = list(simulated_events(opts, T0))
    publish(settings, events)
    run_to_end(settings)

    regimes = consume(settings, "regimes", "RegimeEvent", 20)
    schema = load_schema("RegimeEvent")
    for r in regimes:
        assert fastavro.validation.validate(r, schema)
        assert abs(sum(p["probability"] for p in r["probabilities"]) - 1.0) < 1e-6
        assert r["model_version"]

    n = sum(kind == "TradeProposal" for kind, _ in events)
    scores = consume(settings, "scores", "RiskScore", n)
    # the regime window is warm from bar 92; each instrument's N-BEATS history by ~bar 120
    after_regime = [s for s in scores if s["ts_event"] > T0 + 95 * 10**9]
    after_vol = [s for s in scores if s["ts_event"] > T0 + 125 * 10**9]
    assert after_regime and after_vol
    assert all(s["regime"] and "regime_tft" in s["model_versions"] for s in after_regime)
    assert all("vol_nbeats" in s["model_versions"] for s in after_vol)

    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    state = client.hgetall(f"{settings.redis_prefix}regime:GLOBAL")
    latest = max(regimes, key=lambda r: r["ts_event"])
    assert (
        state["most_likely"] == latest["most_likely"]
        or int(state["ts_event"]) >= latest["ts_event"]
    )
    assert abs(sum(json.loads(state["probabilities"]).values()) - 1.0) < 1e-6
