"""Volatility estimators: EWMA (RiskMetrics, as arch), rolling realized, Parkinson, Garman-Klass.

Inputs are per-bar returns (or bar OHLC); outputs are per-bar (not annualized) figures.

* ``EwmaVariance(lam)`` reproduces arch's ``EWMAVariance(lam)`` with a zero mean:
  ``sigma2[0] = backcast``, ``sigma2[t] = (1 - lam) * r[t-1]**2 + lam * sigma2[t-1]``. The backcast
  is arch's: ``sum(w_i * r_i**2)`` over the first ``min(75, n)`` returns with ``w_i`` proportional
  to ``0.94**i``. The state buffers the first ``backcast_obs`` returns (NaN until then), computes
  the backcast exactly as arch does and replays them; after that each update is O(1).
  ``get()`` is the one-step-ahead variance ``sigma2[t+1]`` given returns up to ``t``.
* ``RealizedVol(n, ddof)`` is ``np.std(r[-n:], ddof=ddof)``.
* ``ParkinsonVol(n)``: ``sqrt(mean(ln(H/L)**2) / (4 ln 2))`` over the last ``n`` bars.
* ``GarmanKlassVol(n)``: ``sqrt(mean(0.5 ln(H/L)**2 - (2 ln 2 - 1) ln(C/O)**2))``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Self

import numpy as np
from numba import njit

from operators.kernels.rolling import KernelState, param_str, roll_update, state_vector

_LN2 = math.log(2.0)
_GK_C = 2.0 * _LN2 - 1.0
ARCH_BACKCAST_OBS = 75
ARCH_BACKCAST_DECAY = 0.94


def arch_backcast(resids: np.ndarray) -> float:
    """Backcast as in arch: mean of the first 75 squared residuals, weights 0.94**i."""
    tau = min(ARCH_BACKCAST_OBS, resids.shape[0])
    w = ARCH_BACKCAST_DECAY ** np.arange(tau)
    w = w / sum(w)
    return float(np.sum((resids[:tau] ** 2.0) * w))


@njit(cache=True)
def ewma_replay(lam: float, backcast: float, resids: np.ndarray) -> float:
    """Run arch's EWMA recursion from the backcast over ``resids``; return the next variance."""
    s2 = (1.0 - lam) * backcast + lam * backcast
    for i in range(resids.shape[0]):
        r = resids[i]
        s2 = (1.0 - lam) * (r * r) + lam * s2
    return s2


class EwmaVariance(KernelState):
    """EWMA (RiskMetrics) variance of zero-mean returns, seeded like arch's ``EWMAVariance``.

    Give ``backcast`` to start at once from a known variance; otherwise the first
    ``backcast_obs`` returns (75, as arch) are buffered to build arch's backcast.
    """

    __slots__ = ("_pending", "_s2", "backcast_obs", "lam")

    def __init__(
        self, lam: float = 0.94, backcast: float | None = None, backcast_obs: int = 75
    ) -> None:
        if not 0.0 < lam < 1.0:
            raise ValueError(f"EwmaVariance: lam must be in (0, 1), got {lam}")
        if backcast_obs < 1:
            raise ValueError(f"EwmaVariance: backcast_obs must be >= 1, got {backcast_obs}")
        self.lam = float(lam)
        self.backcast_obs = backcast_obs
        self._pending: list[float] | None
        if backcast is None:
            self._pending = []
            self._s2 = math.nan
        else:
            self._pending = None
            self._s2 = (1.0 - lam) * backcast + lam * backcast

    @property
    def name(self) -> str:
        """Feature name, e.g. ``ewm_var_0.94``."""
        return f"ewm_var_{param_str(self.lam)}"

    @property
    def ready(self) -> bool:
        """True once the backcast is known."""
        return self._pending is None

    def update(self, r: float) -> Self:
        """Add one return (or residual)."""
        if not math.isfinite(r):
            return self
        if self._pending is None:
            lam = self.lam
            self._s2 = (1.0 - lam) * (r * r) + lam * self._s2
            return self
        self._pending.append(r)
        if len(self._pending) == self.backcast_obs:
            resids = np.asarray(self._pending, dtype=np.float64)
            self._s2 = float(ewma_replay(self.lam, arch_backcast(resids), resids))
            self._pending = None
        return self

    def get(self) -> float:
        """One-step-ahead variance forecast, NaN until the backcast is known."""
        return self._s2


