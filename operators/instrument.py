"""Instrument shards: ticks, kernel features at bar closes, and the as-of join of proposals.

Point in time: a proposal at ``T`` is judged on the last tick at or before ``T`` and on the
features of the last bar that ended at or before ``T - lateness`` (such a bar is closed,
whatever the arrival order, once a tick after ``T`` has been seen). Proposals wait until
then: live runs at most ``max_wait_ns`` of wall-clock time (then stale), replays for data.

History: each instrument keeps its ticks and bars back to the proposals' frontier (the
least progress over every proposal partition, and the oldest waiting proposal), at least
``TICK_HISTORY`` ticks and ``BAR_HISTORY`` bars, at most the configured caps. So however
far ticks are read ahead of a proposal partition, its proposals find the state as of
their own time. A *late* proposal (behind its own partition's progress, i.e. more than
the allowed lateness behind an earlier proposal there) is priced as of that progress and
marked stale; one whose tick or bar is no longer held gets no market data, stale. Both
are counted in ``riskstream_instrument_history_misses_total``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import attrgetter

from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.config import EngineConfig
from operators.deadletter import dead_letter
from operators.kernels import BondSpec, FeatureConfig, InstrumentFeatures
from operators.kernels.bars import RUN_CLOSE, RUN_INVALID, RUN_LATE
from operators.kernels.fixed_income import bond_risk
from operators.kernels.history import BarHistory, TickHistory
from operators.kernels.liquidity import quoted_spread_bps
from operators.kernels.validation import INVALID_PRICE, LATE, check_tick
from operators.records import (
    END_OF_TIME,
    PROPOSAL,
    REFERENCE,
    DeadLetterItem,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    Progress,
    Record,
    StateWrite,
    TickBatch,
)
from operators.snapshot import freeze, thaw
from operators.tick_ingest import tick_batch_of

TICK_HISTORY = 4096
"""Ticks every instrument keeps at least (live: proposals behind idle progress use them)."""
BAR_HISTORY = 512
"""Bars every instrument keeps at least."""
NS_PER_DAY = 86_400 * 1_000_000_000

InstrumentOut = PricedProposal | Mark | StateWrite | DeadLetterItem
InstrumentIn = Inbound | TickBatch | Progress
Part = tuple[str, int]


@dataclass
class Pending:
    """A proposal waiting for the ticks up to the time it is priced at."""

    item: Inbound
    deadline_ns: int
    as_of_ns: int
    """Its ts_event, or its partition's progress when it is late."""
    late: bool = False
    seq: int = 0
    """Arrival order at its instrument shard (proposals are released in this order)."""


@dataclass
class InstrumentState:
    """Everything the flow keeps for one instrument; pickles for recovery."""

    features: InstrumentFeatures
    instrument_id: str = ""
    instrument: Record | None = None
    ticks: TickHistory = field(default_factory=lambda: TickHistory(TICK_HISTORY))
    bars: BarHistory = field(default_factory=lambda: BarHistory(BAR_HISTORY))
    watermark: int = -1
    """Largest tick event time seen (-1 before the first tick)."""
    pending: list[Pending] = field(default_factory=list)
    """Proposals waiting for ticks, by ``as_of_ns`` (then arrival)."""

    def add_ticks(self, batch: TickBatch, i0: int) -> tuple[int, int]:
        """Add ticks from ``i0`` on until one closes bars or is rejected, or the end.

        Returns ``(i, code)`` as :meth:`InstrumentFeatures.on_ticks` does; ticks before
        ``i`` are recorded (on RUN_LATE / RUN_INVALID, tick ``i`` is rejected).
        """
        cols = (batch.ts, batch.last, batch.size, batch.bid, batch.ask, batch.yld)
        stop, code, closed = self.features.on_ticks(*cols, i0)
        if stop > i0:
            self.ticks.insert(batch.ts, batch.bid, batch.ask, batch.last, batch.yld, i0, stop)
            self.watermark = max(self.watermark, int(batch.ts[i0:stop].max()))
        if closed:  # bars close in order; features() now describe the newest one
            self.bars.append(closed[-1].end_ns, self.features.bar_features())
        return stop, code

    def evict(self, through: int, lateness_ns: int) -> None:
        """Drop history no view at or after ``through`` needs (the minimums stay)."""
        self.ticks.evict(through)
        self.bars.evict(through - lateness_ns)

    def holds(self, ts: int, lateness_ns: int) -> bool:
        """True when :meth:`view_as_of` at ``ts`` is exact: nothing it needs was dropped."""
        return self.ticks.reaches(ts) and self.bars.reaches(ts - lateness_ns)

    def view_as_of(self, ts: int, lateness_ns: int) -> MarketView:
        """Market state at ``ts``: the last tick at or before it, the last settled bar."""
        features = self.bars.as_of(ts - lateness_ns)
        found = self.ticks.as_of(ts)
        if found is None:
            return MarketView(self.instrument, features=features)
        tick_ts, values = found
        bid, ask, last, yld = (float(x) for x in values)
        features["mid"] = 0.5 * (bid + ask)
        features["quoted_spread_bps"] = quoted_spread_bps(bid, ask)
        features.update(bond_features(self.instrument, ts, yld))
        return MarketView(self.instrument, tick_ts, last, bid, ask, features)


