"""``riskstream demo``: the whole system on one machine, with nothing configured.

Starts (when not configured) an embedded broker and a redis-server, creates the topics,
runs the pre-trade flow as a child process, streams a simulated market with proposals,
fills approved trades, flips the kill switch once, and prints decisions as they arrive.
Ctrl-C (or ``--duration``) stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from dataflows.app import codec_for
from dataflows.console import decision_line, drift_line
from dataflows.control_cli import signed_command
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis, die_with_parent
from dataflows.kafka_io import Publisher, ensure_topics, follow
from dataflows.producer import ProduceOptions, now_ns, produce
from dataflows.settings import Settings
from operators.errors import InfrastructureError

SUMMARY_EVERY_S = 10.0
REPLAY_TAIL_S = 2.0
"""``--verify-replay``: seconds the market ticks on after the last proposal."""


@contextlib.contextmanager
def infrastructure(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at running infrastructure, starting what is not configured."""
    started: list[EmbeddedBroker | EmbeddedRedis] = []
    overrides: dict[str, Any] = {}
    try:
        if not settings.brokers:
            broker = EmbeddedBroker().start()
            started.append(broker)
            overrides["kafka_bootstrap"] = broker.bootstrap
            print(f"started embedded Kafka-compatible broker on {broker.bootstrap}")
        if settings.redis_url is None:
            redis_server = EmbeddedRedis().start()
            started.append(redis_server)
            overrides["redis_url"] = redis_server.url
            print(f"started redis-server on {redis_server.url}")
        if not settings.control_keys:
            overrides["control_keys"] = {"default": secrets.token_hex(32)}
        if settings.bars_per_day is None:
            overrides["bars_per_day"] = 1.0  # the simulator compresses a trading day into a bar
        yield settings.model_copy(update=_coerced(settings, overrides))
    finally:
        for server in reversed(started):
            server.stop()


def _coerced(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    # model_copy does not validate: build the typed values through a validated Settings.
    fields = settings.model_dump() | overrides
    typed = Settings.model_validate(_plain(fields))
    return {k: getattr(typed, k) for k in overrides}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def child_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    env["RUST_BACKTRACE"] = "0"  # Ctrl-C is a normal stop, not a crash to trace
    for name, value in _plain(settings.model_dump()).items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        env[f"RISKSTREAM_{name.upper()}"] = text
    return env


def start_flow(settings: Settings) -> subprocess.Popen[bytes]:
    """``riskstream run`` as a child that dies with this process."""
    return subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run"],
        env=child_env(settings),
        preexec_fn=die_with_parent(),
    )


def wait_ready(proc: subprocess.Popen[bytes], settings: Settings, timeout_s: float = 300.0) -> None:
    """Wait until the flow's ``/readyz`` answers 200 (warmed up, reading, broker and Redis up).

    Fed only then, the demo's first proposals are not a start-up backlog.
    """
    import urllib.request

    if not settings.metrics_port:
        return
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfrastructureError(f"the flow process exited with code {proc.returncode}")
        # not listening yet, or 503 (an HTTPError, an OSError)
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise InfrastructureError(f"the flow was not ready within {timeout_s:.0f} s ({url})")


