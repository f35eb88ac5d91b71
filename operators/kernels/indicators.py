"""Incremental technical indicators that reproduce TA-Lib 0.8.2 value for value.

Seeding, warm-up (NaN) and the order of floating-point operations follow TA-Lib's C code with
its default settings (no unstable period, classic compatibility):

* ``EMA(n)``: first value at index ``n - 1`` = mean of the first ``n`` inputs (summed in order),
  then ``ema += (x - ema) * k`` with ``k = 2 / (n + 1)``.
* ``RSI(n)``: first value at index ``n`` from the mean gain and loss of the first ``n`` changes,
  then Wilder smoothing ``avg = (avg * (n - 1) + change) / n``; ``100 * gain / (gain + loss)``,
  0 when ``gain + loss`` is within 1e-8 of zero (TA-Lib's ``TA_IS_ZERO``).
* ``MACD(f, s, g)``: the slow EMA is seeded with ``SMA(x[0:s])`` and the fast EMA with
  ``SMA(x[s-f:s])``, both at index ``s - 1``; the signal EMA is seeded with the mean of the
  first ``g`` MACD values; every output starts at index ``s + g - 2`` (33 for 12/26/9).
* ``BBANDS(n, up, dn)``: SMA middle band, population standard deviation (a variance below
  1e-8 counts as zero, as in TA-Lib).
* ``ATR(n)``: true range from index 1; first value at index ``n`` = mean(TR[1..n]), then Wilder
  smoothing.

All per-update math is a small ``@njit`` kernel on a float64 state vector; non-finite input is
ignored (state unchanged).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Self

import numpy as np
from numba import njit

from operators.kernels.rolling import KernelState, param_str, roll_update, state_vector

_TA_EPSILON = 1e-8
_new_tuple = tuple.__new__  # builds a NamedTuple from a tuple without a Python frame


def _check_period(cls: str, name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls}: {name} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------------------- SMA
class SMA(KernelState):
    """Simple moving average of the last ``period`` values (TA-Lib ``SMA``)."""

    __slots__ = ("_buf", "_st", "_v", "period")

    def __init__(self, period: int = 20) -> None:
        _check_period("SMA", "period", period, 1)
        self.period = period
        self._buf = np.zeros(period)
        self._st = state_vector(1)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``sma_20``."""
        return f"sma_{self.period}"

    def update(self, x: float) -> Self:
        """Add one value."""
        if math.isfinite(x):
            self._v = roll_update(self._buf, self._st, x, 1, 0.0)[0]
        return self

    def get(self) -> float:
        """Current SMA, NaN during the first ``period - 1`` updates."""
        return float(self._v)


# --------------------------------------------------------------------------------------- EMA
# state: [count, seed_sum, ema]
@njit(cache=True)
def ema_step(st: np.ndarray, x: float, period: int, k: float) -> float:
    """One EMA update with TA-Lib's SMA seed; returns the EMA or NaN during warm-up."""
    count = st[0] + 1.0
    st[0] = count
    if count < period:
        st[1] += x
        return np.nan
    if count == period:
        st[1] += x
        st[2] = st[1] / period
        return st[2]
    st[2] = (x - st[2]) * k + st[2]
    return st[2]


class EMA(KernelState):
    """Exponential moving average, ``k = 2 / (period + 1)``, seeded with an SMA (TA-Lib ``EMA``)."""

    __slots__ = ("_st", "_v", "k", "period")

    def __init__(self, period: int = 20) -> None:
        _check_period("EMA", "period", period, 1)
        self.period = period
        self.k = 2.0 / (period + 1)
        self._st = np.zeros(3)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``ema_20``."""
        return f"ema_{self.period}"

    def update(self, x: float) -> Self:
        """Add one value."""
        if math.isfinite(x):
            self._v = ema_step(self._st, x, self.period, self.k)
        return self

    def get(self) -> float:
        """Current EMA, NaN during the first ``period - 1`` updates."""
        return float(self._v)


# --------------------------------------------------------------------------------------- RSI
# state: [count, prev_value, gain, loss]
@njit(cache=True)
def rsi_step(st: np.ndarray, x: float, period: int) -> float:
    """One RSI update in TA-Lib's order of operations; NaN during warm-up."""
    count = st[0]
    st[0] = count + 1.0
    if count == 0.0:
        st[1] = x
        return np.nan
    change = x - st[1]
    st[1] = x
    if count <= period:
        if change < 0.0:
            st[3] -= change
        else:
            st[2] += change
        if count < period:
            return np.nan
        st[3] /= period
        st[2] /= period
    else:
        st[3] *= period - 1
        st[2] *= period - 1
        if change < 0.0:
            st[3] -= change
        else:
            st[2] += change
        st[3] /= period
        st[2] /= period
    total = st[2] + st[3]
    if -_TA_EPSILON < total < _TA_EPSILON:
        return 0.0
    return 100.0 * (st[2] / total)


