"""Proposal-to-decision latency under load, beside the broker's own latency in the same run.

Run: ``python -m bench.latency_bench [--seconds 60] [--proposal-rate 1000] [--tick-rate 50000]
[--sweep]``. Writes ``bench/results/latency.json`` and ``bench/results/latency.md``.

On the embedded broker and a redis-server, ``riskstream run`` runs as a child process
(live mode, Redis sink). Load:

* ticks at ``--tick-rate`` from a separate process: a pool of simulated ticks encoded
  before the timed part; at send time only the ``ts_event`` varint is spliced in (wall
  clock), so the live flow's event time advances as in production;
* proposals at ``--proposal-rate`` from four portfolios over the simulated instruments,
  ``ts_event`` = wall clock at send (the simulator's reference data and opening fills go
  first);
* probes at the same rate on a topic of their own: the broker's produce-to-consume
  latency with the same producer and consumer settings (``producer_config``,
  ``consumer_config``: idempotent, linger 2 ms, assign-based, ``fetch.wait.max.ms``).

Per proposal, from its RiskScore: in flow = ``latency_us`` (parsed to decided), end to end
= consumer receive - ``ts_event`` (one clock), and the split into the hop in
(``ts_decided - latency_us - ts_event``) and the hop out (receive - ``ts_decided``).
The first ``--warmup`` seconds of proposals are left out. ``--sweep`` also runs the
variants of ``KNOBS`` (a fresh flow and topics each) for the knob table; knobs that have no
setting are applied in the child by patching defaults (``LAUNCHER``), never in the code.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.common import avro_long, write_results
from dataflows.app import codec_for
from dataflows.control_cli import signed_command
from dataflows.demo import child_env, stop_flow
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from dataflows.kafka_io import Publisher, consumer_config, ensure_topics, producer_config
from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, simulated_events
from dataflows.settings import Settings

NS = 1_000_000_000
PORTFOLIOS = 4

LAUNCHER = """
import dataclasses, os, sys
from dataflows import kafka_source, settings
env = os.environ.get
if env("LATBENCH_IDLE_EVERY_MS"):
    every = int(float(env("LATBENCH_IDLE_EVERY_MS")) * 1e6)
    kafka_source.RiskSource.__init__.__kwdefaults__["idle_every_ns"] = every
if env("LATBENCH_IDLE_MARGIN_MS"):
    margin = int(float(env("LATBENCH_IDLE_MARGIN_MS")) * 1e6)
    engine_config = settings.Settings.engine_config
    settings.Settings.engine_config = lambda self, **kw: dataclasses.replace(
        engine_config(self, **kw), idle_margin_ns=margin)
if env("LATBENCH_POLL_TIMEOUT_MS"):
    poll_s = float(env("LATBENCH_POLL_TIMEOUT_MS")) / 1e3
    class _Consumer(kafka_source.Consumer):
        def consume(self, num_messages=1, timeout=-1.0):
            return super().consume(num_messages, poll_s)
    kafka_source.Consumer = _Consumer
if env("LATBENCH_NO_FENCE"):
    from dataflows import app
    app.list_partitions = lambda *a, **k: []
from dataflows.cli import main
sys.exit(main(["run"]))
"""
"""The flow's ``riskstream run``, with defaults patched from ``LATBENCH_*`` (experiments)."""

