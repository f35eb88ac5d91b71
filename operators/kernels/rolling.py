"""Shared state base class and rolling-window moments on a fixed ring buffer.

``RollingMoments`` keeps power sums ``S_p = sum((x - K)**p)`` of the window around an anchor
``K`` (a recent observation), which keeps the cancellation in ``S_2 - S_1**2 / n`` small even for
prices like ``1e9 + tiny``. Round-off from adding and removing values cannot build up: a shadow
accumulator (anchored at the value it started with) only ever adds, and every ``window`` updates
it holds exactly the current window and replaces the live one. Each update is O(1).
"""

from __future__ import annotations

import copy
import math
from typing import Self

import numpy as np
from numba import njit

# Layout of the state vector of a rolling-moments window.
_N = 0  # values in the window (<= capacity)
_POS = 1  # ring index of the next write
_SEEN = 2  # values added to the shadow accumulator since it started
_K = 3  # live anchor
_KS = 4  # shadow anchor
_S = 5  # live sums S_1..S_P, then shadow sums S_1..S_P


class KernelState:
    """Base of every state class: picklable, ``snapshot()`` returns a deep copy."""

    __slots__ = ()

    def snapshot(self) -> Self:
        """Return an independent deep copy of this state."""
        return copy.deepcopy(self)


def param_str(x: float) -> str:
    """Format a parameter for a feature name: ``2.0 -> '2'``, ``0.94 -> '0.94'``."""
    return f"{x:g}"


def state_vector(npow: int) -> np.ndarray:
    """Return a zeroed state vector for a window tracking ``npow`` power sums."""
    return np.zeros(_S + 2 * npow)


@njit(cache=True)
def roll_push(buf: np.ndarray, st: np.ndarray, x: float, npow: int) -> float:
    """Push ``x`` into the ring ``buf``; update power sums; return the evicted value or NaN."""
    cap = buf.shape[0]
    n = int(st[_N])
    pos = int(st[_POS])
    evicted = np.nan
    if n == 0:
        st[_K] = x
    if n == cap:
        evicted = buf[pos]
        d = evicted - st[_K]
        t = 1.0
        for p in range(npow):
            t *= d
            st[_S + p] -= t
    else:
        n += 1
    buf[pos] = x
    d = x - st[_K]
    t = 1.0
    for p in range(npow):
        t *= d
        st[_S + p] += t
    seen = int(st[_SEEN])
    if seen == 0:
        st[_KS] = x
    d = x - st[_KS]
    t = 1.0
    for p in range(npow):
        t *= d
        st[_S + npow + p] += t
    seen += 1
    if seen == cap:
        # The shadow now holds exactly the window: it becomes the live accumulator.
        st[_K] = st[_KS]
        for p in range(npow):
            st[_S + p] = st[_S + npow + p]
            st[_S + npow + p] = 0.0
        seen = 0
    st[_SEEN] = seen
    st[_N] = n
    st[_POS] = (pos + 1) % cap
    return evicted


@njit(cache=True)
def roll_mean(st: np.ndarray) -> float:
    """Mean of the window (NaN when empty)."""
    n = st[_N]
    if n == 0:
        return np.nan
    return st[_K] + st[_S] / n


@njit(cache=True)
def roll_mean_var(st: np.ndarray, ddof: float) -> tuple[float, float]:
    """Mean and variance (divisor ``n - ddof``; NaN when ``n <= ddof``) of the window."""
    n = st[_N]
    if n == 0:
        return np.nan, np.nan
    s1 = st[_S]
    mean = st[_K] + s1 / n
    if n <= ddof:
        return mean, np.nan
    m2 = st[_S + 1] - s1 * s1 / n
    if m2 < 0.0:
        m2 = 0.0
    return mean, m2 / (n - ddof)


