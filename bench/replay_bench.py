"""Replay throughput at ``--speed max`` on the embedded broker, against a plain read.

Run: ``python bench/replay_bench.py [--seconds 60] [--repeats 2]`` (about two minutes).
Writes ``bench/results/replay.json`` and ``bench/results/replay.md``.

In one run, on the same topics and offsets:

* baseline: a plain confluent-kafka consumer reading the replay's range (assign to every
  input partition, ``consume(10000)`` to the end offsets), and the same with fastavro
  decoding of every value (what any replay must at least do);
* replay: ``riskstream replay`` in process (``run_replay``, one process, one worker,
  ``--speed max``), decisions to a topic, state to a null sink and to Redis;
* stages: the Bytewax source alone, source + parse (decode, validate), to show where the
  time goes.

Events are input records (ticks, reference data, proposals, fills, controls). Each figure
is the best of ``--repeats`` runs (every run is recorded too); the load average is
recorded (the machine is shared).
Target: at least 100k events/s on one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bytewax.dataflow import Dataflow  # noqa: E402 - after the path tweak
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import run_main  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from dataflows.app import codec_for  # noqa: E402
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from dataflows.kafka_io import Publisher, consumer_config, ensure_topics  # noqa: E402
from dataflows.kafka_source import RiskSource  # noqa: E402
from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, simulated_events  # noqa: E402
from dataflows.replay import ReplayOptions, ReplayPlan, prepare, run_replay  # noqa: E402
from dataflows.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET = 100_000
T0 = 1_767_225_600_000_000_000


class _Null(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class NullSink(DynamicSink[Any]):
    """Drops everything."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Null:
        return _Null()


def publish(settings: Settings, seconds: float) -> int:
    """A seeded simulated market, stamped with event time; the number of records."""
    opts = ProduceOptions(
        tick_rate=5000, proposal_rate=50, portfolios=4, seed=3, duration_s=seconds
    )
    pub = Publisher(settings, codec_for(settings))
    n = 0
    for kind, rec in simulated_events(opts, T0):
        pub.send(
            ROLE[kind], kind, rec, rec[KEY_FIELD.get(kind, "portfolio_id")], event_timestamp=True
        )
        n += 1
    assert pub.flush(60) == 0
    return n


def plain_read(settings: Settings, plan: ReplayPlan, decode: bool) -> tuple[int, float]:
    """(messages, seconds) of a plain consumer reading the plan's ranges."""
    codec = codec_for(settings)
    consumer = Consumer(
        {**consumer_config(settings), "group.id": "bench", "enable.auto.commit": False}
    )
    ranges = [r for r in plan.ranges if r.count]
    ends = {(r.topic, r.partition): r.end for r in ranges}
    started = time.perf_counter()
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    n = 0
    while ends:
        for msg in consumer.consume(10_000, 0.01):
            if msg.error() is not None:
                continue
            key = (msg.topic(), msg.partition())
            if key not in ends:
                continue
            if decode:
                codec.decode(plan.kinds[msg.topic()], msg.value())
            n += 1
            if msg.offset() + 1 >= ends[key]:
                del ends[key]
    elapsed = time.perf_counter() - started
    consumer.close()
    return n, elapsed


def stage(settings: Settings, plan: ReplayPlan, with_parse: bool) -> float:
    """Seconds for the Bytewax source (and parse) over the plan, into a null sink."""
    import bytewax.operators as op

    from operators.ingest import parse_batch

    source = RiskSource(
        consumer_config(settings), list(plan.kinds), tail=False,
        start_offsets={(r.topic, r.partition): r.start for r in plan.ranges},
        end_offsets={(r.topic, r.partition): r.end for r in plan.ranges},
    )  # fmt: skip
    flow = Dataflow("stage")
    stream = op.input("in", flow, source)
    if with_parse:
        config = settings.engine_config(wait_for_data=True)
        fn = partial(parse_batch, kinds=plan.kinds, codec=codec_for(settings), config=config)
        stream = op.flat_map_batch("parse", stream, fn)
    op.output("out", stream, NullSink())
    started = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - started