KNOBS: list[tuple[str, dict[str, str], bool]] = [
    ("as deployed: fenced partitions left empty", {}, False),
    ("primed, defaults (fetch 20 ms, batch 1000, idle every 5 ms, margin 30, polls 0)", {}, True),
    ("primed, RISKSTREAM_FETCH_WAIT_MAX_MS=5", {"RISKSTREAM_FETCH_WAIT_MAX_MS": "5"}, True),
    ("primed, RISKSTREAM_FETCH_WAIT_MAX_MS=50", {"RISKSTREAM_FETCH_WAIT_MAX_MS": "50"}, True),
    ("primed, RISKSTREAM_BATCH_SIZE=100", {"RISKSTREAM_BATCH_SIZE": "100"}, True),
    ("primed, no shard fence at all (patched)", {"LATBENCH_NO_FENCE": "1"}, True),
    ("primed, idle margin 2 ms", {"LATBENCH_IDLE_MARGIN_MS": "2"}, True),
    ("primed, idle every 1 ms", {"LATBENCH_IDLE_EVERY_MS": "1"}, True),
    ("primed, source poll timeout 1 ms (was the default)", {"LATBENCH_POLL_TIMEOUT_MS": "1"}, True),
    (
        "primed, margin 2 ms + every 1 ms + poll 0",
        {
            "LATBENCH_IDLE_MARGIN_MS": "2",
            "LATBENCH_IDLE_EVERY_MS": "1",
            "LATBENCH_POLL_TIMEOUT_MS": "0",
        },
        True,
    ),
]  # fmt: skip
"""Variants of ``--sweep``: (label, extra environment of the flow, prime fenced partitions)."""


# -- ticks: pre-encoded, stamped at send, from a process of their own ----------------------


def tick_pool(settings: Settings, rate: float) -> list[tuple[bytes, bytes, bytes]]:
    """(key, bytes before ts_event, bytes after it) of one second of simulated ticks."""
    codec = codec_for(settings)
    opts = ProduceOptions(tick_rate=rate, proposal_rate=1.0, duration_s=1.0)
    pool = []
    for kind, rec in simulated_events(opts, time.time_ns()):
        if kind != "MarketTick":
            continue
        value = codec.encode("MarketTick", rec)
        ts = avro_long(rec["ts_event"])
        at = value.index(rec["instrument_id"].encode()) + len(rec["instrument_id"])
        assert value[at : at + len(ts)] == ts, "ts_event does not follow instrument_id"
        pool.append((rec["instrument_id"].encode(), value[:at], value[at + len(ts) :]))
    return pool


def tick_main(settings: Settings, rate: float, ready: Any, stop: Any, sent: Any) -> None:
    """Send ticks at ``rate`` until ``stop`` is set; ``sent`` counts them."""
    pool = tick_pool(settings, rate)
    producer = Producer(producer_config(settings))
    topic = settings.topics.name("ticks")
    ready.set()
    t0, n = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        ts = avro_long(time.time_ns())
        while n < due:
            key, head, tail = pool[n % len(pool)]
            try:
                producer.produce(topic, head + ts + tail, key)
            except BufferError:
                producer.poll(0.01)
                break
            n += 1
        producer.poll(0)
        sent.value = n
        time.sleep(0.0005)
    producer.flush(10)


# -- proposals and probes -------------------------------------------------------------------


def proposal_pool(rate: float) -> list[dict[str, Any]]:
    """Simulated proposals (their ids and times are replaced at send)."""
    opts = ProduceOptions(proposal_rate=max(rate, 100.0), portfolios=PORTFOLIOS, duration_s=3.0)
    return [r for k, r in simulated_events(opts, time.time_ns()) if k == "TradeProposal"]


def send_reference(settings: Settings, prime: bool) -> None:
    """Reference data and opening fills of the simulated market, before anything else.

    ``prime``: also one record in every partition of the fenced topics (see ``prime_fenced``).
    """
    pub = Publisher(settings, codec_for(settings))
    opts = ProduceOptions(portfolios=PORTFOLIOS, duration_s=0.0)
    instruments = []
    for kind, rec in simulated_events(opts, time.time_ns() - 2 * NS):
        if kind in ("Instrument", "Execution"):
            pub.send(ROLE[kind], kind, rec, rec[KEY_FIELD.get(kind, "portfolio_id")])
        if kind == "Instrument":
            instruments.append(rec)
    if prime:
        prime_fenced(settings, pub, instruments)
    assert pub.flush(30) == 0


