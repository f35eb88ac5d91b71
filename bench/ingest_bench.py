"""Ingest to features: ticks/s of one process from Kafka to Redis, against what a user writes.

Run: ``python bench/ingest_bench.py [--seconds 40] [--repeats 2]``. Writes
``bench/results/ingest.json`` and ``bench/results/ingest.md``.

In one run, on the same ticks of the embedded broker (13 simulated instruments, 4
partitions):

* riskstream: the pre-trade flow at ``--speed max`` (``run_replay``: one process, one
  worker): the Kafka source in blocks, batch decode and validation, event-time bars, every
  kernel feature at each bar close, the instrument snapshots to Redis;
* baseline: a plain confluent-kafka consumer loop that decodes each message with fastavro
  and keeps pandas rolling features per instrument (mean, standard deviation and EWMA of
  the last price over 20 ticks, recomputed on each polled batch), writing the latest
  features of each instrument to Redis once per batch.

Targets (issue 8): at least 200,000 ticks/s per process and 10x the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402 - after the path tweak
import redis  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from bench.common import write_results  # noqa: E402
from dataflows.app import codec_for  # noqa: E402
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from dataflows.kafka_io import Publisher, consumer_config, ensure_topics  # noqa: E402
from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, simulated_events  # noqa: E402
from dataflows.replay import ReplayOptions, ReplayPlan, prepare, run_replay  # noqa: E402
from dataflows.settings import Settings  # noqa: E402

T0 = 1_767_225_600_000_000_000
TARGET = 200_000
WINDOW = 20


def publish_ticks(settings: Settings, seconds: float) -> int:
    """Reference data and ``seconds`` of simulated ticks (no proposals); the tick count."""
    opts = ProduceOptions(tick_rate=10_000, proposal_rate=0.1, seed=3, duration_s=seconds)
    pub = Publisher(settings, codec_for(settings))
    ticks = 0
    for kind, rec in simulated_events(opts, T0):
        if kind not in ("MarketTick", "Instrument"):
            continue
        key = rec[KEY_FIELD.get(kind, "portfolio_id")]
        pub.send(ROLE[kind], kind, rec, key, event_timestamp=True)
        ticks += kind == "MarketTick"
    assert pub.flush(120) == 0
    return ticks


def baseline(
    settings: Settings, plan: ReplayPlan, redis_url: str, features: bool = True
) -> tuple[int, float]:
    """(ticks, seconds) of the consumer + fastavro + pandas loop over the plan's ticks;
    without ``features``, the consumer loop alone (the floor of any Kafka reader)."""
    codec = codec_for(settings)
    consumer = Consumer(
        {**consumer_config(settings), "group.id": "bench", "enable.auto.commit": False}
    )
    client = redis.Redis.from_url(redis_url)
    ranges = [r for r in plan.ranges if r.count and plan.kinds[r.topic] == "MarketTick"]
    ends = {(r.topic, r.partition): r.end for r in ranges}
    history: dict[str, pd.DataFrame] = {}
    started = time.perf_counter()
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    n = 0
    while ends:
        rows: list[dict[str, Any]] = []
        for msg in consumer.consume(10_000, 0.01):
            key = (msg.topic(), msg.partition())
            if msg.error() is not None or key not in ends:
                continue
            rows.append(codec.decode("MarketTick", msg.value()) if features else {})
            if msg.offset() + 1 >= ends[key]:
                del ends[key]
        n += len(rows)
        if rows and features:
            _features(pd.DataFrame(rows), history, client)
    elapsed = time.perf_counter() - started
    consumer.close()
    client.close()
    return n, elapsed


def _features(batch: pd.DataFrame, history: dict[str, pd.DataFrame], client: Any) -> None:
    """Rolling features per instrument over its recent ticks; latest values to Redis."""
    pipe = client.pipeline(transaction=False)
    for iid, rows in batch.groupby("instrument_id", sort=False):
        recent = pd.concat([history.get(str(iid)), rows]).sort_values("ts_event").tail(4 * WINDOW)
        history[str(iid)] = recent
        last = recent["last"]
        feats = {
            "mean": last.rolling(WINDOW).mean().iloc[-1],
            "std": last.rolling(WINDOW).std().iloc[-1],
            "ewm": last.ewm(span=WINDOW).mean().iloc[-1],
            "spread": (recent["ask"] - recent["bid"]).rolling(WINDOW).mean().iloc[-1],
        }
        pipe.hset(f"baseline:{iid}", mapping={k: repr(float(v)) for k, v in feats.items()})
    pipe.execute()


def main() -> None:
    """Publish, measure both in one run, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="event time to publish")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url,
            topics={"prefix": "ingest."}, metrics_port=0, topic_partitions=4,
        )  # fmt: skip
        ensure_topics(settings, settings.topics.all())
        ticks = publish_ticks(settings, args.seconds)
        _, plan, _ = prepare(settings, ReplayOptions(out_topic="ingest.plan", plan_only=True))
        print(f"{ticks:,} ticks published; {plan.events:,} input events in range")
        ours, base, floor = float("inf"), float("inf"), float("inf")
        for i in range(args.repeats):
            summary = run_replay(
                settings,
                ReplayOptions(out_topic=f"ingest.out.{i}", run_id=f"i{i}", progress="never"),
            )
            ours = min(ours, summary.elapsed_s)
            n, seconds = baseline(settings, plan, redis_server.url)
            assert n == ticks, (n, ticks)
            base = min(base, seconds)
            floor = min(floor, baseline(settings, plan, redis_server.url, features=False)[1])
            print(f"repeat {i + 1}: riskstream {ticks / ours:,.0f}/s, baseline {n / base:,.0f}/s")
    rate, base_rate, floor_rate = ticks / ours, ticks / base, ticks / floor
    write_results(
        "ingest",
        {
            "ticks": ticks,
            "instruments": 13,
            "partitions": 4,
            "repeats": args.repeats,
            "riskstream_ticks_per_s": round(rate),
            "baseline_ticks_per_s": round(base_rate),
            "ratio_vs_baseline": round(rate / base_rate, 2),
            "plain_consume_ticks_per_s": round(floor_rate),
            "ratio_vs_plain_consume": round(rate / floor_rate, 2),
            "riskstream_seconds": round(ours, 3),
            "baseline_seconds": round(base, 3),
            "target_ticks_per_s": TARGET,
            "target_met": rate >= TARGET and rate / base_rate >= 10,
        },
        [
            ("riskstream, Kafka to Redis, 1 process (ticks/s)", f"{rate:,.0f}"),
            ("baseline: consumer + fastavro + pandas rolling (ticks/s)", f"{base_rate:,.0f}"),
            ("ratio", f"{rate / base_rate:.1f}x"),
            ("plain consumer loop, no decode (ticks/s): the Kafka floor", f"{floor_rate:,.0f}"),
            ("riskstream / plain consumer loop", f"{rate / floor_rate:.2f}"),
            ("targets (issue 8)", "200,000 ticks/s and 10x"),
        ],
    )


if __name__ == "__main__":
    main()
