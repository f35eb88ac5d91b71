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


# Codes of add_ticks: where a run of ticks stopped and why.
RUN_DONE, RUN_CLOSE, RUN_LATE, RUN_INVALID, RUN_FULL = range(5)
# Clock of a builder: largest event time, start of the first bar still open, bars starting
# before ``closed_until`` are closed; then a flag for each of the three (0: not yet known).
_MAX, _CLOSED, _FIRST, _HAS_MAX, _HAS_CLOSED, _HAS_FIRST = range(6)


@njit(cache=True)
def add_ticks(
    clock: np.ndarray,
    used: np.ndarray,
    starts: np.ndarray,
    iv: np.ndarray,
    fv: np.ndarray,
    parts: np.ndarray,
    interval: int,
    lateness: int,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    yld: np.ndarray,
    i0: int,
) -> tuple[int, int]:
    """Add ticks ``i0, i0 + 1, ...`` to the open bars (one slot each) until one needs the caller.

    Returns ``(i, code)``: RUN_DONE with ``i`` the length; RUN_CLOSE after adding tick
    ``i - 1``, which closed bars; RUN_LATE, RUN_INVALID (a NaN ``yld`` means no yield) or
    RUN_FULL (no free slot) at tick ``i``, not added.
    """
    inf = np.inf
    for i in range(i0, ts.shape[0]):
        t, p, s, b, a, y = ts[i], price[i], size[i], bid[i], ask[i], yld[i]
        valid_yield = y != y or -1.0 < y < inf  # NaN: the tick has no yield
        if not (0.0 < p < inf and 0.0 < b <= a < inf and 0.0 <= s < inf and valid_yield):
            return i, RUN_INVALID
        start = t - t % interval
        if clock[_HAS_MAX] and (
            start + interval + lateness <= clock[_MAX]
            or (clock[_HAS_CLOSED] and start < clock[_CLOSED])
        ):
            return i, RUN_LATE
        slot = -1
        for k in range(used.shape[0]):
            if used[k] and starts[k] == start:
                slot = k
                break
        if slot < 0:
            for k in range(used.shape[0]):
                if not used[k]:
                    slot = k
                    break
            if slot < 0:
                return i, RUN_FULL
            used[slot] = True
            starts[slot] = start
            iv[slot, :] = 0
            fv[slot, :] = np.nan
            if not clock[_HAS_FIRST] or start < clock[_FIRST]:
                clock[_FIRST] = start
                clock[_HAS_FIRST] = 1
        bar_add_tick(iv[slot], fv[slot], parts[slot], t, p, s, b, a, y)
        if not clock[_HAS_MAX] or t > clock[_MAX]:
            clock[_MAX] = t
            clock[_HAS_MAX] = 1
            if clock[_HAS_FIRST] and clock[_FIRST] + interval + lateness <= t:
                return i + 1, RUN_CLOSE
    return ts.shape[0], RUN_DONE


