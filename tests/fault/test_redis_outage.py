"""Kill redis-server under ``riskstream run`` and start it again, empty, mid-stream.

The flow writes to a redis-server of the test's own (the session one is shared), killed
with SIGKILL while the feeder streams the seeded simulated market and restarted on the
same port ``OUTAGE_S`` later, with no data (no persistence). A second ``riskstream run``,
never interrupted, runs at the same time on topics and Redis keys of its own, on the
session redis-server, and the feeder fills its topics with the same records: the
uninterrupted reference. One run, then the verdicts:

* decisions keep coming while Redis is down (the Redis sink never holds decisions back);
* the failed writes are counted in ``riskstream_redis_write_failures_total``;
* after the restart the sink sends its whole mirror again: every key is back, and once the
  feed ends (both flows still running) the state equals the reference's: books,
  instrument features, reference data and regimes. ``trading_state:*`` keys are left out
  of the comparison: automatic REDUCE_ONLY triggers depend on arrival timing, so two live
  runs differ there even without an outage (docs/RELIABILITY.md, crash recovery);
* (known gap, xfail) the states also stay equal after both flows are stopped with SIGINT:
  in one of four runs every ``instrument:*`` key differed after the stop (the writes of
  the shutdown flush), though the live states had been equal.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dataflows.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from dataflows.kafka_io import ensure_topics
from dataflows.producer import ProduceOptions
from dataflows.settings import Settings
from tests.factories import KEY
from tests.fault.conftest import (
    Collector,
    Feeder,
    FlowProcess,
    MetricsSampler,
    namespaced,
    redis_state,
    total,
    wait_until,
)

OUTAGE_S = 4.0
WARM_S = 4.0
"""Steady decisions and Redis writes before the kill."""
AFTER_S = 5.0
"""Feeding after the restart."""
CONVERGE_BOUND_S = 30.0
"""Restart to equal state, at most (generous: two flows on two shared cores)."""


@dataclass
class Outage:
    """What a Redis-outage run measured (times are time.monotonic())."""

    proposals: int
    killed_at: float
    restarted_at: float
    feed_ended_at: float
    decided_at: list[float]
    """When the collector saw each decision of the interrupted flow."""
    decisions_total: list[tuple[float, float]]
    failures: float
    """riskstream_redis_write_failures_total at the end."""
    keys_before_kill: int
    restored_s: float
    """Restart to every key the flow had written before the kill being back."""
    equal_s: float
    """Restart to Redis equal to the reference (deterministic keys; the feed ends first)."""
    final_diff: list[str]
    """Deterministic keys that differ from the reference after both flows stopped."""
    examples: dict[str, dict[str, tuple[str | None, str | None]]]
    """A few differing keys: field -> (this flow's value, the reference's)."""
    keys: int
    books: int
    trading_state_diff: list[str]
    """trading_state keys that differ (reported: live REDUCE_ONLY depends on timing)."""
    seconds: float

    def decided_during_outage(self) -> int:
        return sum(self.killed_at + 0.5 <= at <= self.restarted_at for at in self.decided_at)

    def longest_gap_s(self, start: float, end: float) -> float:
        """Longest stretch of [start, end] without a new decision."""
        times = [start, *(at for at in self.decided_at if start < at < end), end]
        return max(b - a for a, b in pairwise(times))


@pytest.fixture(scope="module")
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server for this module only: killing it disturbs no other test."""
    with EmbeddedRedis() as r:
        yield r


@pytest.fixture(scope="module")
def outage(
    broker: EmbeddedBroker, redis_server: EmbeddedRedis, own_redis: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Outage:  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=broker.bootstrap, redis_url=own_redis.url,
        topics={"prefix": f"r{tag}."}, redis_prefix=f"r{tag}:",
        control_keys={"default": KEY.decode()}, metrics_port=free_port(), topic_partitions=2,
        bars_per_day=1.0,
    )  # fmt: skip
    ensure_topics(settings, settings.topics.all())
    ref = namespaced(settings, "ref").model_copy(
        update={"redis_url": SecretStr(redis_server.url), "metrics_port": 0}
    )
    outcome = redis_outage_run(settings, ref, own_redis, tmp_path_factory.mktemp("redis_outage"))
    print(f"\nredis outage: {summary(outcome)}")  # the figures, for the record (pytest -s)
    return outcome


