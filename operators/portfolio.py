"""Portfolio shards: books, trading state and limits as of event time, and decisions."""

from __future__ import annotations

import bisect
import json
import logging
import math
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from itertools import repeat
from typing import TypeVar

import numpy as np
from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.checks import STATE_ORDER
from operators.config import EngineConfig, Limits
from operators.control import sign
from operators.deadletter import dead_letter
from operators.decision import BookView, RiskContext, decide
from operators.market import RegimeUpdate, VolForecast
from operators.records import (
    END_OF_TIME,
    AutoControl,
    DeadLetterItem,
    Decided,
    Inbound,
    Mark,
    PricedProposal,
    Progress,
    Record,
    StateWrite,
)
from operators.risk_model import BarReturns, EwmaCovariance
from operators.snapshot import freeze, thaw

log = logging.getLogger(__name__)

AUTO_ISSUER = "riskstream-auto"
"""Issuer of the automatic REDUCE_ONLY commands (read back from risk.control: no-ops)."""

T = TypeVar("T")
HISTORY_BARS = 512
"""Marks, covariance snapshots, forecasts and regimes kept per shard: every one a waiting
proposal may need, and at least this many bars back from the newest (for proposals still
on their way while market data runs ahead of them)."""
DEDUPE_WINDOW = 200_000
ACTION_STATE = {"HALT": "HALTED", "REDUCE_ONLY": "REDUCE_ONLY", "RESUME": "ACTIVE"}

ShardIn = PricedProposal | Mark | Inbound | Progress | RegimeUpdate | VolForecast
ShardOut = Decided | StateWrite | DeadLetterItem | AutoControl


@lru_cache(maxsize=1 << 16)
def shard_key(portfolio_id: str, shards: int) -> str:
    """The shard a portfolio lives in (a stable hash, the same in every process)."""
    return f"shard-{zlib.crc32(portfolio_id.encode()) % shards:03d}"


@cache
def all_shard_keys(shards: int) -> tuple[str, ...]:
    """Every shard key, for broadcasts."""
    return tuple(f"shard-{i:03d}" for i in range(shards))


class TimeLog:
    """Values keyed by event time; ``as_of(ts)`` is the last one at or before ``ts``."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, str]] = []
        self.values: list[object] = []

    def add(self, ts: int, tiebreak: str, value: object) -> None:
        """Insert in (ts, tiebreak) order, so arrival order does not matter.

        A key already present (a redelivered or read-back command) is not added twice.
        """
        i = bisect.bisect_right(self.keys, (ts, tiebreak))
        if i and self.keys[i - 1] == (ts, tiebreak):
            self.values[i - 1] = value
            return
        self.keys.insert(i, (ts, tiebreak))
        self.values.insert(i, value)

    def as_of(self, ts: int, default: object = None) -> object:
        """The value in force at event time ``ts``."""
        i = bisect.bisect_left(self.keys, (ts + 1, ""))
        return self.values[i - 1] if i else default

    def trim(self, cut: int) -> None:
        """Forget values no ``as_of(ts)`` with ``ts >= cut`` can return."""
        i = bisect.bisect_left(self.keys, (cut + 1, "")) - 1  # the one in force at cut
        if i > 0:
            del self.keys[:i], self.values[:i]


def trim_history(entries: deque[T], cut: int, ts: Callable[[T], int]) -> None:
    """Drop the oldest entries while the next one is still at or before ``cut``."""
    while len(entries) > 1 and ts(entries[1]) <= cut:
        entries.popleft()


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to a sum kept as non-overlapping partials (Shewchuk), exactly.

    ``math.fsum(partials)`` is then the correctly rounded sum, whatever order the terms
    came in: books built from fills in any arrival order are bit-identical.
    """
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