class RSI(KernelState):
    """Wilder's relative strength index (TA-Lib ``RSI``), first value after ``period`` changes."""

    __slots__ = ("_st", "_v", "period")

    def __init__(self, period: int = 14) -> None:
        _check_period("RSI", "period", period, 2)
        self.period = period
        self._st = np.zeros(4)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``rsi_14``."""
        return f"rsi_{self.period}"

    def update(self, x: float) -> Self:
        """Add one value."""
        if math.isfinite(x):
            self._v = rsi_step(self._st, x, self.period)
        return self

    def get(self) -> float:
        """Current RSI in [0, 100], NaN during warm-up."""
        return float(self._v)


# -------------------------------------------------------------------------------------- MACD
class MACDValue(NamedTuple):
    """MACD outputs."""

    macd: float
    signal: float
    hist: float


# state: [count, slow_sum, fast_sum, slow_ema, fast_ema, signal_sum, signal_ema]
@njit(cache=True)
def macd_step(
    st: np.ndarray, x: float, fast: int, slow: int, signal: int, kf: float, ks: float, kg: float
) -> tuple[float, float, float]:
    """One MACD update reproducing TA-Lib's seeding; NaNs until index ``slow + signal - 2``."""
    nan = np.nan
    i = st[0]  # index of x
    st[0] = i + 1.0
    if i < slow - 1:
        st[1] += x
        if i >= slow - fast:
            st[2] += x
        return nan, nan, nan
    if i == slow - 1:
        st[1] += x
        st[2] += x
        st[3] = st[1] / slow
        st[4] = st[2] / fast
    else:
        st[3] = (x - st[3]) * ks + st[3]
        st[4] = (x - st[4]) * kf + st[4]
    line = st[4] - st[3]
    j = i - (slow - 1)  # index of the MACD line value
    if j < signal - 1:
        st[5] += line
        return nan, nan, nan
    if j == signal - 1:
        st[5] += line
        st[6] = st[5] / signal
    else:
        st[6] = (line - st[6]) * kg + st[6]
    return line, st[6], line - st[6]


class MACD(KernelState):
    """Moving average convergence/divergence (TA-Lib ``MACD``): line, signal and histogram."""

    __slots__ = ("_st", "_v", "fast", "kf", "kg", "ks", "signal", "slow")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        _check_period("MACD", "fast", fast, 2)
        _check_period("MACD", "slow", slow, 2)
        _check_period("MACD", "signal", signal, 1)
        if slow < fast:  # TA-Lib swaps them too
            fast, slow = slow, fast
        self.fast, self.slow, self.signal = fast, slow, signal
        self.kf = 2.0 / (fast + 1)
        self.ks = 2.0 / (slow + 1)
        self.kg = 2.0 / (signal + 1)
        self._st = np.zeros(7)
        self._v = MACDValue(math.nan, math.nan, math.nan)

    @property
    def name(self) -> str:
        """Feature name, e.g. ``macd_12_26_9``."""
        return f"macd_{self.fast}_{self.slow}_{self.signal}"

    def update(self, x: float) -> Self:
        """Add one value."""
        if math.isfinite(x):
            v = macd_step(self._st, x, self.fast, self.slow, self.signal, self.kf, self.ks, self.kg)
            self._v = _new_tuple(MACDValue, v)
        return self

    def get(self) -> MACDValue:
        """Current (macd, signal, hist), NaNs during warm-up."""
        return self._v


