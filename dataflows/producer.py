"""Sample data for riskstream: a seeded simulated market, or real daily prices.

``riskstream produce`` publishes instruments, ticks, opening fills and trade proposals,
paced in real time (event time follows the wall clock) or as fast as possible.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dataflows.kafka_io import Publisher
from dataflows.settings import Settings
from operators.config import NS
from operators.errors import ConfigError

log = logging.getLogger(__name__)

REAL_DATASETS = ("sp500", "nasdaq")
ROLE = {
    "Instrument": "instruments",
    "MarketTick": "ticks",
    "TradeProposal": "proposals",
    "Execution": "executions",
}
KEY_FIELD = {"Instrument": "instrument_id", "MarketTick": "instrument_id"}


@dataclass(frozen=True)
class ProduceOptions:
    """What to publish and how fast."""

    source: str = "sim"
    tick_rate: float = 2000.0
    proposal_rate: float = 20.0
    portfolios: int = 4
    seed: int = 7
    duration_s: float | None = None
    realtime: bool = True
    bad_every: int = 0
    """Every N-th proposal is sent as undecodable bytes (demonstrates the DLQ); 0: never."""
    quiet_tail_s: float = 0.0
    """Seconds at the end of ``duration_s`` with ticks but no proposals: every proposal is
    followed by the ticks that close its bars (a live flow then waits for no data that
    never comes, and decides as a replay does)."""


def now_ns() -> int:
    """Wall-clock time, UTC epoch nanoseconds."""
    return int(datetime.now(UTC).timestamp() * NS)


def tick_interval_ns(n_instruments: int, tick_rate: float) -> int:
    """A quote interval that divides one second (2^a 5^b ns) near the asked total rate."""
    wanted = n_instruments * NS / tick_rate
    divisors = sorted(2**a * 5**b for a in range(10) for b in range(10) if 2**a * 5**b <= NS)
    fitting = [d for d in divisors if d >= n_instruments]
    return min(fitting, key=lambda d: abs(d - wanted))


def simulated_events(opts: ProduceOptions, start_ns: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, record) of the simulated market from ``start_ns``, in event-time order."""
    from models.simulator import MarketSimulator, merge_by_ts

    start_ns -= start_ns % NS  # bars are whole seconds
    sim = MarketSimulator(seed=opts.seed, start_ns=start_ns)
    for rec in sim.instruments(start_ns - NS):
        yield "Instrument", rec
    for rec in sim.initial_executions(opts.portfolios, ts_event=start_ns):
        yield "Execution", rec
    duration = None if opts.duration_s is None else int(opts.duration_s * NS)
    interval = tick_interval_ns(len(sim.instrument_ids), opts.tick_rate)
    ticks = sim.ticks(start_ns, duration_ns=duration, tick_interval_ns=interval)
    proposal_ns = duration
    if duration is not None and opts.quiet_tail_s:
        proposal_ns = duration - NS - int(opts.quiet_tail_s * NS)  # they start 1 s in
    proposals = sim.proposals(
        opts.portfolios, start_ns=start_ns + NS, rate_per_s=opts.proposal_rate,
        duration_ns=proposal_ns,
    )  # fmt: skip
    tagged = merge_by_ts(ticks, proposals)
    for rec in tagged:
        yield ("TradeProposal" if "proposal_id" in rec else "MarketTick"), rec


