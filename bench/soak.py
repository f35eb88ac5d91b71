"""Soak: ``riskstream run`` under a steady paced load for many minutes; RSS and p99 per minute.

The embedded broker and a redis-server are started, ``riskstream run`` runs as a child,
and a producer process publishes the seeded simulated market paced in real time at the
asked rates (ticks are encoded by a specialised Avro writer checked byte for byte against
the codec: fastavro alone tops out near 50 k records/s on one core). Each second the flow
process's RSS (``VmRSS``) is sampled; every RiskScore is read back for its decision
latency (``latency_us``: consumed to decided) and end-to-end latency
(``ts_decided - ts_event``). The first minute is warm-up.

Pass when, after the warm-up minute:

* RSS growth < 5%: the largest RSS sampled after warm-up over the RSS at the end of it;
* p99 decision latency is stable: every minute's p99 is at most 2x the lowest minute's
  p99 plus 10 ms;
* every proposal published was answered.

Run: ``python -m bench.soak --minutes 30 --tick-rate 20000 --proposal-rate 500``
(``make soak``); writes ``bench/results/soak.json`` and ``soak.md``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import avro_long, write_results
from dataflows.demo import stop_flow
from dataflows.embedded import EmbeddedStack, die_with_parent, free_port
from dataflows.kafka_io import ensure_topics
from dataflows.settings import Settings

NS = 1_000_000_000
WARMUP_MIN = 1
STATE_FULL_MIN = 10
"""Reported too: RSS growth from this minute on, once every bounded history is full (the
instrument and portfolio steps keep 512 bars, 8.5 minutes of 1 s bars)."""
RSS_GROWTH_MAX = 0.05
P99_FACTOR, P99_SLACK_MS = 2.0, 10.0
DRAIN_S = 60.0
_COUNTS = ("ticks", "proposals", "other")


@dataclass(frozen=True)
class SoakOptions:
    """How long and how hard."""

    minutes: float = 30.0
    tick_rate: float = 20_000.0
    proposal_rate: float = 500.0
    portfolios: int = 4
    seed: int = 11
    name: str = "soak"
    """Results go to bench/results/<name>.json and .md."""


@dataclass
class Minute:
    """Figures of one minute of the run (minute 1 is the warm-up)."""

    minute: int
    ticks_per_s: float
    proposals_per_s: float
    decisions: int
    rss_mb_end: float
    rss_mb_max: float
    latency_p50_ms: float
    latency_p99_ms: float
    e2e_p99_ms: float


@dataclass
class Samples:
    """What the run collected, shared between threads (appends only)."""

    rss: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the feed started, VmRSS in kB)."""
    scores: list[tuple[float, float, float]] = field(default_factory=list)
    """(seconds since the feed started, latency_us, end-to-end µs) of each decision."""
    decided: set[str] = field(default_factory=set)
    produced: list[tuple[float, list[int]]] = field(default_factory=list)
    """(seconds since the feed started, counts sent so far: ticks, proposals, other)."""


# -- producer (a process of its own) ------------------------------------------------------


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return avro_long(len(data)) + data


class TickEncoder:
    """Single-object Avro of ``MarketTick``, written by hand (about 10x fastavro's speed).

    ``check()`` compares it with the codec on real records before it is trusted.
    """

    _DOUBLES = struct.Struct("<dddd")
    _DOUBLE = struct.Struct("<d")

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._heads: dict[str, bytes] = {}

    def encode(self, rec: dict[str, Any]) -> bytes:
        iid = rec["instrument_id"]
        head = self._heads.get(iid)
        if head is None:
            head = self._heads[iid] = self._header + _avro_string(iid)
        y, venue = rec["yield"], rec["venue"]
        return b"".join(
            (
                head,
                avro_long(rec["ts_event"]),
                self._DOUBLES.pack(rec["bid"], rec["ask"], rec["last"], rec["size"]),
                b"\x00" if y is None else b"\x02" + self._DOUBLE.pack(y),
                b"\x00" if venue is None else b"\x02" + _avro_string(venue),
            )
        )

    def check(self, codec: Any, records: list[dict[str, Any]]) -> None:
        """Raise unless every record encodes to the codec's bytes."""
        for rec in records:
            if self.encode(rec) != codec.encode("MarketTick", rec):
                raise AssertionError(f"the soak tick encoder disagrees with the codec on {rec}")


