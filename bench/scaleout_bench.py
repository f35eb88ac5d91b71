"""Scale-out: the real flow on 1 process and on 2, over the same preloaded input, in one run.

Run: ``python -m bench.scaleout_bench [--seconds 60] [--partitions 8] [--repeats 2]``.
Writes ``bench/results/scaleout.json`` and ``.md``.

A seeded simulated market is published once to the embedded broker (``--partitions`` per
input topic). Then, alternately and ``--repeats`` times, ``riskstream replay --speed max``
runs over all of it as one process, and as a cluster of two (``-i 0/1 -a`` on loopback),
each writing its decisions to a topic of its own. Throughput is input events over the
flow's time (the slowest process's ``elapsed_s``, from cluster start to end of input;
process start-up, imports and range resolution excluded; best of the repeats). The
decisions of every run are compared byte for byte (wall-clock fields zeroed) with the
first one-process run; runs that differ are summarized (how many decisions, which fields,
which reason codes). Target: 2 processes >= 1.6x one.

Caveat: the embedded broker runs on the same machine and shares its cores with the flow
processes; with 2 cores, two flow processes plus the broker cannot reach 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import write_results
from dataflows.app import codec_for
from dataflows.embedded import EmbeddedBroker, free_port
from dataflows.kafka_io import Publisher, ensure_topics, follow
from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, simulated_events
from dataflows.settings import Settings

T0 = 1_767_225_600_000_000_000
TARGET = 1.6
WALL_CLOCK = {"ts_decided": 0, "latency_us": 0.0}


@dataclass(frozen=True)
class ClusterRun:
    """One replay over the whole input by ``processes`` processes."""

    processes: int
    out_topic: str
    events: int
    decisions: int
    flow_s: float
    """Slowest process's time inside the dataflow."""
    wall_s: float
    """Spawn to last exit (start-up included)."""

    @property
    def events_per_s(self) -> float:
        """Input events per second of flow time."""
        return self.events / self.flow_s


def publish(settings: Settings, opts: ProduceOptions) -> tuple[int, int]:
    """Publish the simulated market stamped with event time: (records, proposals)."""
    pub = Publisher(settings, codec_for(settings))
    n = proposals = 0
    for kind, rec in simulated_events(opts, T0):
        pub.send(
            ROLE[kind], kind, rec, rec[KEY_FIELD.get(kind, "portfolio_id")], event_timestamp=True
        )
        n += 1
        proposals += kind == "TradeProposal"
    assert pub.flush(60) == 0
    return n, proposals


def child_env(settings: Settings) -> dict[str, str]:
    """RISKSTREAM_* of ``settings`` for a child ``riskstream`` (no Redis, no metrics)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    return env | {
        "RISKSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "RISKSTREAM_TOPICS__PREFIX": settings.topics.prefix,
        "RISKSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "RISKSTREAM_BARS_PER_DAY": str(settings.bars_per_day),
        "RISKSTREAM_METRICS_PORT": "0",
        "RISKSTREAM_CONTROL_KEYS": json.dumps(
            {k: v.get_secret_value() for k, v in settings.control_keys.items()}
        ),
    }


def run_cluster(
    settings: Settings, processes: int, out_topic: str, timeout: float = 900
) -> ClusterRun:
    """``riskstream replay`` over everything on the input topics, by ``processes`` processes."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        summaries = [Path(tmp) / f"summary-{k}.json" for k in range(processes)]
        started = time.perf_counter()
        procs = []
        for k in range(processes):
            argv = [sys.executable, "-m", "dataflows.cli", "replay", "--out-topic", out_topic]
            argv += ["--no-redis", "--progress", "never", "--summary-json", str(summaries[k])]
            if processes > 1:
                argv += ["-i", str(k), "-a", addresses]
            procs.append(subprocess.Popen(argv, env=child_env(settings), stdout=subprocess.PIPE))
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"replay process failed ({proc.returncode}): {out.decode()}")
        wall = time.perf_counter() - started
        parts = [json.loads(p.read_text()) for p in summaries]
    return ClusterRun(
        processes,
        out_topic,
        sum(p["events"] for p in parts),
        sum(sum(p["decisions"].values()) for p in parts),
        max(p["elapsed_s"] for p in parts),
        wall,
    )


def canonical_decisions(settings: Settings, topic: str, n: int, timeout: float = 60) -> list[bytes]:
    """The ``n`` decisions on ``topic``, by proposal id, wall-clock fields zeroed, encoded."""
    codec = codec_for(settings)
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for _, value, _ in follow(settings, topic):
        if value is not None:
            records.append(codec.decode("RiskScore", value))
        if len(records) >= n or time.monotonic() > deadline:
            break
    if len(records) != n:
        raise AssertionError(f"expected {n} decisions on {topic}, found {len(records)}")
    records.sort(key=lambda r: r["proposal_id"])
    return [codec.encode("RiskScore", r | WALL_CLOCK) for r in records]