@njit(cache=True)
def roll_moments4(st: np.ndarray, ddof: float) -> tuple[float, float, float, float]:
    """Mean, variance (``n - ddof``), skewness and excess kurtosis (population, biased)."""
    n = st[_N]
    if n == 0:
        return np.nan, np.nan, np.nan, np.nan
    a1 = st[_S] / n
    a2 = st[_S + 1] / n
    a3 = st[_S + 2] / n
    a4 = st[_S + 3] / n
    mean = st[_K] + a1
    m2 = a2 - a1 * a1
    if m2 < 0.0:
        m2 = 0.0
    var = m2 * n / (n - ddof) if n > ddof else np.nan
    m3 = a3 - 3.0 * a1 * a2 + 2.0 * a1 * a1 * a1
    m4 = a4 - 4.0 * a1 * a3 + 6.0 * a1 * a1 * a2 - 3.0 * a1 * a1 * a1 * a1
    if m2 > 0.0:
        skew = m3 / m2**1.5
        kurt = m4 / (m2 * m2) - 3.0
    else:
        skew = np.nan
        kurt = np.nan
    return mean, var, skew, kurt


@njit(cache=True)
def roll_update(
    buf: np.ndarray, st: np.ndarray, x: float, npow: int, ddof: float
) -> tuple[float, float]:
    """Push ``x``; return the window's (mean, variance) once it is full, NaNs before.

    The variance (divisor ``n - ddof``) needs ``npow >= 2``; with ``npow == 1`` it is NaN.
    """
    roll_push(buf, st, x, npow)
    if int(st[_N]) < buf.shape[0]:
        return np.nan, np.nan
    if npow < 2:
        return roll_mean(st), np.nan
    return roll_mean_var(st, ddof)


class RollingMoments(KernelState):
    """Mean, variance, skewness and kurtosis of the last ``window`` values, O(1) per update.

    ``npow`` is the highest power sum kept: 1 for the mean, 2 for the variance, 4 for the
    skewness and kurtosis. Non-finite input is ignored (the state does not change).
    """

    __slots__ = ("_buf", "_st", "npow", "window")

    def __init__(self, window: int, npow: int = 2) -> None:
        if window < 1:
            raise ValueError(f"RollingMoments: window must be >= 1, got {window}")
        if npow not in (1, 2, 4):
            raise ValueError(f"RollingMoments: npow must be 1, 2 or 4, got {npow}")
        self.window = window
        self.npow = npow
        self._buf = np.zeros(window)
        self._st = state_vector(npow)

    @property
    def name(self) -> str:
        """Name carrying the parameters."""
        return f"rolling_moments_{self.window}"

    @property
    def count(self) -> int:
        """Values currently in the window."""
        return int(self._st[_N])

    @property
    def full(self) -> bool:
        """True once the window holds ``window`` values."""
        return int(self._st[_N]) == self.window

    def update(self, x: float) -> Self:
        """Add ``x``, evicting the oldest value once the window is full."""
        if math.isfinite(x):
            roll_push(self._buf, self._st, x, self.npow)
        return self

    def values(self) -> np.ndarray:
        """The window's values, oldest first (a copy)."""
        n = int(self._st[_N])
        pos = int(self._st[_POS])
        if n < self.window:
            return self._buf[:n].copy()
        return np.concatenate((self._buf[pos:], self._buf[:pos]))

    def mean(self) -> float:
        """Mean of the window (NaN when empty)."""
        return float(roll_mean(self._st))

    def var(self, ddof: int = 0) -> float:
        """Variance with divisor ``n - ddof`` (NaN when ``n <= ddof``)."""
        if self.npow < 2:
            raise ValueError("RollingMoments.var needs npow >= 2")
        return float(roll_mean_var(self._st, float(ddof))[1])

    def std(self, ddof: int = 0) -> float:
        """Standard deviation with divisor ``n - ddof``."""
        return math.sqrt(self.var(ddof))

    def moments(self, ddof: int = 0) -> tuple[float, float, float, float]:
        """Mean, variance (``ddof``), population skewness and excess kurtosis."""
        if self.npow < 4:
            raise ValueError("RollingMoments.moments needs npow == 4")
        m, v, s, k = roll_moments4(self._st, float(ddof))
        return float(m), float(v), float(s), float(k)

    def get(self) -> float:
        """Mean of the window."""
        return self.mean()
