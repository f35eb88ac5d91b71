"""Portfolio shards: books, trading state and limits as of event time, and decisions."""

from __future__ import annotations

import bisect
import copy
import json
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.checks import STATE_ORDER
from operators.config import EngineConfig, Limits
from operators.deadletter import dead_letter
from operators.decision import BookView, decide
from operators.records import (
    DeadLetterItem,
    Decided,
    Inbound,
    Mark,
    PricedExecution,
    PricedProposal,
    StateWrite,
)

MARK_HISTORY = 16
DEDUPE_WINDOW = 200_000
ACTION_STATE = {"HALT": "HALTED", "REDUCE_ONLY": "REDUCE_ONLY", "RESUME": "ACTIVE"}

ShardIn = PricedProposal | PricedExecution | Mark | Inbound
ShardOut = Decided | StateWrite | DeadLetterItem


def shard_key(portfolio_id: str, shards: int) -> str:
    """The shard a portfolio lives in (a stable hash, the same in every process)."""
    return f"shard-{zlib.crc32(portfolio_id.encode()) % shards:03d}"


def all_shard_keys(shards: int) -> list[str]:
    """Every shard key, for broadcasts."""
    return [f"shard-{i:03d}" for i in range(shards)]


class TimeLog:
    """Values keyed by event time; ``as_of(ts)`` is the last one at or before ``ts``."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, str]] = []
        self.values: list[object] = []

    def add(self, ts: int, tiebreak: str, value: object) -> None:
        """Insert in (ts, tiebreak) order, so arrival order does not matter."""
        i = bisect.bisect_right(self.keys, (ts, tiebreak))
        self.keys.insert(i, (ts, tiebreak))
        self.values.insert(i, value)

    def as_of(self, ts: int, default: object = None) -> object:
        """The value in force at event time ``ts``."""
        i = bisect.bisect_right(self.keys, (ts, "\uffff"))
        return self.values[i - 1] if i else default


@dataclass
class Book:
    """Positions and cash of one portfolio, with the fills needed to look back in time."""

    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    last_fill: dict[str, tuple[float, float]] = field(default_factory=dict)
    """instrument_id -> (price, unit value) of the latest fill, a fallback mark."""
    fills: list[tuple[int, str, str, float, float]] = field(default_factory=list)
    """(ts, execution_id, instrument_id, signed quantity, cash change), sorted by time."""

    def apply(self, fill: PricedExecution) -> None:
        """Apply one execution."""
        r = fill.record
        qty = r["quantity"] if r["side"] == "BUY" else -r["quantity"]
        cash = -qty * r["price"] * fill.unit_value
        self.positions[r["instrument_id"]] = self.positions.get(r["instrument_id"], 0.0) + qty
        self.cash += cash
        self.last_fill[r["instrument_id"]] = (r["price"], fill.unit_value)
        bisect.insort(self.fills, (r["ts_event"], r["execution_id"], r["instrument_id"], qty, cash))

    def as_of(self, ts: int) -> tuple[float, dict[str, float]]:
        """Cash and positions at event time ``ts`` (later fills undone)."""
        cash, positions = self.cash, dict(self.positions)
        i = bisect.bisect_right(self.fills, (ts, "\uffff"))
        for _, _, inst, qty, dcash in self.fills[i:]:
            positions[inst] -= qty
            cash -= dcash
        return cash, positions


@dataclass
class ShardState:
    """Everything one portfolio shard keeps; pickles for recovery."""

    books: dict[str, Book] = field(default_factory=dict)
    marks: dict[str, deque[Mark]] = field(default_factory=dict)
    states: dict[tuple[str, str], TimeLog] = field(default_factory=dict)
    limits: dict[tuple[str, str, str], TimeLog] = field(default_factory=dict)
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)
    executed: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def mark_as_of(self, instrument_id: str, ts: int) -> Mark | None:
        """The last bar-close mark at or before ``ts``."""
        for mark in reversed(self.marks.get(instrument_id, ())):
            if mark.ts_event <= ts:
                return mark
        return None

    def trading_state(self, portfolio_id: str, instrument_id: str, ts: int) -> str:
        """The strictest of the GLOBAL, PORTFOLIO and INSTRUMENT states at ``ts``."""
        scopes = (("GLOBAL", ""), ("PORTFOLIO", portfolio_id), ("INSTRUMENT", instrument_id))
        found = [
            str(log.as_of(ts, "ACTIVE")) for s in scopes if (log := self.states.get(s)) is not None
        ]
        return max(found, key=STATE_ORDER.__getitem__, default="ACTIVE")

    def limits_as_of(self, base: Limits, portfolio_id: str, ts: int) -> Limits:
        """Configured limits with GLOBAL then PORTFOLIO ``SET_LIMIT`` overrides at ``ts``."""
        limits = base
        for scope, target in (("GLOBAL", ""), ("PORTFOLIO", portfolio_id)):
            for name in Limits.names():
                log = self.limits.get((scope, target, name))
                value = log.as_of(ts) if log is not None else None
                if value is not None:
                    limits = limits.with_value(name, float(value))  # type: ignore[arg-type]
        return limits

    def book_view(self, book: Book, priced: PricedProposal) -> BookView:
        """The proposal's portfolio at its ts_event, marked to market."""
        ts = priced.proposal["ts_event"]
        cash, positions = book.as_of(ts)
        value, exposures = cash, {}
        own = priced.proposal["instrument_id"]
        for inst, qty in positions.items():
            mark = self.mark_as_of(inst, ts)
            price, unit = (mark.price, mark.unit_value) if mark else book.last_fill[inst]
            vol = mark.daily_vol if mark else 0.0
            if inst == own and priced.market.last is not None and priced.market.instrument:
                price, unit = priced.market.last, priced.market.instrument["face_value"]
            value += qty * price * unit
            if qty:
                exposures[inst] = (qty * price * unit, vol)
        return BookView(positions.get(own, 0.0), value, exposures)