@dataclass
class InstrumentShard:
    """The instruments of one shard key and the proposal partitions' progress."""

    instruments: dict[str, InstrumentState] = field(default_factory=dict)
    proposed: dict[Part, int] = field(default_factory=dict)
    """Per proposal partition: the largest ts_event minus lateness of its proposals so far."""
    idle: dict[Part, int] = field(default_factory=dict)
    """Per proposal partition: progress from idle markers (live wall clock, or the end)."""
    arrivals: int = 0
    """Proposals that arrived so far (``Pending.seq``)."""
    referenced: dict[Part, int] = field(default_factory=dict)
    """Per reference-data partition: no reference record below this can still come."""

    def reference_through(self, parts: tuple[Part, ...]) -> int | None:
        """No reference record below this can still come from ``parts`` (None: unknown)."""
        if not parts or any(part not in self.referenced for part in parts):
            return None
        return min(self.referenced[part] for part in parts)

    def frontier(self, parts: tuple[Part, ...]) -> int | None:
        """No proposal below this can still come from ``parts`` but a late one (None: unknown).

        Unknown while any partition has not reported, or when none is configured.
        """
        if not parts:
            return None
        least = END_OF_TIME
        for part in parts:  # on every batch of every shard: plain comparisons
            data, idle = self.proposed.get(part), self.idle.get(part)
            high = data if idle is None or (data is not None and data >= idle) else idle
            if high is None:
                return None
            if high < least:
                least = high
        return least


def bond_spec(instrument: Record | None) -> BondSpec | None:
    """The bond terms of a reference record (None for anything that is not a fixed-rate bond).

    The schema has no issue date; a schedule generated back from maturity is regular, so
    the issue is taken far enough back not to matter.
    """
    if instrument is None or instrument.get("coupon") is None or not instrument.get("maturity"):
        return None
    maturity = datetime.fromtimestamp(instrument["maturity"] / 1e9, tz=UTC).date()
    return BondSpec(
        coupon=instrument["coupon"],
        maturity=maturity,
        issue=date(maturity.year - 60, maturity.month, min(maturity.day, 28)),
        frequency=instrument.get("coupon_frequency") or 2,
        day_count="ACT/365F" if instrument.get("day_count") == "ACT/365F" else "30/360",
    )