def stop_flow(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGINT, then SIGKILL if it does not stop within ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Fills(threading.Thread):
    """Fills approved and reduced trades (as a trading system would) so books move."""

    def __init__(self, settings: Settings, seed: int, stop: threading.Event) -> None:
        super().__init__(name="fills", daemon=True)
        from models.simulator import MarketSimulator

        self.settings, self.stop_event = settings, stop
        self.sim = MarketSimulator(seed=seed, start_ns=now_ns() // 10**9 * 10**9)

    def run(self) -> None:
        codec = codec_for(self.settings)
        pub = Publisher(self.settings, codec)
        for _, value, _ in follow(self.settings, self.settings.topics.name("scores")):
            if self.stop_event.is_set():
                break
            if value is None:
                continue
            r = codec.decode("RiskScore", value)
            if r["allowed_quantity"] > 0:
                order = {k: r[k] for k in ("proposal_id", "portfolio_id", "instrument_id", "side")}
                # a fill happens after its decision: stamped now, as a venue would
                ts = max(now_ns(), self.sim.config.start_ns)
                order |= {"ts_event": ts, "limit_price": None}
                fill = self.sim.fill(order, quantity=r["allowed_quantity"])
                pub.send("executions", "Execution", fill, fill["portfolio_id"])
                pub.flush()  # at once: a fill stamped now must not reach the broker late


class KillSwitchDrill(threading.Thread):
    """Halts all trading at ``at_s`` and resumes ``for_s`` later, signed like an officer would."""

    def __init__(
        self, settings: Settings, stop: threading.Event, at_s: float, for_s: float
    ) -> None:
        super().__init__(name="kill-switch-drill", daemon=True)
        self.settings, self.stop_event, self.at_s, self.for_s = settings, stop, at_s, for_s

    def run(self) -> None:
        pub = Publisher(self.settings, codec_for(self.settings))
        for delay, action in ((self.at_s, "HALT"), (self.for_s, "RESUME")):
            if self.stop_event.wait(delay):
                return
            cmd = signed_command(self.settings, action, issuer="demo", reason="kill-switch drill")
            pub.send("control", "ControlCommand", cmd, "GLOBAL")
            pub.flush()
            print(f"\n>>> {action} GLOBAL sent (signed {cmd['command_id']})\n", flush=True)


class DeadLetterCounter(threading.Thread):
    """Counts dead letters by reason code, for the summary lines."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        super().__init__(name="dlq-counter", daemon=True)
        self.settings, self.stop_event = settings, stop
        self.counts: Counter[str] = Counter()

    def run(self) -> None:
        codec = codec_for(self.settings)
        for _, value, _ in follow(self.settings, self.settings.topics.name("dlq")):
            if self.stop_event.is_set():
                return
            if value is not None:
                self.counts[codec.decode("DeadLetter", value)["error_code"]] += 1


class Producer(threading.Thread):
    """The simulated market and order flow (``tail_s``: see :func:`produce`)."""

    def __init__(
        self, settings: Settings, opts: ProduceOptions, stop: threading.Event, tail_s: float = 0.0
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self.settings, self.opts, self.stop_event, self.tail_s = settings, opts, stop, tail_s
        self.counts: dict[str, int] = {}

    def run(self) -> None:
        pub = Publisher(self.settings, codec_for(self.settings))
        self.counts = produce(self.settings, pub, self.opts, self.stop_event, self.tail_s)


def show_decisions(
    settings: Settings,
    stop: threading.Event,
    deadline: float | None,
    dead: Counter[str],
    seen: Counter[str],
) -> None:
    """Print each decision as it arrives (counted in ``seen``), and a summary every few s."""
    codec = codec_for(settings)
    color = sys.stdout.isatty()
    latencies: list[float] = []
    next_summary = time.monotonic() + SUMMARY_EVERY_S
    for _, value, _ in follow(settings, settings.topics.name("scores")):
        now = time.monotonic()
        if stop.is_set() or (deadline is not None and now >= deadline):
            break
        if value is not None:
            r = codec.decode("RiskScore", value)
            seen[r["decision"]] += 1
            latencies.append(r["latency_us"])
            print(decision_line(r, color), flush=True)
        if now >= next_summary:
            next_summary = now + SUMMARY_EVERY_S
            print(summary_line(seen, latencies, dead), flush=True)
            if settings.metrics_port:
                print(f"--- {scrape_drift(settings.metrics_port)} ---", flush=True)
            latencies.clear()


def scrape_drift(port: int) -> str:
    """The drift reading from the flow's own metrics endpoint."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            return drift_line(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return "drift: metrics unavailable"


def drain(settings: Settings, quiet_s: float = 1.5, timeout_s: float = 30.0) -> int:
    """Wait until the live decisions stop coming (every published proposal answered)."""
    from dataflows.diff import read_topic

    topic = settings.topics.name("scores")
    count, since = -1, time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        now = len(read_topic(settings, topic))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.25)
    return count


def verify_replay(settings: Settings, from_ns: int) -> bool:
    """Replay what the demo published and compare it with the live decisions."""
    import tempfile
    from pathlib import Path

    from dataflows.diff import compare, print_report, read_file, read_topic
    from dataflows.replay import ReplayOptions, run_replay

    with tempfile.TemporaryDirectory(prefix="riskstream-demo-") as tmp:
        out = Path(tmp) / "replay.avro"
        opts = ReplayOptions(
            from_ns=from_ns, to_ns=now_ns(), out_file=out, no_redis=True, progress="never"
        )
        summary = run_replay(settings, opts)
        events, decided = summary.text().splitlines()[1:3]
        print(f"replayed the demo's input: {events.strip()}; {decided.strip()}")
        report = compare(
            read_topic(settings, settings.topics.name("scores")),
            read_file(str(out)),
            a_name="live decisions",
            b_name="replay",
        )
    print_report(report, sys.stdout, max_shown=10)
    stale = sum(m.a_stale for m in report.mismatches)
    if stale and stale == len(report.mismatches):
        print(
            f"all {stale} are decisions the live run marked stale: decided at"
            " RISKSTREAM_MAX_WAIT_MS without all their data, which the replay waited for"
        )
    return report.ok


def summary_line(seen: Counter[str], latencies: list[float], dead: Counter[str]) -> str:
    """Counts by decision, dead letters by reason, and the last interval's in-flow latency."""
    lat = sorted(latencies)
    p50 = lat[len(lat) // 2] / 1e3 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3 if lat else float("nan")
    counts = " ".join(f"{k}={seen[k]}" for k in ("APPROVE", "REDUCE", "REJECT"))
    letters = ", ".join(f"{k} {n}" for k, n in sorted(dead.items())) or "none"
    return (
        f"--- decisions: {counts}; dead letters: {letters};"
        f" in-flow latency p50 {p50:.1f} ms, p99 {p99:.1f} ms ---"
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded default end to end until Ctrl-C or ``--duration``."""
    opts = ProduceOptions(
        "sim",
        args.tick_rate,
        args.proposal_rate,
        args.portfolios,
        args.seed,
        None,
        True,
        bad_every=args.bad_every,
    )
    stop = threading.Event()
    with infrastructure(settings) as live:
        ensure_topics(live, live.topics.all())
        flow = start_flow(live)
        print(f"pre-trade flow started (pid {flow.pid}); metrics on :{live.metrics_port}")
        try:
            wait_ready(flow, live)
        except BaseException:
            stop_flow(flow)
            raise
        print("pre-trade flow ready (warmed up, reading); publishing the simulated market")
        published_from = now_ns()
        dead = DeadLetterCounter(live, stop)
        producer = Producer(live, opts, stop, REPLAY_TAIL_S if args.verify_replay else 0.0)
        threads = [producer, Fills(live, args.seed, stop), dead]
        if args.halt_at > 0:
            threads.append(KillSwitchDrill(live, stop, args.halt_at, args.halt_for))
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.duration if args.duration else None
        seen: Counter[str] = Counter()
        try:
            show_decisions(live, stop, deadline, dead.counts, seen)
            if flow.poll() is not None:
                raise InfrastructureError(f"the flow process exited with code {flow.returncode}")
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
        finally:
            stop.set()
            if args.verify_replay:  # the market ticks on without proposals, then all answered
                producer.join(REPLAY_TAIL_S + 5)
                drain(live)
            stop_flow(flow)
            for t in threads:
                t.join(5)
        total = sum(seen.values())
        letters = dict(dead.counts)
        print(f"demo finished: {total} decisions shown ({dict(seen)}), dead letters {letters}")
        same = verify_replay(live, published_from) if args.verify_replay else True
        print("stopped everything it started.")
    return 0 if same else 1


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``riskstream demo``."""
    p = sub.add_parser("demo", help="run everything locally and print decisions live")
    p.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    p.add_argument("--tick-rate", type=float, default=2000.0, help="ticks/s")
    p.add_argument("--proposal-rate", type=float, default=10.0, help="proposals/s")
    p.add_argument("--portfolios", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--halt-at", type=float, default=20.0, help="kill-switch drill after S (0: off)")
    p.add_argument("--halt-for", type=float, default=5.0, help="seconds the drill halts for")
    p.add_argument("--bad-every", type=int, default=200, help="every N-th proposal malformed")
    p.add_argument(
        "--verify-replay",
        action="store_true",
        help="at the end, replay what was published and diff it with the live decisions"
        " (exit 1 on any mismatch)",
    )
    p.set_defaults(func=cmd_demo)