@dataclass
class Book:
    """Positions and cash of one portfolio, with the fills needed to look back in time.

    Sums are exact (see ``add_exact``), so the book does not depend on fill arrival order.
    """

    capital: float
    cash_parts: list[float] = field(default_factory=list)
    position_parts: dict[str, list[float]] = field(default_factory=dict)
    fills: list[tuple[int, str, str, float, float, float]] = field(default_factory=list)
    """(ts, execution_id, instrument_id, signed quantity, cash change, cash per unit of
    quantity), sorted by time."""
    current: tuple[float, dict[str, float]] | None = field(default=None, repr=False, compare=False)
    """Cash and positions now, once asked for (``apply`` forgets them)."""
    unit_cash_before: dict[str, float] = field(default_factory=dict)
    """Per instrument, the cash per unit of its last fill forgotten by ``trim``."""

    def __post_init__(self) -> None:
        if not self.cash_parts:
            self.cash_parts = [self.capital]

    def _current(self) -> tuple[float, dict[str, float]]:
        if self.current is None:
            positions = {k: math.fsum(v) for k, v in sorted(self.position_parts.items())}
            self.current = (math.fsum(self.cash_parts), positions)
        return self.current

    @property
    def cash(self) -> float:
        """Cash now."""
        return self._current()[0]

    @property
    def positions(self) -> dict[str, float]:
        """Positions now, by instrument (a copy)."""
        return dict(self._current()[1])

    def apply(self, fill: Record, unit_value: float) -> None:
        """Apply one execution (``unit_value``: the instrument's face value)."""
        qty = fill["quantity"] if fill["side"] == "BUY" else -fill["quantity"]
        unit_cash = fill["price"] * unit_value
        cash = -qty * unit_cash
        inst = fill["instrument_id"]
        add_exact(self.position_parts.setdefault(inst, []), qty)
        add_exact(self.cash_parts, cash)
        self.current = None
        bisect.insort(
            self.fills, (fill["ts_event"], fill["execution_id"], inst, qty, cash, unit_cash)
        )

    def as_of(self, ts: int) -> tuple[float, dict[str, float]]:
        """Cash and positions at event time ``ts`` (later fills undone, exactly)."""
        cut = self._cut(ts)
        if cut == len(self.fills):
            return self.cash, self.positions
        later = self.fills[cut:]
        cash = math.fsum([*self.cash_parts, *(-f[4] for f in later)])
        positions = {}
        for inst, parts in sorted(self.position_parts.items()):
            undo = [-f[3] for f in later if f[2] == inst]
            positions[inst] = math.fsum([*parts, *undo]) if undo else math.fsum(parts)
        return cash, positions

    def last_fill_value(self, instrument_id: str, ts: int) -> float:
        """Cash value of one unit at the last fill at or before ``ts`` (a fallback mark)."""
        for f in reversed(self.fills[: self._cut(ts)]):
            if f[2] == instrument_id:
                return f[5]
        return self.unit_cash_before.get(instrument_id, 0.0)

    def trim(self, cut: int) -> None:
        """Forget the fills before ``cut``: ``as_of(ts)`` for ``ts >= cut`` never undoes them."""
        end = bisect.bisect_left(self.fills, (cut,))
        for f in self.fills[:end]:
            self.unit_cash_before[f[2]] = f[5]
        del self.fills[:end]

    def _cut(self, ts: int) -> int:
        return bisect.bisect_left(self.fills, (ts + 1,))


@dataclass
class Waiting:
    """A proposal waiting at its shard for the inputs it must see."""

    priced: PricedProposal
    deadline_ns: int

    @property
    def order(self) -> tuple[int, str]:
        """Decision order: event time, then proposal id."""
        p = self.priced.proposal
        return p["ts_event"], p["proposal_id"]


