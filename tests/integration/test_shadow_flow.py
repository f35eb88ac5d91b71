"""A shadow model set in the real flow: decisions byte-identical, agreement metrics move."""

from __future__ import annotations

from pathlib import Path

from bytewax._bytewax import cli_main
from prometheus_client import REGISTRY

from dataflows.app import codec_for, kafka_flow
from dataflows.producer import ProduceOptions, simulated_events
from operators.market import ModelSources, model_sources, use_model_sources
from tests.factories import T0
from tests.integration.conftest import consume, publish
from tests.unit.test_shadow import perturbed_set

WALL_CLOCK = ("ts_decided", "latency_us")


def decisions(settings, scores: str, n: int) -> list[bytes]:
    """Run the flow over the input topics into ``scores``; canonical bytes by proposal id."""
    out = settings.model_copy(
        update={"topics": settings.topics.model_copy(update={"scores": scores})}
    )
    cli_main(kafka_flow(out, tail=False, wait_for_data=True), workers_per_process=1)
    records = sorted(consume(out, "scores", "RiskScore", n), key=lambda r: r["proposal_id"])
    codec = codec_for(settings)
    return [codec.encode("RiskScore", r | {"ts_decided": 0, "latency_us": 0.0}) for r in records]


def agreement() -> float:
    return sum(
        REGISTRY.get_sample_value("riskstream_shadow_regime_agreement_total", {"outcome": o}) or 0.0
        for o in ("agree", "disagree")
    )


def test_flow_with_shadow_models_decides_byte_identically_and_exports_agreement(
    settings, tmp_path: Path
):
    opts = ProduceOptions(tick_rate=13, proposal_rate=0.5, portfolios=2, seed=5, duration_s=130)
    events = list(simulated_events(opts, T0))
    publish(settings, events)
    n = sum(kind == "TradeProposal" for kind, _ in events)
    candidate = perturbed_set(tmp_path / "candidate")

    live_only = decisions(settings, "scores.live", n)
    before = agreement()
    saved = model_sources()
    use_model_sources(ModelSources(saved.live, candidate))
    try:
        shadowed = decisions(settings, "scores.shadow", n)
    finally:
        use_model_sources(saved)

    assert len(live_only) == n > 40
    assert shadowed == live_only
    versions = [codec_for(settings).decode("RiskScore", b)["model_versions"] for b in shadowed]
    assert {"regime_tft": "1.0.0", "vol_nbeats": "1.0.0"} in versions, (
        "live versions, not 1.0.0-candidate"
    )
    assert agreement() - before >= 20, "the shadow compared the warm regime bars"
    vol = REGISTRY.get_sample_value("riskstream_shadow_vol_relative_difference_count")
    assert vol and vol > 0