def real_events(opts: ProduceOptions) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, record) of real daily prices shipped in a PyPI package, with proposals."""
    from models.datasets import daily_to_records, load_daily

    instrument, ticks = daily_to_records(load_daily(opts.source), opts.source.upper())
    yield "Instrument", instrument
    counter = itertools.count()
    for tick in ticks:
        yield "MarketTick", tick
        n = next(counter)
        if n % 4 == 3:  # one proposal a day, after the close
            yield (
                "TradeProposal",
                {
                    "proposal_id": f"{opts.source.upper()}-{n // 4:06d}",
                    "portfolio_id": f"PF-{(n // 4) % opts.portfolios + 1:03d}",
                    "instrument_id": instrument["instrument_id"],
                    "side": "BUY" if (n // 4) % 3 else "SELL",
                    "quantity": float(1000 * (1 + (n // 4) % 7)),
                    "limit_price": None,
                    "strategy": "rebalance",
                    "ts_event": tick["ts_event"] + 1,
                },
            )


def produce(
    settings: Settings,
    publisher: Publisher,
    opts: ProduceOptions,
    stop: threading.Event,
    tail_s: float = 0.0,
) -> dict[str, int]:
    """Publish the chosen events until they end or ``stop`` is set; counts by kind.

    ``tail_s`` > 0: once ``stop`` is set, the market goes on that many seconds without
    proposals, so that every proposal gets the ticks that close its bars.
    """
    if opts.source == "sim":
        start = now_ns()
        events = simulated_events(opts, start)
    elif opts.source in REAL_DATASETS:
        events, start = real_events(opts), 0
    else:
        raise ConfigError(f"unknown source {opts.source!r}; use sim or one of {REAL_DATASETS}")
    paced = opts.realtime and opts.source == "sim"
    counts: dict[str, int] = {}
    wall0, proposals = time.monotonic(), 0
    ends: float | None = None
    for kind, rec in events:
        if stop.is_set():
            if ends is None:
                ends = time.monotonic() + tail_s
            if time.monotonic() >= ends:
                break
            if kind == "TradeProposal":
                continue
        if paced:
            ahead = (rec["ts_event"] - start) / NS - (time.monotonic() - wall0)
            if ahead > 0.002:
                if tail_s:  # events are ms apart: ``stop`` is seen at the next one
                    time.sleep(ahead)
                elif stop.wait(ahead):
                    break
        if kind == "TradeProposal":
            proposals += 1
            if opts.bad_every and proposals % opts.bad_every == 0:
                topic = settings.topics.name("proposals")
                publisher.producer.produce(topic, b"\x00not-avro:" + rec["proposal_id"].encode())
                counts["Malformed"] = counts.get("Malformed", 0) + 1
                continue
        key = rec[KEY_FIELD.get(kind, "portfolio_id")]
        publisher.send(ROLE[kind], kind, rec, key, event_timestamp=not paced)
        counts[kind] = counts.get(kind, 0) + 1
    publisher.flush()
    return counts


def add_produce_parser(sub: argparse._SubParsersAction) -> None:
    """``riskstream produce``."""
    p = sub.add_parser("produce", help="publish sample instruments, ticks and proposals")
    p.add_argument("--source", default="sim", choices=["sim", *REAL_DATASETS])
    p.add_argument("--tick-rate", type=float, default=2000.0, help="ticks/s (sim)")
    p.add_argument("--proposal-rate", type=float, default=20.0, help="proposals/s (sim)")
    p.add_argument("--portfolios", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", type=float, default=None, help="seconds of event time")
    p.add_argument("--max-speed", action="store_true", help="do not pace by event time")
    p.add_argument(
        "--quiet-tail", type=float, default=0.0, help="last SECONDS of --duration without proposals"
    )
    p.set_defaults(func=cmd_produce)


def options_from(args: argparse.Namespace) -> ProduceOptions:
    """Validated options from the command line."""
    for name in ("tick_rate", "proposal_rate", "portfolios"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be > 0")
    if args.quiet_tail < 0 or (args.quiet_tail and args.duration is None):
        raise ConfigError("--quiet-tail must be >= 0 and needs --duration")
    if args.duration is not None and args.quiet_tail >= args.duration - 1:
        raise ConfigError("--quiet-tail must leave at least 1 s of --duration for proposals")
    return ProduceOptions(
        args.source,
        args.tick_rate,
        args.proposal_rate,
        args.portfolios,
        args.seed,
        args.duration,
        not args.max_speed,
        quiet_tail_s=args.quiet_tail,
    )


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    """Publish sample data to the configured broker."""
    from dataflows.app import codec_for
    from dataflows.kafka_io import ensure_topics

    opts = options_from(args)
    ensure_topics(settings, settings.topics.all())
    stop = threading.Event()
    try:
        counts = produce(settings, Publisher(settings, codec_for(settings)), opts, stop)
    except KeyboardInterrupt:
        stop.set()
        return 130
    print("published " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    return 0