def deterministic(state: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The keys an uninterrupted live run leaves the same every time (trading states aside)."""
    return {k: v for k, v in state.items() if not k.startswith("trading_state:")}


def state_diff(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def redis_outage_run(settings: Settings, ref: Settings, server: EmbeddedRedis, tmp: Path) -> Outage:
    """Feed both flows, kill and restart the interrupted flow's Redis, then compare."""
    started = time.monotonic()
    opts = ProduceOptions(tick_rate=500.0, proposal_rate=40.0, portfolios=4, seed=777)
    flow = FlowProcess(settings, tmp / "flow.log")
    reference = FlowProcess(ref, tmp / "reference.log")
    scores, ref_scores = Collector(settings, "scores"), Collector(ref, "scores")
    feeder = Feeder(settings, opts, fill_every=10, also=ref)
    metrics = MetricsSampler(settings.metrics_port, every_s=0.25)
    for thread in (scores, ref_scores, metrics, feeder):
        thread.start()
    flow.start()
    reference.start()
    try:
        wait_until(lambda: bool(scores.records and ref_scores.records), 120, "decisions")
        time.sleep(WARM_S)
        keys_before = set(redis_state(settings))
        killed_at = time.monotonic()
        os.kill(server.pid or 0, signal.SIGKILL)
        time.sleep(OUTAGE_S)
        server.restart()
        restarted_at = time.monotonic()
        restored_s = wait_until(lambda: keys_before <= set(redis_state(settings)), 30, "keys")
        time.sleep(AFTER_S)
        feeder.finish()
        feeder.join_checked(60)
        feed_ended_at = time.monotonic()
        n = len(feeder.proposal_ids)
        wait_until(lambda: min(len(scores.records), len(ref_scores.records)) >= n, 60, "all")
        wait_until(lambda: not state_diff(*equal_parts(settings, ref)), 30, "equal state")
        equal_s = time.monotonic() - restarted_at
        flow.assert_running()
    finally:
        feeder.stop.set()
        metrics.close()
        assert flow.stop() == 0, flow.log_tail()
        assert reference.stop() == 0, reference.log_tail()
        scores.close()
        ref_scores.close()
    mine, theirs = redis_state(settings), redis_state(ref)
    return Outage(
        proposals=n,
        killed_at=killed_at,
        restarted_at=restarted_at,
        feed_ended_at=feed_ended_at,
        decided_at=[r.at for r in scores.records],
        decisions_total=metrics.series("riskstream_decisions_total"),
        failures=total(metrics.samples[-1][1], "riskstream_redis_write_failures_total"),
        keys_before_kill=len(keys_before),
        restored_s=restored_s,
        equal_s=equal_s,
        final_diff=state_diff(deterministic(mine), deterministic(theirs)),
        examples=field_diff(mine, theirs, state_diff(deterministic(mine), deterministic(theirs))),
        keys=len(mine),
        books=sum(k.startswith("book:") for k in mine),
        trading_state_diff=[k for k in state_diff(mine, theirs) if k.startswith("trading_state:")],
        seconds=time.monotonic() - started,
    )


def field_diff(
    a: dict[str, dict[str, str]], b: dict[str, dict[str, str]], keys: list[str]
) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """Differing fields of the first few ``keys``."""
    out = {}
    for key in keys[:3]:
        x, y = a.get(key, {}), b.get(key, {})
        out[key] = {f: (x.get(f), y.get(f)) for f in x.keys() | y.keys() if x.get(f) != y.get(f)}
    return out


def equal_parts(settings: Settings, ref: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    return deterministic(redis_state(settings)), deterministic(redis_state(ref))


def summary(o: Outage) -> dict[str, Any]:
    """The figures of a run."""
    return {
        "proposals": o.proposals,
        "decided_during_outage": o.decided_during_outage(),
        "longest_gap_before_kill_s": round(o.longest_gap_s(o.killed_at - WARM_S, o.killed_at), 2),
        "longest_gap_during_outage_s": round(o.longest_gap_s(o.killed_at, o.restarted_at), 2),
        "write_failures": o.failures,
        "keys_before_kill": o.keys_before_kill,
        "restored_s": round(o.restored_s, 2),
        "equal_s_after_restart": round(o.equal_s, 2),
        "equal_s_after_feed_end": round(o.restarted_at + o.equal_s - o.feed_ended_at, 2),
        "keys": o.keys,
        "books": o.books,
        "final_diff": o.final_diff,
        "examples": o.examples,
        "trading_state_diff": o.trading_state_diff,
        "seconds": round(o.seconds, 1),
    }


def test_redis_killed_mid_stream_decisions_never_stop(outage: Outage) -> None:
    assert outage.decided_during_outage() > 0
    assert outage.longest_gap_s(outage.killed_at, outage.restarted_at) < OUTAGE_S


def test_redis_killed_mid_stream_counts_write_failures(outage: Outage) -> None:
    assert outage.failures > 0


def test_redis_restarted_empty_converges_to_the_uninterrupted_state(outage: Outage) -> None:
    assert outage.books > 0 and outage.keys >= outage.keys_before_kill
    assert outage.restored_s < CONVERGE_BOUND_S
    assert outage.equal_s < CONVERGE_BOUND_S


@pytest.mark.xfail(
    strict=False,
    reason="known gap: the shutdown flush of instrument features can differ between two"
    " live runs (seen once in four runs, every instrument:* key), live states equal",
)
def test_redis_restarted_empty_equals_the_uninterrupted_state_after_both_stop(
    outage: Outage,
) -> None:
    assert outage.final_diff == []