def prime_fenced(settings: Settings, pub: Publisher, instruments: list[dict[str, Any]]) -> None:
    """One valid record in every control, execution and reference partition.

    A live source partition that has never held a record sends no idle marker
    (``_Partition._caught_up`` compares the high watermark with the start offset
    OFFSET_BEGINNING = -2), so its fence never advances and every decision waits
    ``max_wait_ms`` and comes out stale. Priming measures the design as intended.
    """
    ts = time.time_ns() - NS
    codec, n = pub.codec, settings.topic_partitions
    for p in range(n):
        ref = instruments[p % len(instruments)] | {"ts_event": ts}
        fill = {
            "execution_id": f"PRIME-{p}", "portfolio_id": f"PF-PRIME-{p}",
            "instrument_id": ref["instrument_id"], "side": "BUY", "quantity": 100.0,
            "price": 100.0, "proposal_id": None, "ts_event": ts,
        }  # fmt: skip
        control = signed_command(settings, "RESUME", reason="bench prime", ts_event=ts)
        for role, kind, rec, key in (
            ("instruments", "Instrument", ref, ref["instrument_id"]),
            ("executions", "Execution", fill, fill["portfolio_id"]),
            ("control", "ControlCommand", control, "GLOBAL"),
        ):
            topic = settings.topics.name(role)
            pub.producer.produce(topic, codec.encode(kind, rec), key.encode(), partition=p)


class Sender:
    """Proposals, each followed by a probe on the probe topic, at one rate."""

    def __init__(self, settings: Settings, probe_topic: str, pool: list[dict[str, Any]]) -> None:
        self.codec = codec_for(settings)
        self.topic = settings.topics.name("proposals")
        self.probe_topic = probe_topic
        self.pool = pool
        self.proposals = Producer(producer_config(settings))
        self.probes = Producer(producer_config(settings))
        self.n = 0

    def send(self, with_probe: bool = True) -> None:
        """One proposal stamped now (and one probe)."""
        rec = self.pool[self.n % len(self.pool)]
        rec = rec | {"proposal_id": f"LB-{self.n}", "ts_event": time.time_ns()}
        key = rec["portfolio_id"].encode()
        self.proposals.produce(self.topic, self.codec.encode("TradeProposal", rec), key)
        self.proposals.poll(0)
        if with_probe:
            self.probes.produce(self.probe_topic, str(time.time_ns()).encode(), key)
            self.probes.poll(0)
        self.n += 1

    def paced(self, rate: float, seconds: float) -> tuple[int, float]:
        """Send at ``rate`` for ``seconds``; (proposals sent, seconds taken)."""
        t0, first = time.monotonic(), self.n
        while (elapsed := time.monotonic() - t0) < seconds:
            due = first + int(elapsed * rate)
            while self.n < due:
                self.send()
            time.sleep(0.0005)
        return self.n - first, time.monotonic() - t0

    def flush(self) -> None:
        """Deliver everything produced."""
        self.proposals.flush(10)
        self.probes.flush(10)