def bond_features(instrument: Record | None, ts: int, yld: float) -> dict[str, float]:
    """Duration, convexity and DV01 at the tick's yield, settling on its UTC date."""
    spec = bond_spec(instrument)
    settle = datetime.fromtimestamp(ts / 1e9, tz=UTC).date()
    if spec is None or not math.isfinite(yld) or settle >= spec.maturity:
        return {}
    risk = bond_risk(spec, settle, yld)
    return {
        "bond_yield": yld,
        "bond_clean_price": risk.clean,
        "bond_mod_duration": risk.modified,
        "bond_mac_duration": risk.macaulay,
        "bond_convexity": risk.convexity,
        "bond_dv01": risk.dv01,
    }


def daily_vol(values: dict[str, float], bars_per_day: float) -> float:
    """Daily volatility: EWMA per-bar volatility (realized until EWMA is warm) x sqrt(bars)."""
    for name in ("ewm_vol_0.94", "rvol_20"):
        vol = values.get(name, math.nan)
        if math.isfinite(vol):
            return vol * math.sqrt(bars_per_day)
    return math.nan


def _now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


def _ref_fields(rec: Record) -> dict[str, str]:
    return {k: str(v) for k, v in rec.items() if v is not None and k != "ts_event"}


class InstrumentLogic(StatefulBatchLogic[InstrumentIn, InstrumentOut, bytes]):
    """One instrument shard key: its instruments' features and proposals' as-of prices.

    History is evicted only behind the proposals' frontier (see the module doc).
    """

    def __init__(self, config: EngineConfig, state: bytes | InstrumentShard | None) -> None:
        self.config = config
        self.bars_per_day = config.bars_per_day or max(1.0, 6.5 * 3600e9 / config.bar_interval_ns)
        self.state = thaw(state, InstrumentShard) if state is not None else InstrumentShard()
        for ist in self.state.instruments.values():  # snapshots of older versions: arrival order
            ist.pending.sort(key=attrgetter("as_of_ns"))
        if not hasattr(self.state, "referenced"):  # snapshots of older versions
            self.state.referenced = {}
        self._frontier = self.state.frontier(config.proposal_parts)
        self._frontier_moved = False
        self.reference_through = self.state.reference_through(config.reference_parts)

    def instrument(self, instrument_id: str) -> InstrumentState:
        """The state of one instrument (new when first seen)."""
        ist = self.state.instruments.get(instrument_id)
        if ist is None:
            cfg = self.config
            features = InstrumentFeatures(
                FeatureConfig(
                    bar_interval_ns=cfg.bar_interval_ns,
                    lateness_ns=cfg.lateness_ns,
                    ewma_lambda=cfg.ewma_lambda,
                )
            )
            ist = InstrumentState(
                features,
                instrument_id,
                ticks=TickHistory(TICK_HISTORY, cfg.tick_history_cap),
                bars=BarHistory(BAR_HISTORY, cfg.bar_history_cap),
            )
            self.state.instruments[instrument_id] = ist
        return ist

    def on_batch(self, values: list[InstrumentIn]) -> tuple[Iterable[InstrumentOut], bool]:
        out: list[InstrumentOut] = []
        touched: dict[str, InstrumentState] = {}
        for item in values:
            if isinstance(item, Progress):
                if self._progress(item):  # reference data: unknown instruments may be answered
                    touched.update(
                        (i, s)
                        for i, s in self.state.instruments.items()
                        if s.pending and s.instrument is None
                    )
                continue
            if isinstance(item, Inbound) and item.kind == "MarketTick":
                item = tick_batch_of(item)
            if isinstance(item, TickBatch):
                ist = touched[item.instrument_id] = self.instrument(item.instrument_id)
                out.extend(self._ticks(ist, item))
                continue
            rec = item.record
            ist = touched[rec["instrument_id"]] = self.instrument(rec["instrument_id"])
            if item.kind == REFERENCE:
                ist.instrument = rec
                for p in ist.pending:  # now they wait for ticks only
                    p.deadline_ns = min(p.deadline_ns, p.item.received_ns + self.config.max_wait_ns)
                out.append(
                    StateWrite(f"reference:{ist.instrument_id}", rec["ts_event"], _ref_fields(rec))
                )
            else:
                pending = self._pending(ist, item)
                if self._complete(ist, pending):
                    out.append(self._priced(ist, pending, stale=False))
                else:
                    bisect.insort(ist.pending, pending, key=attrgetter("as_of_ns"))
        for ist in touched.values():
            if ist.pending:
                out.extend(self._release_complete(ist))
        return out, StatefulBatchLogic.RETAIN

    def _progress(self, item: Progress) -> bool:
        """Progress of a proposal or reference-data partition (True: the reference fence moved).

        Proposal progress comes from the proposals or, apart, from idle markers.
        """
        if item.kind == REFERENCE:
            seen = self.state.referenced
        elif item.kind == PROPOSAL:
            seen = self.state.idle if item.idle else self.state.proposed
        else:
            return False
        for topic, partition, ts in item.parts:
            part = (topic, partition)
            seen[part] = max(seen.get(part, ts), ts)
        if item.kind == REFERENCE:
            before = self.reference_through
            self.reference_through = self.state.reference_through(self.config.reference_parts)
            return self.reference_through != before
        self._frontier_moved = True  # worked out when next needed: a batch has many
        return False

    @property
    def frontier(self) -> int | None:
        """The proposals' frontier (see :meth:`InstrumentShard.frontier`)."""
        if self._frontier_moved:
            self._frontier = self.state.frontier(self.config.proposal_parts)
            self._frontier_moved = False
        return self._frontier

    def _pending(self, ist: InstrumentState, item: Inbound) -> Pending:
        """A proposal to price: as of its ts_event, or of its partition's progress if late.

        Live, it waits ``max_wait_ns`` for its ticks, or ``reference_wait_ns`` while its
        instrument has no reference data.
        """
        ts = item.record["ts_event"]
        floor = self.state.proposed.get((item.source.topic, item.source.partition))
        late = floor is not None and ts < floor
        as_of = floor if late and floor is not None else ts
        self.state.arrivals += 1
        wait = self.config.max_wait_ns
        if ist.instrument is None:
            wait = max(wait, self.config.reference_wait_ns)
        return Pending(item, item.received_ns + wait, as_of, late, self.state.arrivals)

    def _ticks(self, ist: InstrumentState, batch: TickBatch) -> list[InstrumentOut]:
        """Add a batch of ticks: rejected ones are dead-lettered, closed bars give marks."""
        out: list[InstrumentOut] = []
        i = 0
        while i < len(batch):
            i, code = ist.add_ticks(batch, i)
            if code == RUN_CLOSE:
                out.extend(self._bar_outputs(ist, batch.partition()))
            elif code in (RUN_LATE, RUN_INVALID):
                out.append(self._rejected(ist, batch, i, code))
                i += 1
        frontier = self.frontier
        if frontier is not None:
            through = ist.pending[0].as_of_ns if ist.pending else frontier
            ist.evict(min(through, frontier), self.config.lateness_ns)
        return out

    def _rejected(
        self, ist: InstrumentState, batch: TickBatch, i: int, code: int
    ) -> DeadLetterItem:
        ts = int(batch.ts[i])
        if code == RUN_LATE:
            reason = LATE
            why = f"instrument: tick at {ts} is behind the bars closed for {ist.instrument_id!r}"
        else:
            yld = float(batch.yld[i])
            reason = check_tick(
                ts, float(batch.bid[i]), float(batch.ask[i]), float(batch.last[i]),
                float(batch.size[i]), None if math.isnan(yld) else yld,
            ) or INVALID_PRICE  # fmt: skip
            why = f"instrument: {reason}"
        letter = dead_letter(
            batch.source(i), reason, why, "instrument", ts, batch.keys[i], batch.raws[i]
        )
        return DeadLetterItem(letter)

    def _bar_outputs(self, ist: InstrumentState, part: Part) -> list[InstrumentOut]:
        """The mark and the Redis snapshot of the bar that just closed."""
        end = ist.bars.last_end()
        assert end is not None
        values = ist.bars.last()
        vol = daily_vol(values, self.bars_per_day)
        ewm = values.get("ewm_vol_0.94", math.nan)
        mark = Mark(
            ist.instrument_id,
            end,
            values["bar_close"],
            0.0 if math.isnan(vol) else vol,
            spread_bps=values.get("bar_spread_bps", math.nan),
            volume=values.get("bar_volume", 0.0),
            bar_yield=ist.features.last_bar.close_yield if ist.features.last_bar else math.nan,
            log_return=values.get("log_return_1", math.nan),
            ewma_var=ewm * ewm,
            part=part,
        )
        fields = {k: repr(v) for k, v in values.items() if math.isfinite(v)}
        fields["daily_vol"] = repr(vol) if math.isfinite(vol) else "nan"
        return [mark, StateWrite(f"instrument:{ist.instrument_id}", end, fields)]

    def _settled(self, ist: InstrumentState) -> int:
        """Event time before which a proposal has all the data it will get.

        Reference data is known and no tick at or before it can still come; or, for an
        instrument without reference data, no reference record can.
        """
        if ist.instrument is not None:
            return ist.watermark - self.config.lateness_ns
        return -1 if self.reference_through is None else self.reference_through

    def _complete(self, ist: InstrumentState, p: Pending) -> bool:
        return p.as_of_ns < self._settled(ist)

    def _release_complete(self, ist: InstrumentState) -> list[PricedProposal]:
        """Price the complete proposals: a prefix of the pending ones, in arrival order."""
        settled = self._settled(ist)
        n = bisect.bisect_left(ist.pending, settled, key=attrgetter("as_of_ns"))
        done = sorted(ist.pending[:n], key=attrgetter("seq"))
        del ist.pending[:n]
        return [self._priced(ist, p, stale=False) for p in done]

    def _release(
        self, ist: InstrumentState, ready: Callable[[Pending], bool]
    ) -> list[PricedProposal]:
        """Price the proposals ``ready`` says may go, in arrival order."""
        keep: list[Pending] = []
        done: list[Pending] = []
        for p in ist.pending:
            (done if ready(p) else keep).append(p)
        ist.pending = keep
        done.sort(key=attrgetter("seq"))
        return [self._priced(ist, p, not self._complete(ist, p)) for p in done]

    def _priced(self, ist: InstrumentState, p: Pending, stale: bool) -> PricedProposal:
        item, lateness = p.item, self.config.lateness_ns
        held = ist.holds(p.as_of_ns, lateness)
        if held:
            view = ist.view_as_of(p.as_of_ns, lateness)
        else:  # what it needs was dropped: no market data (fail safe), never a wrong tick
            view = MarketView(ist.instrument)
            metrics.HISTORY_MISSES.labels("evicted").inc()
        if p.late:
            metrics.HISTORY_MISSES.labels("late").inc()
        if view.features:
            vol = daily_vol(view.features, self.bars_per_day)
            if math.isfinite(vol):
                view.features["daily_vol"] = vol
        return PricedProposal(
            item.record,
            view,
            item.source,
            item.received_ns,
            stale or p.late or not held,
            item.key,
            item.raw,
            item.orders_in_window,
        )

    def _release_all(self, ready: Callable[[Pending], bool]) -> list[InstrumentOut]:
        out: list[InstrumentOut] = []
        for ist in self.state.instruments.values():
            if ist.pending:
                out.extend(self._release(ist, ready))
        return out

    def on_notify(self) -> tuple[Iterable[InstrumentOut], bool]:
        now = _now_ns()
        return self._release_all(lambda p: p.deadline_ns <= now), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[InstrumentOut], bool]:
        return self._release_all(lambda p: True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.config.wait_for_data:
            return None
        deadline = min(
            (p.deadline_ns for ist in self.state.instruments.values() for p in ist.pending),
            default=None,
        )
        return None if deadline is None else datetime.fromtimestamp(deadline / 1e9, tz=UTC)

    def snapshot(self) -> bytes:
        return freeze(self.state, self.config.recoverable)
