"""Kill switch: time from a HALT being produced to the first REJECT consumed.

A live ``riskstream run`` on the embedded broker scores a steady stream of proposals
(200/s, with ticks); the bench sends signed HALT / RESUME pairs and times, for each HALT,
the first RiskScore that is REJECTed for TRADING_HALTED. Baseline in the same run: the
broker's own produce-to-consume latency (a plain producer and consumer). The in-flow part
is estimated as end-to-end minus two broker hops (HALT in, REJECT out).
Run: ``python -m bench.halt_latency_bench``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import write_results
from dataflows.app import codec_for
from dataflows.control_cli import signed_command
from dataflows.demo import child_env
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis
from dataflows.kafka_io import Publisher, ensure_topics, follow
from dataflows.settings import Settings
from tests.factories import instrument, proposal, tick

CYCLES = 20
NS = 1_000_000_000


def now_ns() -> int:
    """Wall clock in ns (event times follow it, as in a live run)."""
    return time.time_ns()


def stream(settings: Settings, stop: threading.Event) -> None:
    """Ticks and proposals at 200/s with event time = wall clock."""
    pub = Publisher(settings, codec_for(settings))
    pub.send("instruments", "Instrument", instrument(ts_event=now_ns() - NS), "AAPL")
    n = 0
    while not stop.is_set():
        t = now_ns()
        pub.send("ticks", "MarketTick", tick(ts_event=t), "AAPL")
        pub.send(
            "proposals",
            "TradeProposal",
            proposal(proposal_id=f"B-{n}", ts_event=t, quantity=1.0),
            "PF-1",
        )
        n += 1
        time.sleep(0.005)
    pub.flush()


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def broker_latency(settings: Settings, n: int = 200) -> list[float]:
    """Produce-to-consume seconds of the broker alone (the baseline)."""
    topic = settings.topics.prefix + "bench.ping"
    ensure_topics(settings, [topic])
    pub = Publisher(settings, codec_for(settings))
    out: list[float] = []
    listener = follow(settings, topic, from_beginning=False, poll_s=0.001)
    next(listener)  # assigned before the first ping
    for i in range(n):
        sent = time.time()
        pub.producer.produce(topic, str(sent).encode())
        pub.producer.flush()
        for _, value, _ in listener:
            if value is not None:
                out.append(time.time() - float(value.decode()))
                break
        del i
    return out


def main() -> None:
    """Measure and write bench/results/halt_latency.{json,md}."""
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url, metrics_port=0,
            control_keys={"default": "bench-key"},
        )  # fmt: skip
        ensure_topics(settings, settings.topics.all())
        flow = subprocess.Popen(
            [sys.executable, "-m", "dataflows.cli", "run"], env=child_env(settings)
        )
        stop = threading.Event()
        producer = threading.Thread(target=stream, args=(settings, stop), daemon=True)
        producer.start()
        codec = codec_for(settings)
        scores = follow(
            settings, settings.topics.name("scores"), from_beginning=False, poll_s=0.001
        )
        pub = Publisher(settings, codec_for(settings))
        end_to_end: list[float] = []
        try:
            time.sleep(5)  # warm up: the flow is consuming and deciding
            for _ in range(CYCLES):
                halt = signed_command(settings, "HALT", reason="bench")
                sent = time.time()
                pub.send("control", "ControlCommand", halt, "GLOBAL")
                pub.flush()
                for _, value, _ in scores:
                    if value is None:
                        continue
                    r: dict[str, Any] = codec.decode("RiskScore", value)
                    after = r["ts_event"] >= halt["ts_event"]  # not one left from before
                    if after and r["decision"] == "REJECT" and r["trading_state"] == "HALTED":
                        end_to_end.append(time.time() - sent)
                        break
                pub.send("control", "ControlCommand", signed_command(settings, "RESUME"), "GLOBAL")
                pub.flush()
                time.sleep(0.5)
            broker = broker_latency(settings)
        finally:
            stop.set()
            flow.terminate()
            flow.wait(15)
    b50 = statistics.median(broker)
    e50, e99 = statistics.median(end_to_end), percentile(end_to_end, 0.99)
    in_flow = [max(0.0, e - 2 * b50) for e in end_to_end]
    write_results(
        "halt_latency",
        {
            "cycles": CYCLES,
            "end_to_end_p50_s": round(e50, 4),
            "end_to_end_p99_s": round(e99, 4),
            "broker_produce_to_consume_p50_s": round(b50, 4),
            "broker_produce_to_consume_p99_s": round(percentile(broker, 0.99), 4),
            "in_flow_estimate_p50_s": round(statistics.median(in_flow), 4),
            "in_flow_estimate_p99_s": round(percentile(in_flow, 0.99), 4),
            "ratio_end_to_end_p50_to_broker_p50": round(e50 / b50, 2),
            "targets": {"end_to_end_p99_s": 1.0, "in_flow_p99_s": 0.1},
        },
        [
            (
                "HALT produced -> first REJECT consumed, p50 / p99",
                f"{e50 * 1e3:.0f} / {e99 * 1e3:.0f} ms",
            ),
            (
                "broker alone, produce -> consume, p50 / p99",
                f"{b50 * 1e3:.0f} / {percentile(broker, 0.99) * 1e3:.0f} ms",
            ),
            (
                "in flow (end to end - 2 broker hops), p50 / p99",
                f"{statistics.median(in_flow) * 1e3:.0f} / "
                f"{percentile(in_flow, 0.99) * 1e3:.0f} ms",
            ),
            ("targets", "end to end p99 < 1 s; in flow p99 < 100 ms"),
        ],
    )


if __name__ == "__main__":
    main()