def _remember(seen: OrderedDict[str, None], key: str) -> bool:
    """Record ``key``; False if it was already there."""
    if key in seen:
        return False
    seen[key] = None
    if len(seen) > DEDUPE_WINDOW:
        seen.popitem(last=False)
    return True


def _now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


def book_write(portfolio_id: str, book: Book, ts: int) -> StateWrite:
    """Redis write of a portfolio's book."""
    positions = {k: v for k, v in sorted(book.positions.items()) if v}
    return StateWrite(
        f"book:{portfolio_id}",
        ts,
        {"cash": repr(book.cash), "positions": json.dumps(positions, sort_keys=True)},
    )


class ShardLogic(StatefulBatchLogic[ShardIn, ShardOut, ShardState]):
    """Books, controls and decisions for the portfolios of one shard."""

    def __init__(self, config: EngineConfig, state: ShardState | None) -> None:
        self.config = config
        self.state = state or ShardState()

    def on_batch(self, values: list[ShardIn]) -> tuple[Iterable[ShardOut], bool]:
        out: list[ShardOut] = []
        for item in values:
            if isinstance(item, PricedProposal):
                out.append(self._decide(item))
            elif isinstance(item, PricedExecution):
                out.extend(self._execute(item))
            elif isinstance(item, Mark):
                self.state.marks.setdefault(item.instrument_id, deque(maxlen=MARK_HISTORY)).append(
                    item
                )
            else:
                out.extend(self._control(item))
        return out, StatefulBatchLogic.RETAIN

    def _decide(self, priced: PricedProposal) -> ShardOut:
        p = priced.proposal
        if not _remember(self.state.answered, p["proposal_id"]):
            return DeadLetterItem(
                dead_letter(
                    priced.source,
                    "DUPLICATE_PROPOSAL",
                    f"proposal {p['proposal_id']!r} was already answered",
                    "decide",
                    p["ts_event"],
                    priced.key,
                    priced.raw,
                )
            )
        book = self.state.books.get(p["portfolio_id"]) or Book(self.config.portfolio_capital)
        ts = p["ts_event"]
        record = decide(
            p,
            priced.market,
            self.state.book_view(book, priced),
            self.state.trading_state(p["portfolio_id"], p["instrument_id"], ts),
            self.state.limits_as_of(self.config.limits, p["portfolio_id"], ts),
            self.config,
        )
        now = _now_ns()
        record.update(
            stale=priced.stale,
            source_topic=priced.source.topic,
            source_partition=priced.source.partition,
            source_offset=priced.source.offset,
            ts_decided=now,
            latency_us=(now - priced.received_ns) / 1e3 if priced.received_ns else 0.0,
        )
        return Decided(record, priced.received_ns)

    def _execute(self, fill: PricedExecution) -> list[ShardOut]:
        r = fill.record
        if not _remember(self.state.executed, r["execution_id"]):
            return []  # a redelivered fill is applied once
        book = self.state.books.setdefault(r["portfolio_id"], Book(self.config.portfolio_capital))
        book.apply(fill)
        return [book_write(r["portfolio_id"], book, r["ts_event"])]

    def _control(self, item: Inbound) -> list[ShardOut]:
        c = item.record
        scope = (c["scope"], c["target"] if c["scope"] != "GLOBAL" else "")
        if c["action"] == "SET_LIMIT":
            log = self.state.limits.setdefault((*scope, c["limit_name"]), TimeLog())
            log.add(c["ts_event"], c["command_id"], c["limit_value"])
            return []
        state = ACTION_STATE[c["action"]]
        log = self.state.states.setdefault(scope, TimeLog())
        log.add(c["ts_event"], c["command_id"], state)
        metrics.TRADING_STATE.labels(*scope).set(STATE_ORDER[str(log.values[-1])])
        fields = {"state": state, "command_id": c["command_id"], "issuer": c["issuer"]}
        return [StateWrite(f"trading_state:{scope[0]}:{scope[1]}", c["ts_event"], fields)]

    def snapshot(self) -> ShardState:
        return copy.deepcopy(self.state)
