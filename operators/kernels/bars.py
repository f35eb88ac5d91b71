"""Event-time bars with allowed lateness; out-of-order input gives the same bars as sorted input.

A tick at ``ts`` belongs to the bar ``[start, start + interval)`` with
``start = ts - ts % interval``. With ``max_ts`` the largest event time accepted so far and
``watermark = max_ts - lateness``:

* a tick whose bar is still open (``end + lateness > max_ts``) updates that bar;
* a tick for a bar that has closed is rejected with reason ``LATE`` (the caller counts it and
  dead-letters it); so are ticks for bars already returned by :meth:`BarBuilder.flush`;
* bars close, in start order, as soon as ``watermark >= end``; bars without ticks are not made.

Every bar field is independent of arrival order: open / close are the prices of the smallest /
largest ``(ts, price, size)``, high / low are max / min, and the sums (volume, notional, spreads)
are kept exactly (Shewchuk's non-overlapping partials, rounded once with ``math.fsum`` at close),
so any permutation of the same ticks gives bit-identical bars.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from operators.kernels.rolling import KernelState
from operators.kernels.validation import LATE, check_tick

_NSUMS = 5  # volume, notional, spread, spread_bps, eff_spread_bps
_MAXPARTS = 48  # finite doubles never need more than ~40 non-overlapping partials
_INF = math.inf


class Bar(NamedTuple):
    """One closed event-time bar (prices in the instrument's currency)."""

    start_ns: int
    end_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float  # sum of sizes
    notional: float  # sum of price * size
    vwap: float  # notional / volume; NaN when volume is 0
    spread_mean: float  # mean of ask - bid
    spread_bps_mean: float  # mean quoted spread, bps of mid
    eff_spread_bps_mean: float  # mean effective spread 2|price - mid| / mid, bps
    ticks: int
    close_yield: float  # yield of the latest tick that carried one; NaN if none


class AddResult(NamedTuple):
    """Outcome of :meth:`BarBuilder.add`: bars closed by this tick, late flag, reason code."""

    closed: tuple[Bar, ...]
    late: bool
    reason: str | None  # None when accepted; LATE or a validation code otherwise


_NO_BARS: tuple[Bar, ...] = ()
_ACCEPTED = AddResult(_NO_BARS, False, None)
_LATE = AddResult(_NO_BARS, True, LATE)

# Integer state of an open bar: tick count, event times of the open / close / yield ticks,
# then the number of partials of each exact sum.
_TICKS, _OPEN_TS, _CLOSE_TS, _YLD_TS, _NP = 0, 1, 2, 3, 4
# Float state: open / close (price, size), high, low, yield tick (price, size, yield).
_OPEN_P, _OPEN_S, _CLOSE_P, _CLOSE_S, _HIGH, _LOW, _YLD_P, _YLD_S, _YLD = range(9)


@njit(cache=True)
def _grow(parts: np.ndarray, iv: np.ndarray, row: int, x: float) -> None:
    """Add ``x`` exactly to the non-overlapping partials of ``row`` (Shewchuk / msum)."""
    i = 0
    for j in range(iv[_NP + row]):
        y = parts[row, j]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            parts[row, i] = lo
            i += 1
        x = hi
    parts[row, i] = x
    iv[_NP + row] = i + 1


@njit(cache=True)
def _key_less(ts1: int, p1: float, s1: float, ts2: int, p2: float, s2: float) -> bool:
    """Lexicographic ``(ts1, p1, s1) < (ts2, p2, s2)``."""
    if ts1 != ts2:
        return ts1 < ts2
    if p1 != p2:
        return p1 < p2
    return s1 < s2


@njit(cache=True)
def bar_add_tick(
    iv: np.ndarray,
    fv: np.ndarray,
    parts: np.ndarray,
    ts: int,
    price: float,
    size: float,
    bid: float,
    ask: float,
    yld: float,
) -> None:
    """Add one validated tick to an open bar (``yld`` NaN: the tick carries no yield)."""
    if iv[_TICKS] == 0 or _key_less(ts, price, size, iv[_OPEN_TS], fv[_OPEN_P], fv[_OPEN_S]):
        iv[_OPEN_TS] = ts
        fv[_OPEN_P] = price
        fv[_OPEN_S] = size
    if iv[_TICKS] == 0 or _key_less(iv[_CLOSE_TS], fv[_CLOSE_P], fv[_CLOSE_S], ts, price, size):
        iv[_CLOSE_TS] = ts
        fv[_CLOSE_P] = price
        fv[_CLOSE_S] = size
    if yld == yld:
        newer = fv[_YLD] != fv[_YLD]
        if not newer:
            if ts != iv[_YLD_TS] or price != fv[_YLD_P] or size != fv[_YLD_S]:
                newer = _key_less(iv[_YLD_TS], fv[_YLD_P], fv[_YLD_S], ts, price, size)
            else:
                newer = fv[_YLD] < yld
        if newer:
            iv[_YLD_TS] = ts
            fv[_YLD_P] = price
            fv[_YLD_S] = size
            fv[_YLD] = yld
    if iv[_TICKS] == 0 or price > fv[_HIGH]:
        fv[_HIGH] = price
    if iv[_TICKS] == 0 or price < fv[_LOW]:
        fv[_LOW] = price
    iv[_TICKS] += 1
    mid = 0.5 * (bid + ask)
    _grow(parts, iv, 0, size)
    _grow(parts, iv, 1, price * size)
    _grow(parts, iv, 2, ask - bid)
    _grow(parts, iv, 3, 1e4 * (ask - bid) / mid)
    _grow(parts, iv, 4, 2e4 * abs(price - mid) / mid)


class _OpenBar:
    __slots__ = ("fv", "iv", "parts")

    def __init__(self) -> None:
        self.iv = np.zeros(_NP + _NSUMS, dtype=np.int64)
        self.fv = np.full(9, np.nan)
        self.parts = np.zeros((_NSUMS, _MAXPARTS))

    def finish(self, start: int, interval: int) -> Bar:
        iv, fv = self.iv, self.fv
        sums = [math.fsum(self.parts[i, : iv[_NP + i]]) for i in range(_NSUMS)]
        volume, notional = sums[0], sums[1]
        n = int(iv[_TICKS])
        return Bar(
            start_ns=start,
            end_ns=start + interval,
            open=float(fv[_OPEN_P]),
            high=float(fv[_HIGH]),
            low=float(fv[_LOW]),
            close=float(fv[_CLOSE_P]),
            volume=volume,
            notional=notional,
            vwap=notional / volume if volume > 0.0 else math.nan,
            spread_mean=sums[2] / n,
            spread_bps_mean=sums[3] / n,
            eff_spread_bps_mean=sums[4] / n,
            ticks=n,
            close_yield=float(fv[_YLD]),
        )


class BarBuilder(KernelState):
    """Aggregate ticks into event-time bars of ``interval_ns`` with ``lateness_ns`` allowed."""

    __slots__ = (
        "_closed_until",
        "_first_start",
        "_max_ts",
        "_open",
        "interval_ns",
        "lateness_ns",
    )

    def __init__(self, interval_ns: int, lateness_ns: int = 0) -> None:
        if interval_ns <= 0 or lateness_ns < 0:
            raise ValueError(
                f"BarBuilder: need interval_ns > 0 and lateness_ns >= 0, "
                f"got {interval_ns} and {lateness_ns}"
            )
        self.interval_ns = int(interval_ns)
        self.lateness_ns = int(lateness_ns)
        self._open: dict[int, _OpenBar] = {}
        self._max_ts: int | None = None
        self._closed_until: int | None = None  # bars starting before this are closed
        self._first_start: int | None = None  # earliest open bar

    @property
    def name(self) -> str:
        """Name carrying the parameters, e.g. ``bars_60000000000_5000000000``."""
        return f"bars_{self.interval_ns}_{self.lateness_ns}"

    @property
    def max_ts(self) -> int | None:
        """Largest event time accepted so far."""
        return self._max_ts

    @property
    def watermark(self) -> int | None:
        """``max_ts - lateness``: every bar ending at or before it is closed."""
        return None if self._max_ts is None else self._max_ts - self.lateness_ns

    @property
    def open_bars(self) -> int:
        """Number of bars still open."""
        return len(self._open)

    def add(
        self,
        ts_ns: int,
        price: float,
        size: float,
        bid: float,
        ask: float,
        yld: float | None = None,
    ) -> AddResult:
        """Add one tick; return the bars it closes (start order), the late flag and a reason."""
        # Fast path for the common valid tick; NaN fails every comparison.
        if not (
            0.0 < price < _INF
            and 0.0 < bid <= ask < _INF
            and 0.0 <= size < _INF
            and (yld is None or -1.0 < yld < _INF)
            and isinstance(ts_ns, int)
        ):
            reason = check_tick(ts_ns, bid, ask, price, size, yld)
            if reason is not None:
                return AddResult(_NO_BARS, False, reason)
        ts = int(ts_ns)
        interval = self.interval_ns
        start = ts - ts % interval
        max_ts = self._max_ts
        if max_ts is not None and (
            start + interval + self.lateness_ns <= max_ts
            or (self._closed_until is not None and start < self._closed_until)
        ):
            return _LATE
        bar = self._open.get(start)
        if bar is None:
            bar = self._open[start] = _OpenBar()
            if self._first_start is None or start < self._first_start:
                self._first_start = start
        bar_add_tick(
            bar.iv, bar.fv, bar.parts, ts, price, size, bid, ask, math.nan if yld is None else yld
        )
        if max_ts is None or ts > max_ts:
            self._max_ts = ts
            first = self._first_start
            if first is not None and first + interval + self.lateness_ns <= ts:
                return AddResult(self._close_until(ts - self.lateness_ns), False, None)
        return _ACCEPTED

    def _close_until(self, watermark: int) -> tuple[Bar, ...]:
        interval = self.interval_ns
        ready = sorted(s for s in self._open if s + interval <= watermark)
        self._closed_until = ready[-1] + interval
        closed = tuple(self._open.pop(s).finish(s, interval) for s in ready)
        self._first_start = min(self._open) if self._open else None
        return closed

    def flush(self) -> list[Bar]:
        """Close and return every open bar (end of stream); later ticks for them are LATE."""
        if not self._open:
            return []
        starts = sorted(self._open)
        self._closed_until = starts[-1] + self.interval_ns
        self._first_start = None
        return [self._open.pop(s).finish(s, self.interval_ns) for s in starts]