# ----------------------------------------------------------------------------------- BBANDS
class BollingerValue(NamedTuple):
    """Bollinger band outputs; ``pct_b`` and ``bandwidth`` are NaN when the bands coincide."""

    middle: float
    upper: float
    lower: float
    pct_b: float
    bandwidth: float


_NAN_BANDS = BollingerValue(math.nan, math.nan, math.nan, math.nan, math.nan)


@njit(cache=True)
def bollinger_update(
    buf: np.ndarray, st: np.ndarray, x: float, nbdevup: float, nbdevdn: float
) -> tuple[float, float, float, float, float]:
    """Push ``x``; return (middle, upper, lower, %B, bandwidth), NaNs until the window is full."""
    middle, var = roll_update(buf, st, x, 2, 0.0)
    if var != var:
        return np.nan, np.nan, np.nan, np.nan, np.nan
    sd = np.sqrt(var) if var >= _TA_EPSILON else 0.0
    upper = middle + nbdevup * sd
    lower = middle - nbdevdn * sd
    width = upper - lower
    pct_b = (x - lower) / width if width > 0.0 else np.nan
    bandwidth = width / middle if middle != 0.0 else np.nan
    return middle, upper, lower, pct_b, bandwidth


class Bollinger(KernelState):
    """Bollinger bands on an SMA with population std (TA-Lib ``BBANDS``, matype 0).

    ``%B = (x - lower) / (upper - lower)``; ``bandwidth = (upper - lower) / middle``.
    """

    __slots__ = ("_buf", "_st", "_v", "nbdevdn", "nbdevup", "period")

    def __init__(self, period: int = 20, nbdevup: float = 2.0, nbdevdn: float = 2.0) -> None:
        _check_period("Bollinger", "period", period, 2)
        self.period = period
        self.nbdevup = float(nbdevup)
        self.nbdevdn = float(nbdevdn)
        self._buf = np.zeros(period)
        self._st = state_vector(2)
        self._v = _NAN_BANDS

    @property
    def name(self) -> str:
        """Feature name, e.g. ``bb_20_2``."""
        if self.nbdevup == self.nbdevdn:
            return f"bb_{self.period}_{param_str(self.nbdevup)}"
        return f"bb_{self.period}_{param_str(self.nbdevup)}_{param_str(self.nbdevdn)}"

    def update(self, x: float) -> Self:
        """Add one value."""
        if math.isfinite(x):
            v = bollinger_update(self._buf, self._st, x, self.nbdevup, self.nbdevdn)
            self._v = _new_tuple(BollingerValue, v)
        return self

    def get(self) -> BollingerValue:
        """Current bands, NaNs during the first ``period - 1`` updates."""
        return self._v


# --------------------------------------------------------------------------------------- ATR
# state: [count, prev_close, atr]
@njit(cache=True)
def atr_step(st: np.ndarray, high: float, low: float, close: float, period: int) -> float:
    """One ATR update in TA-Lib's order of operations; NaN during the first ``period`` bars."""
    count = st[0]
    st[0] = count + 1.0
    if count == 0.0:
        st[1] = close
        return np.nan
    prev = st[1]
    st[1] = close
    greatest = high - low
    v2 = abs(prev - high)
    if v2 > greatest:
        greatest = v2
    v3 = abs(prev - low)
    if v3 > greatest:
        greatest = v3
    if count < period:
        st[2] += greatest
        return np.nan
    if count == period:
        st[2] += greatest
        st[2] = st[2] / period
        return st[2]
    st[2] *= period - 1
    st[2] += greatest
    st[2] /= period
    return st[2]


class ATR(KernelState):
    """Wilder's average true range (TA-Lib ``ATR``); ``update(high, low, close)``."""

    __slots__ = ("_st", "_v", "period")

    def __init__(self, period: int = 14) -> None:
        _check_period("ATR", "period", period, 1)
        self.period = period
        self._st = np.zeros(3)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``atr_14``."""
        return f"atr_{self.period}"

    def update(self, high: float, low: float, close: float) -> Self:
        """Add one bar."""
        if math.isfinite(high) and math.isfinite(low) and math.isfinite(close):
            self._v = atr_step(self._st, high, low, close, self.period)
        return self

    def get(self) -> float:
        """Current ATR, NaN during warm-up."""
        return float(self._v)