@dataclass
class ShardState:
    """Everything one portfolio shard keeps; pickles for recovery."""

    books: dict[str, Book] = field(default_factory=dict)
    references: dict[str, Record] = field(default_factory=dict)
    marks: dict[str, deque[Mark]] = field(default_factory=dict)
    """Bar-close marks per instrument, oldest first (see ``trim``)."""
    states: dict[tuple[str, str], TimeLog] = field(default_factory=dict)
    limits: dict[tuple[str, str, str], TimeLog] = field(default_factory=dict)
    progress: dict[tuple[str, int], int] = field(default_factory=dict)
    held_fills: list[Inbound] = field(default_factory=list)
    """Executions whose instrument has no reference data yet."""
    waiting: list[Waiting] = field(default_factory=list)
    """In decision order (``Waiting.order``)."""
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)
    executed: OrderedDict[str, None] = field(default_factory=OrderedDict)
    decided_upto: int = -1
    """Largest ts_event decided so far: inputs at or before it arrived late."""
    returns: BarReturns = field(default_factory=BarReturns)
    covariance: EwmaCovariance = field(default_factory=EwmaCovariance)
    models: deque[tuple[int, EwmaCovariance]] = field(default_factory=deque)
    """(bar end, covariance model after that bar): the model as of a proposal's time."""
    closed_bars: list[int] = field(default_factory=list)
    """Bar ends the covariance just took in, for the automatic triggers to look at."""
    peaks: dict[str, float] = field(default_factory=dict)
    """Highest portfolio value at a bar close, for the drawdown trigger."""
    regimes: TimeLog = field(default_factory=TimeLog)
    """RegimeUpdate by bar end: the regime as of a proposal's time."""
    vol_forecasts: dict[str, deque[VolForecast]] = field(default_factory=dict)
    forecast_through: dict[str, int] = field(default_factory=dict)
    """Per instrument, the last bar end the market step forecast for (NaN ones too)."""
    first_mark: int = -1
    """Event time of the earliest mark seen (-1 before any)."""

    def forecast_as_of(self, instrument_id: str, ts: int) -> VolForecast | None:
        """The last volatility forecast for an instrument made at or before ``ts``."""
        for f in reversed(self.vol_forecasts.get(instrument_id, ())):
            if f.ts_event <= ts:
                return f
        return None

    @property
    def regime_through(self) -> int:
        """Bar end of the last regime update (-1 before the first)."""
        return self.regimes.keys[-1][0] if self.regimes.keys else -1

    def add_mark(self, mark: Mark) -> None:
        """File a bar-close mark (the covariance takes it in at :meth:`close_bars`)."""
        if self.first_mark < 0 or mark.ts_event < self.first_mark:
            self.first_mark = mark.ts_event
        self.marks.setdefault(mark.instrument_id, deque()).append(mark)
        self.returns.add(mark)

    def close_bars(self, known_through: int, quiet_ns: int | None = None) -> None:
        """Update the covariance with every bar all instruments closed.

        Waits for every instrument with reference data, and only for bars before
        ``known_through`` (all reference data up to it is in), so that no return is left
        out of a bar whatever the arrival order. Live runs (``quiet_ns``) stop waiting for
        an instrument whose last mark is more than ``quiet_ns`` older than the newest mark
        from the same tick partition (never marked: than the first mark of any): a quiet
        instrument must not hold all others. Within a partition ticks are read in order,
        so that holds whatever the read speed; a partition read behind the others (after
        a restart, catching up) is not quiet.
        """
        waited: Iterable[str] = self.references
        if quiet_ns is not None and self.marks:
            newest: dict[tuple[str, int] | None, int] = {}
            for marks in self.marks.values():
                if not marks:
                    continue
                last = marks[-1]
                newest[last.part] = max(newest.get(last.part, last.ts_event), last.ts_event)
            overall = max(newest.values())
            since = self.first_mark if self.first_mark >= 0 else overall
            waited = [
                i
                for i in waited
                if (
                    newest[m[-1].part] - m[-1].ts_event
                    if (m := self.marks.get(i))
                    else overall - since
                )
                <= quiet_ns
            ]
        complete = min(
            (m[-1].ts_event if (m := self.marks.get(i)) else -1 for i in waited), default=-1
        )
        complete = min(complete, known_through - 1)
        for end, returns, priors in self.returns.flush(complete):
            self.covariance.update(end, returns, priors)
            self.models.append((end, self.covariance.snapshot()))
            self.closed_bars.append(end)

    def trim(self, bar_interval_ns: int) -> None:
        """Forget history no waiting proposal needs, beyond ``HISTORY_BARS`` bars back.

        Depends on event times only (what waits, what data came), never on timing: a
        proposal decided later than the market data around it still finds its as-of state.
        """
        newest = self.model_through
        for marks in self.marks.values():
            newest = max(newest, marks[-1].ts_event)
        cut = newest - HISTORY_BARS * bar_interval_ns
        if self.waiting:
            cut = min(cut, self.waiting[0].priced.proposal["ts_event"])
        for marks in self.marks.values():
            trim_history(marks, cut, lambda m: m.ts_event)
        for forecasts in self.vol_forecasts.values():
            trim_history(forecasts, cut, lambda f: f.ts_event)
        trim_history(self.models, cut, lambda m: m[0])
        for log in (self.regimes, *self.states.values(), *self.limits.values()):
            log.trim(cut)
        for book in self.books.values():
            book.trim(cut)

    def model_as_of(self, ts: int) -> EwmaCovariance | None:
        """The covariance model after the last bar that ended at or before ``ts``."""
        for end, model in reversed(self.models):
            if end <= ts:
                return model
        return None

    @property
    def model_through(self) -> int:
        """End of the last bar in the covariance model (-1 before the first)."""
        return self.models[-1][0] if self.models else -1

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
        if not self.limits:  # no SET_LIMIT so far
            return limits
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
        values, exposures = [cash], {}
        own = priced.proposal["instrument_id"]
        for inst, qty in positions.items():
            mark = self.mark_as_of(inst, ts)
            face = self.references[inst]["face_value"]  # known: fills wait for it
            unit_cash = mark.price * face if mark else book.last_fill_value(inst, ts)
            vol = mark.daily_vol if mark else 0.0
            if inst == own and priced.market.last is not None and priced.market.instrument:
                unit_cash = priced.market.last * priced.market.instrument["face_value"]
            values.append(qty * unit_cash)
            if qty:
                exposures[inst] = (qty * unit_cash, vol)
        return BookView(positions.get(own, 0.0), math.fsum(values), exposures)


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
    positions = {k: v for k, v in book.positions.items() if v}
    return StateWrite(
        f"book:{portfolio_id}",
        ts,
        {"cash": repr(book.cash), "positions": json.dumps(positions, sort_keys=True)},
    )