class Receiver(threading.Thread):
    """Records (wall clock ns at receipt, value) of every message of a topic."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(daemon=True, name=f"recv-{topic}")
        conf = consumer_config(settings) | {"group.id": "latbench", "enable.auto.commit": False}
        self.consumer = Consumer(conf)
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.got: list[tuple[int, bytes]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            msg = self.consumer.poll(0.05)
            value = None if msg is None or msg.error() is not None else msg.value()
            if value is not None:
                self.got.append((time.time_ns(), value))
        self.consumer.close()

    def close(self) -> None:
        self.halt.set()
        self.join(5)


# -- the flow --------------------------------------------------------------------------------


def start_flow(settings: Settings, knobs: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``riskstream run`` (through ``LAUNCHER`` when a knob needs a patched default)."""
    env = child_env(settings) | knobs
    patched = any(k.startswith("LATBENCH_") for k in knobs)
    args = ["-c", LAUNCHER] if patched else ["-m", "dataflows.cli", "run"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def input_lag(port: int) -> dict[str, float]:
    """Messages not yet read by the flow, per input topic (its /metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lag: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("riskstream_input_lag_messages{"):
            topic = line.split('topic="', 1)[1].split('"', 1)[0]
            lag[topic] = lag.get(topic, 0.0) + float(line.rsplit(" ", 1)[1])
    return lag


# -- one measured run -------------------------------------------------------------------------


@dataclass
class RunResult:
    """Raw observations of one run."""

    label: str
    scores: list[dict[str, Any]]
    received: list[int]
    probes: list[float]
    rates: dict[str, float]
    load: list[float]
    flow_cpu: float
    lag: dict[str, float] = field(default_factory=dict)


def run_once(
    broker: EmbeddedBroker, redis_url: str, args: argparse.Namespace, index: int,
    label: str, knobs: dict[str, str], seconds: float, prime: bool = True,
) -> RunResult:  # fmt: skip
    """A fresh flow on fresh topics; proposals, probes and ticks; what came back."""
    metrics_port = free_port()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap, redis_url=redis_url, metrics_port=metrics_port,
        topics={"prefix": f"lat{index}."}, redis_prefix=f"lat{index}:",
        limits={"max_orders": 1e9}, bars_per_day=1.0, control_keys={"default": "bench-key"},
    )  # fmt: skip
    probe_topic = f"lat{index}.probe"
    ensure_topics(settings, [*settings.topics.all(), probe_topic])
    send_reference(settings, prime)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    sent = ctx.Value("q", 0, lock=False)
    ticks = ctx.Process(
        target=tick_main, args=(settings, args.tick_rate, ready, stop, sent), daemon=True
    )
    ticks.start()
    assert ready.wait(120), "the tick process did not start"
    log = Path(tempfile.gettempdir()) / f"latbench-flow-{os.getpid()}-{index}.log"
    flow = start_flow(settings, knobs, log)
    scores_rx = Receiver(settings, settings.topics.name("scores"))
    probes_rx = Receiver(settings, probe_topic)
    scores_rx.start()
    probes_rx.start()
    sender = Sender(settings, probe_topic, proposal_pool(args.proposal_rate))
    try:
        wait_first_score(sender, scores_rx, flow, log)
        sender.paced(args.proposal_rate, args.warmup)
        cpu0, ticks0, load = cpu_seconds(flow.pid), sent.value, [os.getloadavg()[0]]
        first_timed = time.time_ns()
        n_prop, took = sender.paced(args.proposal_rate, seconds)
        load.append(os.getloadavg()[0])
        rates = {
            "ticks_per_s": (sent.value - ticks0) / took,
            "proposals_per_s": n_prop / took,
            "probes_per_s": n_prop / took,
        }
        flow_cpu = (cpu_seconds(flow.pid) - cpu0) / took
        lag = input_lag(metrics_port)
        sender.flush()
        drain(scores_rx, sender.n, 15.0)
    finally:
        stop.set()
        ticks.join(15)
        stop_flow(flow, grace_s=30)
        scores_rx.close()
        probes_rx.close()
    codec = codec_for(settings)
    rows = [(t, codec.decode("RiskScore", v)) for t, v in scores_rx.got]
    timed = [(t, r) for t, r in rows if r["ts_event"] >= first_timed]
    rates["scores_per_s"] = len(timed) / took
    probes = [(t - int(v)) / 1e3 for t, v in probes_rx.got if int(v) >= first_timed]
    return RunResult(
        label, [r for _, r in timed], [t for t, _ in timed], probes, rates, load, flow_cpu, lag
    )


def wait_first_score(
    sender: Sender, rx: Receiver, flow: subprocess.Popen[bytes], log: Path
) -> None:
    """Send a proposal every 50 ms until the flow answers one (models loaded, consuming)."""
    deadline = time.monotonic() + 120
    while not rx.got:
        if flow.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the flow did not answer; log {log}:\n{log.read_text()[-3000:]}")
        sender.send(with_probe=False)
        time.sleep(0.05)


def drain(rx: Receiver, expected: int, timeout: float) -> None:
    """Wait until ``expected`` scores arrived, or ``timeout`` seconds without progress."""
    last, since = -1, time.monotonic()
    while len(rx.got) < expected and time.monotonic() - since < timeout:
        if len(rx.got) != last:
            last, since = len(rx.got), time.monotonic()
        time.sleep(0.1)


# -- figures ---------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def dist_ms(us: list[float]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max of microsecond samples, in ms."""
    return {
        "n": len(us),
        "p50_ms": round(pct(us, 0.5) / 1e3, 3),
        "p99_ms": round(pct(us, 0.99) / 1e3, 3),
        "p99_9_ms": round(pct(us, 0.999) / 1e3, 3),
        "max_ms": round(max(us) / 1e3, 3) if us else float("nan"),
    }


def figures(res: RunResult, margin_ms: float) -> dict[str, Any]:
    """Distributions and ratios of one run."""
    in_flow = [r["latency_us"] for r in res.scores]
    e2e = [(t - r["ts_event"]) / 1e3 for t, r in zip(res.received, res.scores, strict=True)]
    hop_in = [(r["ts_decided"] - r["latency_us"] * 1e3 - r["ts_event"]) / 1e3 for r in res.scores]
    hop_out = [(t - r["ts_decided"]) / 1e3 for t, r in zip(res.received, res.scores, strict=True)]
    decided = [(r["ts_decided"] - r["ts_event"]) / 1e3 for r in res.scores]
    e2e_p99, broker_p99 = pct(e2e, 0.99), pct(res.probes, 0.99)
    return {
        "label": res.label,
        "in_flow": dist_ms(in_flow),
        "end_to_end": dist_ms(e2e),
        "broker_produce_to_consume": dist_ms(res.probes),
        "hop_in_proposal_to_parsed": dist_ms(hop_in),
        "hop_out_decided_to_received": dist_ms(hop_out),
        "send_to_decided": dist_ms(decided),
        "decided_before_send_plus_margin_share": round(
            sum(d < margin_ms * 1e3 for d in decided) / max(1, len(decided)), 3
        ),
        "stale_share": round(sum(r["stale"] for r in res.scores) / max(1, len(res.scores)), 4),
        "ratio_e2e_p99_to_broker_p99": round(e2e_p99 / broker_p99, 2) if broker_p99 else None,
        "rates": {k: round(v, 1) for k, v in res.rates.items()},
        "flow_cpu_cores": round(res.flow_cpu, 2),
        "input_lag_at_end": res.lag,
        "load_average_1m": [round(x, 2) for x in res.load],
    }


def fmt(d: dict[str, float]) -> str:
    """``p50 / p99 / p99.9 ms``."""
    return f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} / {d['p99_9_ms']:.2f} ms"


