"""Per-instrument state: ticks, bar features, and the as-of join of proposals."""

from __future__ import annotations

import bisect
import copy
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bytewax.operators import StatefulBatchLogic

from operators.config import EngineConfig
from operators.features import BarFeatures
from operators.records import (
    DeadLetterItem,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    StateWrite,
)

TICK_HISTORY = 1024
BAR_HISTORY = 256

InstrumentOut = PricedProposal | Mark | StateWrite | DeadLetterItem


@dataclass
class Pending:
    """A proposal waiting for ticks up to its ts_event."""

    item: Inbound
    deadline_ns: int


@dataclass
class InstrumentState:
    """Everything the flow keeps for one instrument; pickles for recovery."""

    bars: BarFeatures
    instrument_id: str = ""
    instrument: dict | None = None
    tick_ts: deque[int] = field(default_factory=lambda: deque(maxlen=TICK_HISTORY))
    tick_px: deque[tuple[float, float, float]] = field(
        default_factory=lambda: deque(maxlen=TICK_HISTORY)
    )
    bar_ts: deque[int] = field(default_factory=lambda: deque(maxlen=BAR_HISTORY))
    bar_values: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=BAR_HISTORY))
    pending: list[Pending] = field(default_factory=list)

    @property
    def watermark(self) -> int:
        """Largest tick event time seen (-1 before the first tick)."""
        return self.tick_ts[-1] if self.tick_ts else -1

    def add_tick(self, tick: dict) -> dict[str, float] | None:
        """Record a tick in time order; return bar-close features if a bar closed."""
        ts = tick["ts_event"]
        px = (tick["bid"], tick["ask"], tick["last"])
        if self.tick_ts and ts < self.tick_ts[-1]:
            self._insert_late(ts, px)
            return None
        self.tick_ts.append(ts)
        self.tick_px.append(px)
        closed = self.bars.on_tick(ts, tick["last"], tick["size"])
        if closed is not None:
            self.bar_ts.append(int(closed["bar_close_ts"]))
            self.bar_values.append(closed)
        return closed

    def _insert_late(self, ts: int, px: tuple[float, float, float]) -> None:
        """Keep the tick history sorted when a tick arrives out of order."""
        i = bisect.bisect_right(self.tick_ts, ts)
        if len(self.tick_ts) == TICK_HISTORY:
            if i == 0:
                return  # older than the whole history
            self.tick_ts.popleft()
            self.tick_px.popleft()
            i -= 1
        self.tick_ts.insert(i, ts)
        self.tick_px.insert(i, px)

    def view_as_of(self, ts: int) -> MarketView:
        """Market state at event time ``ts``: the last tick and bar at or before it."""
        i = bisect.bisect_right(self.tick_ts, ts)
        j = bisect.bisect_right(self.bar_ts, ts)
        features = dict(self.bar_values[j - 1]) if j else {}
        if not i:
            return MarketView(self.instrument, features=features)
        bid, ask, last = self.tick_px[i - 1]
        mid = 0.5 * (bid + ask)
        features["spread_bps"] = (ask - bid) / mid * 1e4
        return MarketView(self.instrument, self.tick_ts[i - 1], last, bid, ask, features)


def snapshot_write(instrument_id: str, state: InstrumentState, ts: int) -> StateWrite:
    """Redis write of an instrument's latest features."""
    view = state.view_as_of(ts)
    fields = {k: repr(v) for k, v in view.features.items() if not math.isnan(v)}
    fields.update(last=repr(view.last), bid=repr(view.bid), ask=repr(view.ask))
    return StateWrite(f"instrument:{instrument_id}", ts, fields)


def mark_of(instrument_id: str, state: InstrumentState, values: dict[str, float]) -> Mark:
    """The bar-close mark broadcast to the portfolio shards."""
    unit_value = state.instrument["face_value"] if state.instrument else 1.0
    vol = values["daily_vol"]
    return Mark(
        instrument_id,
        int(values["bar_close_ts"]),
        values["bar_close"],
        unit_value,
        0.0 if math.isnan(vol) else vol,
    )


def _now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


class InstrumentLogic(StatefulBatchLogic[Inbound, InstrumentOut, InstrumentState]):
    """Keeps one instrument's state and answers proposals as of their own ts_event.

    A proposal is released once a tick after its ts_event has been seen, so the state it
    is judged on is complete. Live runs give up after ``max_wait_ns`` of wall-clock time
    and mark the decision stale; replays (``wait_for_data``) wait for data or the end.
    """

    def __init__(self, config: EngineConfig, state: InstrumentState | None) -> None:
        self.config = config
        self.state = state or InstrumentState(
            BarFeatures(config.bar_interval_ns, config.ewma_lambda, config.bars_per_day)
        )

    def on_batch(self, values: list[Inbound]) -> tuple[Iterable[InstrumentOut], bool]:
        out: list[InstrumentOut] = []
        st = self.state
        for item in values:
            rec = item.record
            st.instrument_id = rec["instrument_id"]
            if item.kind == "MarketTick":
                closed = st.add_tick(rec)
                if st.pending:
                    out.extend(self._release(self._complete))
                if closed is not None:
                    out.append(mark_of(self.state.instrument_id, st, closed))
                    out.append(
                        snapshot_write(self.state.instrument_id, st, int(closed["bar_close_ts"]))
                    )
            elif item.kind == "Instrument":
                st.instrument = rec
                out.append(
                    StateWrite(
                        f"reference:{self.state.instrument_id}", rec["ts_event"], _ref_fields(rec)
                    )
                )
                if st.pending:
                    out.extend(self._release(self._complete))
            else:
                pending = Pending(item, item.received_ns + self.config.max_wait_ns)
                if self._complete(pending):
                    out.append(self._priced(item, stale=False))
                else:
                    st.pending.append(pending)
        return out, StatefulBatchLogic.RETAIN

    def _complete(self, p: Pending) -> bool:
        """Reference data is known and a tick after the proposal has been seen."""
        return (
            self.state.instrument is not None and p.item.record["ts_event"] < self.state.watermark
        )

    def _release(self, ready: Callable[[Pending], bool]) -> list[PricedProposal]:
        keep: list[Pending] = []
        done: list[Pending] = []
        for p in self.state.pending:
            (done if ready(p) else keep).append(p)
        self.state.pending = keep
        return [self._priced(p.item, not self._complete(p)) for p in done]

    def _priced(self, item: Inbound, stale: bool) -> PricedProposal:
        view = self.state.view_as_of(item.record["ts_event"])
        return PricedProposal(
            item.record, view, item.source, item.received_ns, stale, item.key, item.raw
        )

    def on_notify(self) -> tuple[Iterable[InstrumentOut], bool]:
        now = _now_ns()
        return self._release(lambda p: p.deadline_ns <= now), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[InstrumentOut], bool]:
        return self._release(lambda p: True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.config.wait_for_data or not self.state.pending:
            return None
        deadline = min(p.deadline_ns for p in self.state.pending)
        return datetime.fromtimestamp(deadline / 1e9, tz=UTC)

    def snapshot(self) -> InstrumentState:
        return copy.deepcopy(self.state)


def _ref_fields(rec: dict) -> dict[str, str]:
    return {k: str(v) for k, v in rec.items() if v is not None and k != "ts_event"}