class BarBuilder(KernelState):
    """Aggregate ticks into event-time bars of ``interval_ns`` with ``lateness_ns`` allowed.

    Open bars live in slots of fixed arrays (grown when more are open at once), so a whole
    batch of ticks goes through :func:`add_ticks` in one compiled call.
    """

    __slots__ = ("_clock", "_fv", "_iv", "_parts", "_starts", "_used", "interval_ns", "lateness_ns")

    def __init__(self, interval_ns: int, lateness_ns: int = 0) -> None:
        if interval_ns <= 0 or lateness_ns < 0:
            raise ValueError(
                f"BarBuilder: need interval_ns > 0 and lateness_ns >= 0, "
                f"got {interval_ns} and {lateness_ns}"
            )
        self.interval_ns = int(interval_ns)
        self.lateness_ns = int(lateness_ns)
        self._clock = np.zeros(6, dtype=np.int64)
        self._alloc(2)

    def _alloc(self, slots: int) -> None:
        self._used = np.zeros(slots, dtype=np.bool_)
        self._starts = np.zeros(slots, dtype=np.int64)
        self._iv = np.zeros((slots, _NP + _NSUMS), dtype=np.int64)
        self._fv = np.full((slots, 9), np.nan)
        self._parts = np.zeros((slots, _NSUMS, _MAXPARTS))

    def _grow(self) -> None:
        old = (self._used, self._starts, self._iv, self._fv, self._parts)
        self._alloc(2 * len(self._used))
        n = len(old[0])
        for new, prev in zip(
            (self._used, self._starts, self._iv, self._fv, self._parts), old, strict=True
        ):
            new[:n] = prev

    @property
    def name(self) -> str:
        """Name carrying the parameters, e.g. ``bars_60000000000_5000000000``."""
        return f"bars_{self.interval_ns}_{self.lateness_ns}"

    @property
    def max_ts(self) -> int | None:
        """Largest event time accepted so far."""
        return int(self._clock[_MAX]) if self._clock[_HAS_MAX] else None

    @property
    def watermark(self) -> int | None:
        """``max_ts - lateness``: every bar ending at or before it is closed."""
        max_ts = self.max_ts
        return None if max_ts is None else max_ts - self.lateness_ns

    @property
    def open_bars(self) -> int:
        """Number of bars still open."""
        return int(self._used.sum())

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
        if not isinstance(ts_ns, int) or (yld is not None and yld != yld):
            reason = check_tick(ts_ns, bid, ask, price, size, yld)
            if reason is not None:
                return AddResult(_NO_BARS, False, reason)

        def one(x: float | None) -> np.ndarray:
            return np.array([math.nan if x is None else x], dtype=np.float64)

        ts = np.array([ts_ns], dtype=np.int64)
        _, code, closed = self.add_run(ts, one(price), one(size), one(bid), one(ask), one(yld), 0)
        if code == RUN_LATE:
            return _LATE
        if code == RUN_INVALID:
            return AddResult(_NO_BARS, False, check_tick(ts_ns, bid, ask, price, size, yld))
        return AddResult(closed, False, None) if closed else _ACCEPTED

    def add_run(
        self,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        yld: np.ndarray,
        i0: int,
    ) -> tuple[int, int, tuple[Bar, ...]]:
        """Add ticks from ``i0`` on until one closes bars, is late or invalid, or the end.

        Returns ``(i, code, closed)`` as :func:`add_ticks` does, with the bars closed
        (RUN_CLOSE only). Ticks before ``i`` (before ``i - 1`` for RUN_CLOSE: included)
        were added.
        """
        while True:
            slots = (self._used, self._starts, self._iv, self._fv, self._parts)
            stop, code = add_ticks(
                self._clock, *slots, self.interval_ns, self.lateness_ns,
                ts, price, size, bid, ask, yld, i0,
            )  # fmt: skip
            if code != RUN_FULL:
                break
            self._grow()
            i0 = stop
        if code != RUN_CLOSE:
            return stop, code, _NO_BARS
        return stop, code, self._close_until(int(self._clock[_MAX]) - self.lateness_ns)

    def _finish(self, slot: int) -> Bar:
        iv, fv, parts = self._iv[slot], self._fv[slot], self._parts[slot]
        start = int(self._starts[slot])
        sums = [math.fsum(parts[i, : iv[_NP + i]]) for i in range(_NSUMS)]
        volume, notional = sums[0], sums[1]
        n = int(iv[_TICKS])
        self._used[slot] = False
        return Bar(
            start_ns=start,
            end_ns=start + self.interval_ns,
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

    def _open_slots(self, until: int | None = None) -> list[int]:
        """Slots of the open bars (ending at or before ``until``), in start order."""
        slots = [int(k) for k in np.flatnonzero(self._used)]
        if until is not None:
            slots = [k for k in slots if self._starts[k] + self.interval_ns <= until]
        return sorted(slots, key=lambda k: int(self._starts[k]))

    def _close(self, slots: list[int]) -> tuple[Bar, ...]:
        clock = self._clock
        clock[_CLOSED] = int(self._starts[slots[-1]]) + self.interval_ns
        clock[_HAS_CLOSED] = 1
        closed = tuple(self._finish(k) for k in slots)
        rest = self._starts[self._used]
        clock[_HAS_FIRST] = int(len(rest) > 0)
        clock[_FIRST] = int(rest.min()) if len(rest) else 0
        return closed

    def _close_until(self, watermark: int) -> tuple[Bar, ...]:
        return self._close(self._open_slots(watermark))

    def flush(self) -> list[Bar]:
        """Close and return every open bar (end of stream); later ticks for them are LATE."""
        slots = self._open_slots()
        return list(self._close(slots)) if slots else []