def differences(settings: Settings, reference: list[bytes], got: list[bytes]) -> dict[str, Any]:
    """How many decisions differ from the reference, by field, and the reason codes involved."""
    codec = codec_for(settings)
    fields: dict[str, int] = {}
    codes: set[str] = set()
    n = 0
    for x, y in zip(reference, got, strict=True):
        if x == y:
            continue
        n += 1
        a, b = codec.decode("RiskScore", x), codec.decode("RiskScore", y)
        for k in a:
            if str(a[k]) != str(b[k]):
                fields[k] = fields.get(k, 0) + 1
        ra, rb = a["reasons"], b["reasons"]
        codes |= {r["code"] for r in ra if r not in rb} | {r["code"] for r in rb if r not in ra}
    return {"decisions": n, "fields": fields, "reason_codes": sorted(codes)}


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def bench_settings(broker: EmbeddedBroker, partitions: int) -> Settings:
    """Settings of the benchmark's topics on ``broker``."""
    return Settings(
        kafka_bootstrap=broker.bootstrap, topics={"prefix": "scaleout."}, metrics_port=0,
        topic_partitions=partitions, bars_per_day=1.0,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="event time to publish")
    parser.add_argument("--tick-rate", type=float, default=5000.0)
    parser.add_argument("--proposal-rate", type=float, default=50.0)
    parser.add_argument("--partitions", type=int, default=8, help="per input topic")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    opts = ProduceOptions(
        tick_rate=args.tick_rate, proposal_rate=args.proposal_rate, portfolios=8, seed=3,
        duration_s=args.seconds,
    )  # fmt: skip
    with EmbeddedBroker() as broker:
        settings = bench_settings(broker, args.partitions)
        ensure_topics(settings, settings.topics.all())
        published, proposals = publish(settings, opts)
        print(f"published {published:,} records ({proposals:,} proposals)")
        runs: dict[int, list[ClusterRun]] = {1: [], 2: []}
        reference: list[bytes] | None = None
        identical = True
        mismatches: list[dict[str, Any]] = []
        for i in range(args.repeats):
            for n in (1, 2):
                run = run_cluster(settings, n, f"scaleout.out.p{n}.r{i}")
                runs[n].append(run)
                got = canonical_decisions(settings, run.out_topic, proposals)
                reference = reference or got
                identical &= got == reference
                if got != reference:
                    diff = differences(settings, reference, got)
                    mismatches.append({"processes": n, "repeat": i, **diff})
                    print(f"  differing: {diff}")
                print(
                    f"  {n} process(es): {run.events_per_s:,.0f} events/s (flow"
                    f" {run.flow_s:.2f} s, wall {run.wall_s:.2f} s), identical: {got == reference}"
                )
    load_after = os.getloadavg()
    best = {n: max(r, key=lambda x: x.events_per_s) for n, r in runs.items()}
    ratio = best[2].events_per_s / best[1].events_per_s
    figures = {
        "events": best[1].events,
        "proposals": proposals,
        "partitions_per_topic": args.partitions,
        "repeats": args.repeats,
        "events_per_s": {str(n): round(b.events_per_s) for n, b in best.items()},
        "flow_s": {str(n): [round(r.flow_s, 3) for r in rs] for n, rs in runs.items()},
        "wall_s": {str(n): [round(r.wall_s, 3) for r in rs] for n, rs in runs.items()},
        "ratio_2_vs_1": round(ratio, 3),
        "target_ratio": TARGET,
        "target_met": ratio >= TARGET,
        "decisions_identical": identical,
        "mismatches": mismatches,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "note": "the embedded broker shares the machine's cores with the flow processes",
    }
    table = [
        ("input events (proposals)", f"{best[1].events:,} ({proposals:,})"),
        ("partitions per input topic", str(args.partitions)),
        ("1 process, events/s (best of repeats)", f"{best[1].events_per_s:,.0f}"),
        ("2 processes, events/s (best of repeats)", f"{best[2].events_per_s:,.0f}"),
        ("ratio 2 / 1 (target >= 1.6)", f"{ratio:.2f} ({'met' if ratio >= TARGET else 'NOT met'})"),
        ("decisions identical (every run vs the first)", str(identical)),
        (
            "differing decisions per run (fields; reason codes)",
            "; ".join(
                f"{m['processes']}p r{m['repeat']}: {m['decisions']:,} ({', '.join(m['fields'])};"
                f" {', '.join(m['reason_codes'])})"
                for m in mismatches
            )
            or "none",
        ),
        (
            "load average before / after (1, 5, 15 min)",
            f"{_load(load_before)} / {_load(load_after)}",
        ),
        ("cores", f"{os.cpu_count()} (shared with the embedded broker)"),
    ]
    write_results("scaleout", figures, table)


if __name__ == "__main__":
    main()