def summary_rows(main: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    """The markdown table of the main run."""
    r = main["rates"]
    p = "p50 / p99 / p99.9"
    return [
        (f"in flow (parsed -> decided, `latency_us`), {p}", fmt(main["in_flow"])),
        (f"end to end (proposal sent -> score received), {p}", fmt(main["end_to_end"])),
        (f"broker alone (probe topic, same run), {p}", fmt(main["broker_produce_to_consume"])),
        (f"hop in (sent -> parsed in the flow), {p}", fmt(main["hop_in_proposal_to_parsed"])),
        (f"hop out (decided -> received), {p}", fmt(main["hop_out_decided_to_received"])),
        ("ratio e2e p99 / broker p99 (target <= 2)", str(main["ratio_e2e_p99_to_broker_p99"])),
        ("in-flow p99 (target <= 2 ms)", f"{main['in_flow']['p99_ms']:.2f} ms"),
        ("rates reached: ticks / proposals / probes / scores per s",
         f"{r['ticks_per_s']:,.0f} / {r['proposals_per_s']:,.0f} / {r['probes_per_s']:,.0f} / "
         f"{r['scores_per_s']:,.0f} (asked {args.tick_rate:,.0f} / {args.proposal_rate:,.0f})"),
        ("flow process CPU (cores)", str(main["flow_cpu_cores"])),
        ("flow input lag at the end of the timed part (messages)",
         ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(main["input_lag_at_end"].items()))),
        ("stale decisions (max wait ran out)", f"{main['stale_share']:.2%}"),
        ("load average 1 min (start / end of timed part; 2 cores, shared)",
         " / ".join(str(x) for x in main["load_average_1m"])),
        ("setup", main["label"]),
        ("timed / warm-up left out", f"{args.seconds:g} s / first {args.warmup:g} s"),
    ]  # fmt: skip


