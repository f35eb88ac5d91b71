"""Replays of the same topics give the same decisions, byte for byte (but wall-clock fields,
the ``stale`` flag included)."""

from __future__ import annotations

from bytewax._bytewax import cli_main

from dataflows.app import codec_for, kafka_flow
from dataflows.producer import ProduceOptions, simulated_events
from tests.factories import KEY, T0, control
from tests.integration.conftest import consume, publish

WALL_CLOCK = ("ts_decided", "latency_us")


def replay(settings, scores_topic: str, workers: int = 1, batch_size: int = 1000) -> list[bytes]:
    """Run the flow over everything on the input topics into ``scores_topic``."""
    out = settings.model_copy(
        update={
            "topics": settings.topics.model_copy(update={"scores": scores_topic}),
            "batch_size": batch_size,
        }
    )
    cli_main(kafka_flow(out, tail=False, wait_for_data=True), workers_per_process=workers)
    records = consume(out, "scores", "RiskScore", EXPECTED[settings.topics.prefix])
    codec = codec_for(settings)
    canonical = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]
    canonical.sort(key=lambda r: r["proposal_id"])
    zeroed = {"ts_decided": 0, "latency_us": 0.0}
    return [codec.encode("RiskScore", zeroed | r) for r in canonical]


EXPECTED: dict[str, int] = {}


def mismatches(a: list[bytes], b: list[bytes]) -> list[tuple[str, list[str]]]:
    """(proposal_id, differing fields) of every pair of records that are not identical."""
    from schemas.codec import SingleObjectCodec

    codec = SingleObjectCodec()
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y:
            rx, ry = codec.decode("RiskScore", x), codec.decode("RiskScore", y)
            fields = [k for k in rx if rx[k] != ry[k] or str(rx[k]) != str(ry[k])]
            out.append((rx["proposal_id"], [(f, rx[f], ry[f]) for f in fields]))
    return out


def test_replays_when_repeated_on_two_workers_or_in_other_batches_are_byte_identical(settings):
    opts = ProduceOptions(tick_rate=500, proposal_rate=40, portfolios=3, seed=11, duration_s=6)
    events = list(simulated_events(opts, T0))
    cmds = [
        ("ControlCommand", control(key=KEY, action="HALT", ts_event=T0 + 3 * 10**9)),
        ("ControlCommand", control(key=KEY, action="RESUME", ts_event=T0 + 4 * 10**9)),
    ]
    publish(settings, events + cmds)
    n = sum(kind == "TradeProposal" for kind, _ in events)
    EXPECTED[settings.topics.prefix] = n
    assert n > 150

    first = replay(settings, "scores.a")
    second = replay(settings, "scores.b")
    two_workers = replay(settings, "scores.c", workers=2)
    small_batches = replay(settings, "scores.d", batch_size=7)  # other poll boundaries

    assert mismatches(first, second) == []
    assert mismatches(first, two_workers) == []
    assert mismatches(first, small_batches) == []
    assert first == second == two_workers == small_batches
    decisions = {r for r in first}
    assert len(decisions) == n


def test_replays_when_market_data_runs_ahead_of_proposals_are_identical_stale_flag_too(settings):
    """Two minutes of a sparse market: covariance, regimes and forecasts warm up while
    proposals wait on fences, and reference data is read beside the ticks. Every field but
    the wall clock is compared, ``stale`` included."""
    opts = ProduceOptions(tick_rate=13, proposal_rate=0.5, portfolios=2, seed=5, duration_s=130)
    events = list(simulated_events(opts, T0))
    publish(settings, events)
    EXPECTED[settings.topics.prefix] = sum(kind == "TradeProposal" for kind, _ in events)

    runs = [replay(settings, f"scores.{i}") for i in range(3)]
    runs.append(replay(settings, "scores.w2", workers=2))

    for other in runs[1:]:
        assert mismatches(runs[0], other) == []
    warm = [codec_for(settings).decode("RiskScore", r) for r in runs[0]]
    assert any(r["var_before"] and not r["stale"] for r in warm)  # the models did warm up