class ShardLogic(StatefulBatchLogic[ShardIn, ShardOut, bytes]):
    """Books, controls and decisions for the portfolios of one shard.

    A proposal is decided once everything it must see has arrived: every fenced control
    and execution partition has progressed past its ts_event, no fill of its portfolio at
    or before it is held for reference data, and (replays) each instrument it holds has
    a mark from the bar before. Live runs stop waiting after ``max_wait_ns`` (stale).
    """

    def __init__(self, config: EngineConfig, state: bytes | ShardState | None) -> None:
        self.config = config
        self.state = thaw(state, ShardState) if state is not None else ShardState()
        if state is not None:
            self._export_trading_states()

    def _export_trading_states(self) -> None:
        """Set the trading-state gauge from restored state (after a restart)."""
        for scope, log in self.state.states.items():
            if log.values:
                metrics.TRADING_STATE.labels(*scope).set(STATE_ORDER[str(log.values[-1])])

    def on_batch(self, values: list[ShardIn]) -> tuple[Iterable[ShardOut], bool]:
        out: list[ShardOut] = []
        st = self.state
        for item in values:
            if isinstance(item, PricedProposal):
                out.extend(self._admit(item))
            elif isinstance(item, Mark):
                st.add_mark(item)
            elif isinstance(item, RegimeUpdate):
                st.regimes.add(item.ts_event, "", item)
            elif isinstance(item, VolForecast):
                iid = item.instrument_id
                st.forecast_through[iid] = max(st.forecast_through.get(iid, -1), item.ts_event)
                if math.isfinite(item.sigma):
                    st.vol_forecasts.setdefault(iid, deque()).append(item)
            elif isinstance(item, Progress):
                for topic, partition, ts in item.parts:
                    part = (topic, partition)
                    st.progress[part] = max(st.progress.get(part, 0), ts)
            elif item.kind == "Instrument":
                st.references[item.record["instrument_id"]] = item.record
                out.extend(self._apply_held_fills())
            elif item.kind == "Execution":
                out.extend(self._execute(item))
            else:
                out.extend(self._control(item))
        if any(isinstance(v, Mark | Progress) for v in values):  # bars may be complete now
            quiet = None if self.config.wait_for_data else self.config.stale_after_ns
            st.close_bars(self._fenced_through(), quiet)
            out.extend(self._auto_triggers())
            st.trim(self.config.bar_interval_ns)
        out.extend(self._release(self._ready, below=self._ready_below()))
        return out, StatefulBatchLogic.RETAIN

    def _admit(self, priced: PricedProposal) -> list[ShardOut]:
        p = priced.proposal
        if not _remember(self.state.answered, p["proposal_id"]):
            letter = dead_letter(
                priced.source,
                "DUPLICATE_PROPOSAL",
                f"decide: proposal {p['proposal_id']!r} was already answered",
                "decide",
                p["ts_event"],
                priced.key,
                priced.raw,
            )
            return [DeadLetterItem(letter)]
        waiting = Waiting(priced, priced.received_ns + self.config.max_wait_ns)
        bisect.insort(self.state.waiting, waiting, key=lambda w: w.order)
        return []

    def _fenced_through(self) -> int:
        """Event time every fenced partition has progressed to (END when none is fenced)."""
        fence = self.config.fence
        return min(map(self.state.progress.get, fence, repeat(0)), default=END_OF_TIME)

    def _ready_below(self) -> int:
        """Event time no ready proposal reaches: the fences and the shared bars.

        ``T`` is decided only once the covariance (and the regime, when the market bars
        come) reached the bar of ``T``; ``_ready`` checks the rest proposal by proposal.
        """
        st, step = self.state, self.config.bar_interval_ns
        below = self._fenced_through()
        if self._bars_flow():
            below = min(below, (st.model_through // step + 1) * step)
            if self._market_bars():
                below = min(below, (st.regime_through // step + 1) * step)
        return below

    def _bars_flow(self) -> bool:
        """Whether proposals wait for the bars: replays always, live runs once marks come.

        Before the first mark a live shard cannot tell a market that has not started from
        one that never will, so it decides at once (with a warming risk model).
        """
        return self.config.wait_for_data or bool(self.state.marks)

    def _market_bars(self) -> bool:
        """Whether the market step will produce regimes (its instruments are all known)."""
        market = self.config.market_ids
        return bool(market) and set(market) <= self.state.references.keys()

    def _ready(self, w: Waiting) -> bool:
        """Every input as of the proposal's time is in: then live and replay decide alike.

        The fences passed it; no fill of its portfolio waits for reference data; the
        covariance, the regime and the volatility forecasts reached its bar, and every
        instrument its book holds has marked that bar. Live runs stop waiting at the
        deadline (the decision is then stale), replays wait for the data.
        """
        st, p = self.state, w.priced.proposal
        ts = p["ts_event"]
        if ts >= self._ready_below():  # the fences, the covariance and the regime
            return False
        pid = p["portfolio_id"]
        if any(
            f.record["portfolio_id"] == pid and f.record["ts_event"] <= ts for f in st.held_fills
        ):
            return False
        if not self._bars_flow():
            return True
        floor = ts - ts % self.config.bar_interval_ns
        bars = self._market_bars()
        held = [i for i, q in st.books[pid].as_of(ts)[1].items() if q] if pid in st.books else []
        for inst in held:
            marks = st.marks.get(inst)
            if inst != p["instrument_id"] and (not marks or marks[-1].ts_event < floor):
                return False
        return not bars or all(
            st.forecast_through.get(i, -1) >= floor for i in {p["instrument_id"], *held}
        )  # and the volatility forecasts of this bar

    def _release(
        self, ready: Callable[[Waiting], bool], below: int = END_OF_TIME + 1
    ) -> list[ShardOut]:
        """Decide, in decision order, the waiting proposals ``ready`` says may go.

        Only those before event time ``below`` are asked (the others stay): proposals wait
        in event-time order, so a fence leaves just a prefix to look at. Those released
        before ``_ready`` holds (deadline, end of input) are stale.
        """
        st = self.state
        if not st.waiting:
            return []
        end = bisect.bisect_left(st.waiting, below, key=lambda w: w.priced.proposal["ts_event"])
        done: list[Waiting] = []
        keep: list[Waiting] = []
        for w in st.waiting[:end]:
            (done if ready(w) else keep).append(w)
        if done:
            st.waiting[:end] = keep
        sure = ready == self._ready
        return [self._decide(w.priced, stale=not (sure or self._ready(w))) for w in done]

    def _decide(self, priced: PricedProposal, stale: bool) -> Decided:
        p = priced.proposal
        ts = p["ts_event"]
        book = self.state.books.get(p["portfolio_id"]) or Book(self.config.portfolio_capital)
        limits = self.state.limits_as_of(self.config.limits, p["portfolio_id"], ts)
        view = self.state.book_view(book, priced)
        context = self._context(p, ts, priced.orders_in_window, view.exposures)
        record = decide(
            p,
            priced.market,
            view,
            self.state.trading_state(p["portfolio_id"], p["instrument_id"], ts),
            limits,
            self.config,
            context,
        )
        self.state.decided_upto = max(self.state.decided_upto, ts)
        now = _now_ns()
        record.update(
            stale=stale or priced.stale,
            source_topic=priced.source.topic,
            source_partition=priced.source.partition,
            source_offset=priced.source.offset,
            ts_decided=now,
            latency_us=(now - priced.received_ns) / 1e3 if priced.received_ns else 0.0,
        )
        return Decided(record, priced.received_ns)

    def _context(self, p: Record, ts: int, orders: int, held: Iterable[str]) -> RiskContext:
        """Covariance, regime and volatility forecasts as of ``ts``.

        Forecasts are those of the proposal's instrument and of the instruments ``held``
        in the book as of ``ts`` (not of fills stamped later, whatever the arrival order).
        """
        st = self.state
        regime = st.regimes.as_of(ts)
        versions: dict[str, str] = {}
        status = ""
        most_likely = None
        if isinstance(regime, RegimeUpdate):
            status = regime.status
            most_likely = regime.most_likely or None
            if regime.version:
                versions["regime_tft"] = regime.version
        day = math.sqrt(self.config.bars_per_day or 1.0)
        vols = {}
        for inst in held:
            if (f := st.forecast_as_of(inst, ts)) is not None and math.isfinite(f.sigma):
                vols[inst] = f.sigma * day
                versions["vol_nbeats"] = f.version
        if (f := st.forecast_as_of(p["instrument_id"], ts)) is not None and math.isfinite(f.sigma):
            vols[p["instrument_id"]] = f.sigma * day
            versions["vol_nbeats"] = f.version
        return RiskContext(
            model=st.model_as_of(ts),
            orders_in_window=orders,
            vols=vols or None,
            regime=most_likely,
            model_versions=versions,
            model_status=status,
        )

    def _auto_triggers(self) -> list[ShardOut]:
        """REDUCE_ONLY for books that fell too far from their peak, or whose VaR is over limit.

        Evaluated at each bar the covariance takes in, in event time: replays trigger at
        the same bars. The command is applied here at once and published for the audit trail.
        """
        st, out = self.state, []
        for end in st.closed_bars:
            for pid in sorted(st.books):
                why = self._breach(pid, end)
                if why and st.trading_state(pid, "", end) == "ACTIVE":
                    out.extend(self._reduce_only(pid, end, why))
        st.closed_bars = []
        return out

    def _breach(self, pid: str, ts: int) -> str | None:
        """Why portfolio ``pid`` must reduce at bar end ``ts`` (None: it need not)."""
        st = self.state
        limits = st.limits_as_of(self.config.limits, pid, ts)
        cash, positions = st.books[pid].as_of(ts)
        values, weights, vols = [cash], {}, {}
        for inst, qty in positions.items():
            mark = st.mark_as_of(inst, ts)
            if not qty or mark is None:
                continue
            notional = qty * mark.price * st.references[inst]["face_value"]
            values.append(notional)
            weights[inst] = notional
            vols[inst] = mark.daily_vol
        value = math.fsum(values)
        peak = st.peaks[pid] = max(st.peaks.get(pid, value), value)
        if peak > 0 and value < peak * (1.0 - limits.max_drawdown):
            return f"drawdown {1 - value / peak:.1%} from peak over {limits.max_drawdown:.0%}"
        model = st.model_as_of(ts)
        ids = sorted(weights)
        if model is not None and ids and all(i in model.index for i in ids):
            sigma = model.vols_for(ids, fallback_vols=vols)
            if np.isfinite(sigma).all():
                corr = model.correlation(ids)
                w = np.array([weights[i] for i in ids]) * sigma
                var = self.config.var_confidence_z * math.sqrt(max(float(w @ corr @ w), 0.0))
                if var > limits.var_limit:
                    return f"portfolio VaR {var:,.0f} over its limit {limits.var_limit:,.0f}"
        return None

    def _reduce_only(self, pid: str, ts: int, why: str) -> list[ShardOut]:
        """Apply an automatic REDUCE_ONLY and sign it for risk.control."""
        command: Record = {
            "command_id": f"auto-{pid}-{ts}",
            "action": "REDUCE_ONLY",
            "scope": "PORTFOLIO",
            "target": pid,
            "limit_name": None,
            "limit_value": None,
            "issuer": AUTO_ISSUER,
            "reason": why,
            "nonce": f"auto-{pid}-{ts}",
            "key_id": next(iter(sorted(self.config.control.keys)), ""),
            "signature": "",
            "ts_event": ts,
        }
        key = self.config.control.keys.get(command["key_id"])
        if key is not None:
            command["signature"] = sign(command, key)
        log = self.state.states.setdefault(("PORTFOLIO", pid), TimeLog())
        log.add(ts, command["command_id"], "REDUCE_ONLY")
        metrics.TRADING_STATE.labels("PORTFOLIO", pid).set(STATE_ORDER["REDUCE_ONLY"])
        fields = {
            "state": "REDUCE_ONLY",
            "command_id": command["command_id"],
            "issuer": AUTO_ISSUER,
        }
        return [AutoControl(command), StateWrite(f"trading_state:PORTFOLIO:{pid}", ts, fields)]

    def _execute(self, fill: Inbound) -> list[ShardOut]:
        r = fill.record
        ref = self.state.references.get(r["instrument_id"])
        if ref is None:
            self.state.held_fills.append(fill)  # applied once its reference data arrives
            return []
        if not _remember(self.state.executed, r["execution_id"]):
            return []  # a redelivered fill is applied once
        self._count_late(r["ts_event"], "Execution", r["execution_id"])
        book = self.state.books.setdefault(r["portfolio_id"], Book(self.config.portfolio_capital))
        book.apply(r, ref["face_value"])
        return [book_write(r["portfolio_id"], book, r["ts_event"])]

    def _apply_held_fills(self) -> list[ShardOut]:
        held, self.state.held_fills = self.state.held_fills, []
        out: list[ShardOut] = []
        for fill in held:
            out.extend(self._execute(fill))
        return out

    def _count_late(self, ts: int, kind: str, ident: str) -> None:
        if ts <= self.state.decided_upto:
            metrics.LATE_INPUTS.labels(kind).inc()
            log.warning(
                "late input: %s %s at ts_event %d arrived after a proposal at %d was decided"
                " (applied from its time on; decisions in between did not see it)",
                kind, ident, ts, self.state.decided_upto,
            )  # fmt: skip

    def _control(self, item: Inbound) -> list[ShardOut]:
        c = item.record
        if c["issuer"] != AUTO_ISSUER:  # ours: applied at its bar by the shard that issued it
            self._count_late(c["ts_event"], "ControlCommand", c["command_id"])
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

    def on_notify(self) -> tuple[Iterable[ShardOut], bool]:
        now = _now_ns()
        return self._release(lambda w: w.deadline_ns <= now or self._ready(w)), self.RETAIN

    def on_eof(self) -> tuple[Iterable[ShardOut], bool]:
        for part in self.config.fence:  # the input ended: nothing more will come
            self.state.progress[part] = END_OF_TIME
        out = self._release(lambda w: True)
        for fill in self.state.held_fills:
            letter = dead_letter(
                fill.source,
                "UNKNOWN_INSTRUMENT",
                f"shard: execution for {fill.record['instrument_id']!r} without reference data",
                "shard",
                fill.record["ts_event"],
                fill.key,
                fill.raw,
            )
            out.append(DeadLetterItem(letter))
        self.state.held_fills = []
        return out, self.RETAIN

    def notify_at(self) -> datetime | None:
        if self.config.wait_for_data or not self.state.waiting:
            return None
        deadline = min(w.deadline_ns for w in self.state.waiting)
        return datetime.fromtimestamp(deadline / 1e9, tz=UTC)

    def snapshot(self) -> bytes:
        return freeze(self.state, self.config.recoverable)