def knob_rows(variants: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One markdown row per knob variant: in-flow and end-to-end p50 / p99, CPU."""
    return [
        (
            f"knob: {v['label']}",
            f"in flow {v['in_flow']['p50_ms']:.2f} / {v['in_flow']['p99_ms']:.2f} ms; "
            f"e2e {v['end_to_end']['p50_ms']:.1f} / {v['end_to_end']['p99_ms']:.1f} ms; "
            f"broker {v['broker_produce_to_consume']['p99_ms']:.1f} ms p99; "
            f"flow CPU {v['flow_cpu_cores']}; load {v['load_average_1m'][-1]}",
        )
        for v in variants
    ]


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="timed part")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds left out first")
    parser.add_argument("--proposal-rate", type=float, default=1000.0)
    parser.add_argument("--tick-rate", type=float, default=50_000.0)
    parser.add_argument("--no-prime", action="store_true", help="leave fenced partitions empty")
    parser.add_argument("--sweep", action="store_true", help="also run every variant of KNOBS")
    parser.add_argument("--sweep-seconds", type=float, default=15.0)
    parser.add_argument("--sweep-proposal-rate", type=float, default=200.0)
    parser.add_argument("--sweep-tick-rate", type=float, default=5000.0)
    return parser.parse_args()


def main() -> None:
    """Measure, optionally sweep the knobs, and write bench/results/latency.{json,md}."""
    args = parse_args()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:

        def run(
            i: int, label: str, knobs: dict[str, str], seconds: float, prime: bool
        ) -> RunResult:
            rates = {"proposal_rate": args.sweep_proposal_rate, "tick_rate": args.sweep_tick_rate}
            used = args if i == 0 else argparse.Namespace(**(vars(args) | rates))
            return run_once(broker, redis_server.url, used, i, label, knobs, seconds, prime)

        label = KNOBS[1][0].split(", ", 1)[1] + (
            "" if args.no_prime else ", fenced partitions primed"
        )
        main_fig = figures(run(0, label, {}, args.seconds, not args.no_prime), 10.0)
        print(main_fig, flush=True)
        variants = []
        for i, (label, knobs, prime) in enumerate(KNOBS if args.sweep else [], start=1):
            margin = float(knobs.get("LATBENCH_IDLE_MARGIN_MS", Settings().idle_margin))
            variants.append(figures(run(i, label, knobs, args.sweep_seconds, prime), margin))
            print(variants[-1], flush=True)
    asked = {
        "seconds": args.seconds, "warmup_s": args.warmup, "primed": not args.no_prime,
        "proposal_rate": args.proposal_rate, "tick_rate": args.tick_rate,
        "sweep": {
            "seconds": args.sweep_seconds, "proposal_rate": args.sweep_proposal_rate,
            "tick_rate": args.sweep_tick_rate,
        } if args.sweep else None,
    }  # fmt: skip
    payload = {
        "asked": asked,
        "main": main_fig,
        "knobs": variants,
        "targets": {"in_flow_p99_ms": 2.0, "ratio_e2e_p99_to_broker_p99": 2.0},
    }
    sweep = [("knob sweep rates (ticks / proposals per s), seconds each",
              f"{args.sweep_tick_rate:,.0f} / {args.sweep_proposal_rate:,.0f}, "
              f"{args.sweep_seconds:g} s")] if args.sweep else []  # fmt: skip
    table = summary_rows(main_fig, args) + sweep + knob_rows(variants)
    write_results("latency", payload, table)


if __name__ == "__main__":
    main()