def main() -> None:
    """Run the benchmark and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="event time to publish")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url,
            topics={"prefix": "bench."}, metrics_port=0, topic_partitions=4, bars_per_day=1.0,
        )  # fmt: skip
        ensure_topics(settings, settings.topics.all())
        started = time.perf_counter()
        published = publish(settings, args.seconds)
        print(f"published {published:,} records in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        _, plan, _ = prepare(settings, ReplayOptions(out_topic="bench.plan", plan_only=True))
        resolve_s = time.perf_counter() - started
        events = plan.events
        print(f"range resolved by consuming in {resolve_s:.2f} s: {events:,} events")

        best: dict[str, float] = {}
        runs: dict[str, list[float]] = {}

        def keep(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, float("inf")), seconds)
            runs.setdefault(name, []).append(seconds)
            print(f"  {name:<22} {events / seconds:>10,.0f} events/s ({seconds:.2f} s)")

        for i in range(args.repeats):
            print(f"repeat {i + 1}")
            n, s = plain_read(settings, plan, decode=False)
            assert n == events, (n, events)
            keep("plain_read", s)
            keep("plain_read_decode", plain_read(settings, plan, decode=True)[1])
            keep("source", stage(settings, plan, with_parse=False))
            keep("source_parse", stage(settings, plan, with_parse=True))
            summary = run_replay(
                settings,
                ReplayOptions(out_topic=f"bench.out.{i}", no_redis=True, progress="never"),
            )
            assert summary.events == events
            keep("replay", summary.elapsed_s)
            summary = run_replay(
                settings,
                ReplayOptions(out_topic=f"bench.redis.{i}", run_id=f"b{i}", progress="never"),
            )
            keep("replay_redis", summary.elapsed_s)
            decisions = sum(summary.decisions.values())

    rate = {k: events / v for k, v in best.items()}
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "machine": f"{os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "load_average_at_start": load_at_start,
        "events": events,
        "decisions": decisions,
        "partitions": len(plan.ranges),
        "range_resolve_s": round(resolve_s, 3),
        "repeats": args.repeats,
        "events_per_s": {k: round(v) for k, v in rate.items()},
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "runs_events_per_s": {k: [round(events / s) for s in v] for k, v in runs.items()},
        "replay_vs_plain_read": round(rate["replay"] / rate["plain_read"], 4),
        "replay_vs_plain_read_decode": round(rate["replay"] / rate["plain_read_decode"], 4),
        "target_events_per_s": TARGET,
        "target_met": rate["replay"] >= TARGET,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("plain_read", "confluent-kafka consume of the same range (baseline)"),
        ("plain_read_decode", "the same plus fastavro decode of every value"),
        ("source", "Bytewax: RiskSource (bounded) into a null sink"),
        ("source_parse", "Bytewax: source + parse (decode, validate, progress)"),
        ("replay", "riskstream replay --speed max, decisions to a topic, no Redis"),
        ("replay_redis", "the same, state to Redis under replay:<id>:"),
    ]
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    load_start = ", ".join(f"{x:.1f}" for x in load_at_start)
    lines = [
        "# Replay throughput",
        "",
        f"{result['created']}, Python {result['python']}, bytewax {result['bytewax']},"
        f" {result['machine']}, load average {load} (at the start {load_start});"
        f" {events:,} input events ({decisions:,} proposals) on {len(plan.ranges)} partitions of"
        f" the embedded broker; best of {args.repeats}.",
        "",
        "| stage | events/s | seconds | every run, events/s | what |",
        "|---|---:|---:|---|---|",
        *(
            f"| {k} | {rate[k]:,.0f} | {best[k]:.2f} |"
            f" {', '.join(f'{events / s:,.0f}' for s in runs[k])} | {what} |"
            for k, what in rows
        ),
        "",
        f"Replay / plain read: **{result['replay_vs_plain_read']:.3f}** (same run, same range);"
        f" replay / plain read + decode: {result['replay_vs_plain_read_decode']:.3f}.",
        f"Range resolution (offsets by consuming, before the flow starts): {resolve_s:.2f} s.",
        "",
        f"Target >= {TARGET:,} events/s on one process: "
        f"{'met' if result['target_met'] else 'NOT met'} ({rate['replay']:,.0f} events/s).",
        "",
    ]
    (RESULTS / "replay.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