class EwmaVol(EwmaVariance):
    """Square root of :class:`EwmaVariance` (``ewm_vol_<lam>``)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Feature name, e.g. ``ewm_vol_0.94``."""
        return f"ewm_vol_{param_str(self.lam)}"

    def get(self) -> float:
        """One-step-ahead volatility forecast, NaN until the backcast is known."""
        return math.sqrt(self._s2)


class RealizedVol(KernelState):
    """Rolling standard deviation of the last ``window`` returns, ``np.std(..., ddof=ddof)``."""

    __slots__ = ("_buf", "_st", "_v", "ddof", "window")

    def __init__(self, window: int = 20, ddof: int = 1) -> None:
        if window < 2 or ddof < 0 or ddof >= window:
            raise ValueError(f"RealizedVol: need window >= 2 and 0 <= ddof < window, got {window}")
        self.window = window
        self.ddof = ddof
        self._buf = np.zeros(window)
        self._st = state_vector(2)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``rvol_20``."""
        return f"rvol_{self.window}"

    def update(self, r: float) -> Self:
        """Add one return."""
        if math.isfinite(r):
            self._v = roll_update(self._buf, self._st, r, 2, float(self.ddof))[1]
        return self

    def get(self) -> float:
        """Current volatility, NaN until the window is full."""
        return math.sqrt(self._v)


def parkinson_term(high: float, low: float) -> float:
    """Per-bar Parkinson variance ``ln(H/L)**2 / (4 ln 2)``."""
    hl = math.log(high / low)
    return hl * hl / (4.0 * _LN2)


def garman_klass_term(open_: float, high: float, low: float, close: float) -> float:
    """Per-bar Garman-Klass variance ``0.5 ln(H/L)**2 - (2 ln 2 - 1) ln(C/O)**2``."""
    hl = math.log(high / low)
    co = math.log(close / open_)
    return 0.5 * hl * hl - _GK_C * co * co


def _valid_bar(open_: float, high: float, low: float, close: float) -> bool:
    ok = all(math.isfinite(v) and v > 0.0 for v in (open_, high, low, close))
    return ok and low <= min(open_, close) and high >= max(open_, close)


class _RangeVol(KernelState, ABC):
    __slots__ = ("_buf", "_st", "_v", "window")

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"{type(self).__name__}: window must be >= 1, got {window}")
        self.window = window
        self._buf = np.zeros(window)
        self._st = state_vector(1)
        self._v = math.nan

    @abstractmethod
    def _term(self, open_: float, high: float, low: float, close: float) -> float:
        """One bar's contribution to the mean of squares."""

    def update(self, open_: float, high: float, low: float, close: float) -> Self:
        """Add one bar; a bar with non-positive or inconsistent prices is ignored."""
        if _valid_bar(open_, high, low, close):
            term = self._term(open_, high, low, close)
            self._v = roll_update(self._buf, self._st, term, 1, 0.0)[0]
        return self

    def get(self) -> float:
        """Current per-bar volatility, NaN until the window is full."""
        return math.sqrt(max(self._v, 0.0)) if self._v == self._v else math.nan


class ParkinsonVol(_RangeVol):
    """Parkinson high-low volatility over the last ``window`` bars."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Feature name, e.g. ``parkinson_vol_20``."""
        return f"parkinson_vol_{self.window}"

    def _term(self, open_: float, high: float, low: float, close: float) -> float:
        return parkinson_term(high, low)


class GarmanKlassVol(_RangeVol):
    """Garman-Klass OHLC volatility over the last ``window`` bars."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Feature name, e.g. ``gk_vol_20``."""
        return f"gk_vol_{self.window}"

    def _term(self, open_: float, high: float, low: float, close: float) -> float:
        return garman_klass_term(open_, high, low, close)
