"""Per-instrument state: ticks, kernel features at bar closes, and the as-of join of proposals.

Point in time: a proposal at ``T`` is judged on the last tick at or before ``T`` and on the
features of the last bar that ended at or before ``T - lateness`` (such a bar is closed,
whatever the arrival order, once a tick after ``T`` has been seen). Proposals wait until
then: live runs at most ``max_wait_ns`` of wall-clock time (then stale), replays for data.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from bytewax.operators import StatefulBatchLogic

from operators.config import EngineConfig
from operators.deadletter import dead_letter
from operators.kernels import BondSpec, FeatureConfig, InstrumentFeatures
from operators.kernels.bars import RUN_CLOSE, RUN_INVALID, RUN_LATE
from operators.kernels.fixed_income import bond_risk
from operators.kernels.history import TickHistory
from operators.kernels.liquidity import quoted_spread_bps
from operators.kernels.validation import INVALID_PRICE, LATE, check_tick
from operators.records import (
    DeadLetterItem,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    Record,
    StateWrite,
    TickBatch,
)
from operators.snapshot import freeze, thaw
from operators.tick_ingest import tick_batch_of

TICK_HISTORY = 4096
BAR_HISTORY = 512
NS_PER_DAY = 86_400 * 1_000_000_000

InstrumentOut = PricedProposal | Mark | StateWrite | DeadLetterItem


@dataclass
class Pending:
    """A proposal waiting for the ticks up to its ts_event."""

    item: Inbound
    deadline_ns: int


@dataclass
class InstrumentState:
    """Everything the flow keeps for one instrument; pickles for recovery."""

    features: InstrumentFeatures
    instrument_id: str = ""
    instrument: Record | None = None
    ticks: TickHistory = field(default_factory=lambda: TickHistory(TICK_HISTORY))
    bar_ts: deque[int] = field(default_factory=lambda: deque(maxlen=BAR_HISTORY))
    bar_values: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=BAR_HISTORY))
    watermark: int = -1
    """Largest tick event time seen (-1 before the first tick)."""
    pending: list[Pending] = field(default_factory=list)

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
            self.bar_ts.append(closed[-1].end_ns)
            self.bar_values.append(self.features.bar_features())
        return stop, code

    def view_as_of(self, ts: int, lateness_ns: int) -> MarketView:
        """Market state at ``ts``: the last tick at or before it, the last settled bar."""
        j = bisect.bisect_right(self.bar_ts, ts - lateness_ns)
        features = (
            {k: v for k, v in self.bar_values[j - 1].items() if math.isfinite(v)} if j else {}
        )
        found = self.ticks.as_of(ts)
        if found is None:
            return MarketView(self.instrument, features=features)
        tick_ts, values = found
        bid, ask, last, yld = (float(x) for x in values)
        features["mid"] = 0.5 * (bid + ask)
        features["quoted_spread_bps"] = quoted_spread_bps(bid, ask)
        features.update(bond_features(self.instrument, ts, yld))
        return MarketView(self.instrument, tick_ts, last, bid, ask, features)


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


class InstrumentLogic(StatefulBatchLogic[Inbound | TickBatch, InstrumentOut, bytes]):
    """Keeps one instrument's features and answers proposals as of their own ts_event."""

    def __init__(self, config: EngineConfig, state: bytes | InstrumentState | None) -> None:
        self.config = config
        self.bars_per_day = config.bars_per_day or max(1.0, 6.5 * 3600e9 / config.bar_interval_ns)
        self.state = (
            thaw(state, InstrumentState)
            if state is not None
            else InstrumentState(
                InstrumentFeatures(
                    FeatureConfig(
                        bar_interval_ns=config.bar_interval_ns,
                        lateness_ns=config.lateness_ns,
                        ewma_lambda=config.ewma_lambda,
                    )
                )
            )
        )

    def on_batch(self, values: list[Inbound | TickBatch]) -> tuple[Iterable[InstrumentOut], bool]:
        out: list[InstrumentOut] = []
        st = self.state
        for item in values:
            if isinstance(item, Inbound) and item.kind == "MarketTick":
                item = tick_batch_of(item)
            if isinstance(item, TickBatch):
                st.instrument_id = item.instrument_id
                out.extend(self._ticks(item))
                continue
            rec = item.record
            st.instrument_id = rec["instrument_id"]
            if item.kind == "Instrument":
                st.instrument = rec
                out.append(
                    StateWrite(f"reference:{st.instrument_id}", rec["ts_event"], _ref_fields(rec))
                )
            else:
                pending = Pending(item, item.received_ns + self.config.max_wait_ns)
                if self._complete(pending):
                    out.append(self._priced(item, stale=False))
                else:
                    st.pending.append(pending)
        if st.pending:
            out.extend(self._release(self._complete))
        return out, StatefulBatchLogic.RETAIN

    def _ticks(self, batch: TickBatch) -> list[InstrumentOut]:
        """Add a batch of ticks: rejected ones are dead-lettered, closed bars give marks."""
        out: list[InstrumentOut] = []
        i = 0
        while i < len(batch):
            i, code = self.state.add_ticks(batch, i)
            if code == RUN_CLOSE:
                out.extend(self._bar_outputs())
            elif code in (RUN_LATE, RUN_INVALID):
                out.append(self._rejected(batch, i, code))
                i += 1
        return out

    def _rejected(self, batch: TickBatch, i: int, code: int) -> DeadLetterItem:
        st = self.state
        ts = int(batch.ts[i])
        if code == RUN_LATE:
            reason = LATE
            why = f"instrument: tick at {ts} is behind the bars closed for {st.instrument_id!r}"
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

    def _bar_outputs(self) -> list[InstrumentOut]:
        """The mark and the Redis snapshot of the bar that just closed."""
        st = self.state
        end = st.bar_ts[-1]
        values = st.bar_values[-1]
        vol = daily_vol(values, self.bars_per_day)
        ewm = values.get("ewm_vol_0.94", math.nan)
        mark = Mark(
            st.instrument_id,
            end,
            values["bar_close"],
            0.0 if math.isnan(vol) else vol,
            spread_bps=values.get("bar_spread_bps", math.nan),
            volume=values.get("bar_volume", 0.0),
            bar_yield=st.features.last_bar.close_yield if st.features.last_bar else math.nan,
            log_return=values.get("log_return_1", math.nan),
            ewma_var=ewm * ewm,
        )
        fields = {k: repr(v) for k, v in values.items() if math.isfinite(v)}
        fields["daily_vol"] = repr(vol) if math.isfinite(vol) else "nan"
        return [mark, StateWrite(f"instrument:{st.instrument_id}", end, fields)]

    def _complete(self, p: Pending) -> bool:
        """Reference data is known and no tick at or before the proposal can still come."""
        st = self.state
        settled = st.watermark - self.config.lateness_ns
        return st.instrument is not None and p.item.record["ts_event"] < settled

    def _release(self, ready: Callable[[Pending], bool]) -> list[PricedProposal]:
        keep: list[Pending] = []
        done: list[Pending] = []
        for p in self.state.pending:
            (done if ready(p) else keep).append(p)
        self.state.pending = keep
        return [self._priced(p.item, not self._complete(p)) for p in done]

    def _priced(self, item: Inbound, stale: bool) -> PricedProposal:
        view = self.state.view_as_of(item.record["ts_event"], self.config.lateness_ns)
        if view.features:
            vol = daily_vol(view.features, self.bars_per_day)
            if math.isfinite(vol):
                view.features["daily_vol"] = vol
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

    def snapshot(self) -> bytes:
        return freeze(self.state)