def produce(settings: Settings, opts: SoakOptions, counts: Any, stop: Any) -> None:
    """Publish the simulated market paced in real time for ``opts.minutes`` (child process)."""
    from confluent_kafka import Producer

    from dataflows.app import codec_for
    from dataflows.kafka_io import producer_config
    from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, now_ns, simulated_events

    codec = codec_for(settings)
    header = codec.single_object_header("MarketTick")
    assert header is not None, "the soak producer writes single-object encoding only"
    ticks = TickEncoder(header)
    sim = ProduceOptions(
        tick_rate=opts.tick_rate, proposal_rate=opts.proposal_rate, portfolios=opts.portfolios,
        seed=opts.seed, duration_s=opts.minutes * 60,
    )  # fmt: skip
    ticks.check(
        codec, [r for k, r in _first(simulated_events(sim, now_ns()), 2000) if k == "MarketTick"]
    )
    producer = Producer(
        producer_config(settings)
        | {"linger.ms": 5, "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000}
    )
    topics = {kind: settings.topics.name(role) for kind, role in ROLE.items()}
    start, wall0 = now_ns(), time.monotonic()
    local = [0, 0, 0]
    for n, (kind, rec) in enumerate(simulated_events(sim, start)):
        if n % 256 == 0:
            if stop.is_set():
                break
            ahead = (rec["ts_event"] - start) / NS - (time.monotonic() - wall0)
            if ahead > 0.002:
                time.sleep(ahead)
            counts[:] = local
        is_tick = kind == "MarketTick"
        value = ticks.encode(rec) if is_tick else codec.encode(kind, rec)
        key = rec[KEY_FIELD.get(kind, "portfolio_id")].encode()
        _send(producer, topics[kind], value, key)
        local[0 if is_tick else 1 if kind == "TradeProposal" else 2] += 1
    counts[:] = local
    producer.flush(60)


def _first(items: Any, n: int) -> list[Any]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _send(producer: Any, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


# -- the flow and what is sampled ---------------------------------------------------------


def flow_env(settings: Settings, key: str) -> dict[str, str]:
    """The environment of the ``riskstream run`` child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    env.update(
        RISKSTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        RISKSTREAM_REDIS_URL=settings.redis_url.get_secret_value() if settings.redis_url else "",
        RISKSTREAM_CONTROL_KEYS=f'{{"soak": "{key}"}}',
        RISKSTREAM_CONTROL_KEY_ID="soak",
        RISKSTREAM_METRICS_PORT=str(settings.metrics_port),
        RISKSTREAM_TOPICS__PREFIX=settings.topics.prefix,
        RISKSTREAM_TOPIC_PARTITIONS=str(settings.topic_partitions),
        RISKSTREAM_BARS_PER_DAY="1",
        RUST_BACKTRACE="0",
    )
    return env


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Block until the flow answers /metrics (fails if it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"riskstream run exited with {proc.returncode} at start-up")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"riskstream run did not serve /metrics within {timeout:g} s")


def read_scores(settings: Settings, t0: float, samples: Samples, halt: threading.Event) -> None:
    """Read every RiskScore: latency, end-to-end latency, proposal id (a thread)."""
    from dataflows.app import codec_for
    from dataflows.kafka_io import follow

    codec = codec_for(settings)
    for _, value, _ in follow(settings, settings.topics.name("scores"), poll_s=0.1):
        if halt.is_set():
            return
        if value is None:
            continue
        s = codec.decode("RiskScore", value)
        e2e_us = (s["ts_decided"] - s["ts_event"]) / 1000
        samples.scores.append((time.monotonic() - t0, s["latency_us"], e2e_us))
        samples.decided.add(s["proposal_id"])


def sample_every_second(
    pid: int, counts: Any, t0: float, samples: Samples, halt: threading.Event
) -> None:
    """RSS of the flow and the producer's counts, once a second (a thread)."""
    while not halt.wait(1.0 - (time.monotonic() - t0) % 1.0):
        at = time.monotonic() - t0
        samples.rss.append((at, rss_kb(pid)))
        samples.produced.append((at, list(counts[:])))


# -- the run ------------------------------------------------------------------------------


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Run the soak; its figures, criteria and verdict (also written to bench/results)."""
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as tmp:
        tag = secrets.token_hex(4)
        settings = Settings(
            kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, metrics_port=free_port(),
            topics={"prefix": f"soak{tag}."}, bars_per_day=1.0,
        )  # fmt: skip
        ensure_topics(settings, settings.topics.all())
        with (Path(tmp) / "flow.log").open("wb") as log:
            flow = subprocess.Popen(
                [sys.executable, "-m", "dataflows.cli", "run"],
                env=flow_env(settings, secrets.token_hex(16)),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        try:
            wait_ready(settings.metrics_port, flow)
            samples, seconds = _drive(settings, opts, flow.pid)
            counters = flow_counters(settings.metrics_port)
        finally:
            stop_flow(flow, grace_s=60)
        on_topic = count_answered(settings)
        result = summarise(opts, samples, seconds, on_topic)
        result["flow_counters"] = counters
        result["proposals_on_scores_topic"] = on_topic
        if not result["passed"]:
            result["flow_log_tail"] = (Path(tmp) / "flow.log").read_text()[-3000:]
    write(opts, result)
    return result


def _drive(settings: Settings, opts: SoakOptions, pid: int) -> tuple[Samples, float]:
    """Feed for ``opts.minutes``, sampling; then wait until every proposal is answered."""
    ctx = mp.get_context("spawn")
    counts, stop = ctx.Array("q", len(_COUNTS)), ctx.Event()
    samples, halt = Samples(), threading.Event()
    t0 = time.monotonic()
    producer = ctx.Process(target=produce, args=(settings, opts, counts, stop), daemon=True)
    producer.start()
    threads = [
        threading.Thread(target=read_scores, args=(settings, t0, samples, halt), daemon=True),
        threading.Thread(
            target=sample_every_second, args=(pid, counts, t0, samples, halt), daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        producer.join(opts.minutes * 60 + 120)
        seconds = time.monotonic() - t0
        deadline = time.monotonic() + DRAIN_S
        while len(samples.decided) < counts[1] and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        producer.join(10)
        if producer.is_alive():
            producer.kill()
        halt.set()
        for thread in threads:
            thread.join(5)
    samples.produced.append((seconds, list(counts[:])))
    return samples, seconds


FLOW_COUNTERS = ("riskstream_decisions_total", "riskstream_output_failures_total")


def flow_counters(port: int) -> dict[str, float]:
    """The flow's own totals of decisions made and outputs the broker never acknowledged."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    totals = dict.fromkeys(FLOW_COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def count_answered(settings: Settings, quiet_s: float = 3.0) -> int:
    """Distinct proposal ids on the scores topic, read again after the run with one consumer
    per partition (as the flow reads): a consumer of several partitions of the embedded
    broker was seen to stop receiving some of them for minutes."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from dataflows.app import codec_for
    from dataflows.kafka_io import consumer_config

    codec, seen = codec_for(settings), set()
    topic = settings.topics.name("scores")
    for partition in range(settings.topic_partitions):
        consumer = Consumer({"group.id": "soak-count", **consumer_config(settings)})
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None and m.value() is not None:
                    seen.add(codec.decode("RiskScore", m.value())["proposal_id"])
                    last = time.monotonic()
        consumer.close()
    return len(seen)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def minutes_of(samples: Samples, minutes: int) -> list[Minute]:
    """Per-minute figures (by seconds since the feed started)."""
    out = []
    for m in range(minutes):
        lo, hi = m * 60.0, (m + 1) * 60.0
        lat = [s[1] / 1000 for s in samples.scores if lo <= s[0] < hi]
        e2e = [s[2] / 1000 for s in samples.scores if lo <= s[0] < hi]
        rss = [kb for at, kb in samples.rss if lo <= at < hi and kb > 0]
        sent = [c for at, c in samples.produced if at < hi]
        before = [c for at, c in samples.produced if at < lo]
        a, b = (before[-1] if before else [0, 0, 0]), (sent[-1] if sent else [0, 0, 0])
        out.append(
            Minute(
                minute=m + 1,
                ticks_per_s=round((b[0] - a[0]) / 60, 1),
                proposals_per_s=round((b[1] - a[1]) / 60, 1),
                decisions=len(lat),
                rss_mb_end=round(rss[-1] / 1024, 1) if rss else math.nan,
                rss_mb_max=round(max(rss) / 1024, 1) if rss else math.nan,
                latency_p50_ms=round(percentile(lat, 50), 2),
                latency_p99_ms=round(percentile(lat, 99), 2),
                e2e_p99_ms=round(percentile(e2e, 99), 2),
            )
        )
    return out


def summarise(
    opts: SoakOptions, samples: Samples, seconds: float, on_topic: int = 0
) -> dict[str, Any]:
    """Figures, the three criteria and the verdict (``on_topic``: see ``count_answered``)."""
    n = max(1, math.floor(opts.minutes))
    per_minute = minutes_of(samples, n)
    warm_end = [kb for at, kb in samples.rss if at < WARMUP_MIN * 60 and kb > 0]
    after = [kb for at, kb in samples.rss if at >= WARMUP_MIN * 60 and kb > 0]
    growth = max(after) / warm_end[-1] - 1 if warm_end and after else math.nan
    full_end = [kb for at, kb in samples.rss if at < STATE_FULL_MIN * 60 and kb > 0]
    full_after = [kb for at, kb in samples.rss if at >= STATE_FULL_MIN * 60 and kb > 0]
    growth_full = max(full_after) / full_end[-1] - 1 if full_end and full_after else math.nan
    p99s = [m.latency_p99_ms for m in per_minute[WARMUP_MIN:] if not math.isnan(m.latency_p99_ms)]
    p99_bound = P99_FACTOR * min(p99s) + P99_SLACK_MS if p99s else math.nan
    sent = samples.produced[-1][1] if samples.produced else [0, 0, 0]
    criteria = {
        "rss_growth_below_5pct": bool(growth < RSS_GROWTH_MAX),
        "p99_stable": bool(p99s) and max(p99s) <= p99_bound,
        "every_proposal_answered": max(len(samples.decided), on_topic) >= sent[1] > 0,
    }
    return {
        "options": asdict(opts),
        "seconds": round(seconds, 1),
        "reached_ticks_per_s": round(sent[0] / seconds, 1),
        "reached_proposals_per_s": round(sent[1] / seconds, 1),
        "ticks_sent": sent[0],
        "proposals_sent": sent[1],
        "proposals_answered": len(samples.decided),
        "rss_mb_end_of_warmup": round(warm_end[-1] / 1024, 1) if warm_end else None,
        "rss_mb_max_after_warmup": round(max(after) / 1024, 1) if after else None,
        "rss_growth": round(growth, 4),
        "rss_growth_after_histories_full": round(growth_full, 4),
        "p99_bound_ms": round(p99_bound, 2),
        "per_minute": [asdict(m) for m in per_minute],
        "criteria": criteria,
        "passed": all(criteria.values()),
    }


def write(opts: SoakOptions, r: dict[str, Any]) -> None:
    """bench/results/<name>.json and .md."""
    table = [
        ("duration", f"{r['seconds'] / 60:.1f} min (first minute: warm-up)"),
        ("ticks/s asked / reached", f"{opts.tick_rate:,.0f} / {r['reached_ticks_per_s']:,.0f}"),
        (
            "proposals/s asked / reached",
            f"{opts.proposal_rate:,.0f} / {r['reached_proposals_per_s']:,.0f}",
        ),
        (
            "proposals answered (the soak's reader)",
            f"{r['proposals_answered']:,} of {r['proposals_sent']:,}",
        ),
        (
            "on the scores topic, re-read after the run / decided by the flow / not delivered",
            f"{r['proposals_on_scores_topic']:,} / {r['flow_counters'][FLOW_COUNTERS[0]]:,.0f}"
            f" / {r['flow_counters'][FLOW_COUNTERS[1]]:,.0f}",
        ),
        (
            "RSS end of warm-up / max after",
            f"{r['rss_mb_end_of_warmup']} MB / {r['rss_mb_max_after_warmup']} MB",
        ),
        ("RSS growth (< 5%)", f"{r['rss_growth']:.2%}"),
        (
            f"RSS growth from minute {STATE_FULL_MIN} (histories full; reported, not judged)",
            f"{r['rss_growth_after_histories_full']:.2%}",
        ),
        ("p99 bound (2x lowest minute + 10 ms)", f"{r['p99_bound_ms']} ms"),
    ]
    for m in r["per_minute"]:
        table.append(
            (
                f"minute {m['minute']}",
                f"{m['ticks_per_s']:,.0f} ticks/s, {m['proposals_per_s']:,.0f} proposals/s,"
                f" RSS {m['rss_mb_max']} MB, latency p50 {m['latency_p50_ms']} ms"
                f" p99 {m['latency_p99_ms']} ms, end-to-end p99 {m['e2e_p99_ms']} ms",
            )
        )
    table.append(("verdict", "PASS" if r["passed"] else f"FAIL {r['criteria']}"))
    write_results(opts.name, {k: v for k, v in r.items() if k != "flow_log_tail"}, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--tick-rate", type=float, default=20_000.0)
    parser.add_argument("--proposal-rate", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--name", default="soak", help="results file name (bench/results)")
    args = parser.parse_args(argv)
    if args.minutes < WARMUP_MIN + 1:
        parser.error(f"--minutes must be at least {WARMUP_MIN + 1} (one is warm-up)")
    opts = SoakOptions(
        args.minutes, args.tick_rate, args.proposal_rate, seed=args.seed, name=args.name
    )
    result = run_soak(opts)
    if not result["passed"]:
        print(result.get("flow_log_tail", ""), file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
