"""Value at risk and conditional VaR on a rolling window of returns.

Figures are return quantiles, as empyrical reports them: a loss is a negative number. The
``horizon``-period figure is the one-period figure times ``sqrt(horizon)`` (square-root-of-time
rule) for every method.

* Historical (``HistoricalVaR``), as empyrical-reloaded 0.7.1: ``VaR = np.percentile(r, 100a)``
  (linear interpolation, ``a = 1 - confidence``) and ``CVaR = mean`` of the ``k + 1`` smallest
  returns with ``k = int((n - 1) * a)``. The window is kept sorted (bisection, then a shift),
  O(log n) search per update.
* Parametric (``ParametricVaR``): normal ``VaR = mu + z * sigma`` and
  ``CVaR = mu - sigma * phi(z) / a``, ``z = Phi^-1(a)``; Cornish-Fisher replaces ``z`` with
  ``z + (z^2 - 1) S / 6 + (z^3 - 3z) K / 24 - (2z^3 - 5z) S^2 / 36``, where ``mu``, ``sigma``
  (``ddof``, default 1) are the window's mean and standard deviation and ``S``, ``K`` its
  population skewness and excess kurtosis (``scipy.stats.skew`` / ``kurtosis`` with bias).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple, Self

import numpy as np
from numba import njit

from operators.kernels.rolling import (
    KernelState,
    param_str,
    roll_mean_var,
    roll_moments4,
    roll_push,
    state_vector,
)


class VaRValue(NamedTuple):
    """VaR and CVaR as returns (negative = loss); NaN until the window is full."""

    var: float
    cvar: float


_NAN_VAR = VaRValue(math.nan, math.nan)


def _cutoff(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"VaR: confidence must be in (0, 1), got {confidence}")
    # round() turns 1 - 0.95 = 0.050000000000000044 back into empyrical's 0.05
    return round(1.0 - confidence, 12)


# Historical state vector: [n, pos, cutoff, scale, last VaR, last CVaR]
_H_CUT, _H_SCALE, _H_VAR, _H_CVAR = 2, 3, 4, 5


@njit(cache=True)
def sorted_push(ring: np.ndarray, srt: np.ndarray, st: np.ndarray, x: float) -> None:
    """Push ``x`` into the ring and keep ``srt[:n]`` sorted (evicting the oldest when full)."""
    cap = ring.shape[0]
    n = int(st[0])
    pos = int(st[1])
    if n == cap:
        old = ring[pos]
        j = np.searchsorted(srt[:n], old)
        for i in range(j, n - 1):
            srt[i] = srt[i + 1]
        n -= 1
    j = np.searchsorted(srt[:n], x)
    for i in range(n, j, -1):
        srt[i] = srt[i - 1]
    srt[j] = x
    ring[pos] = x
    st[0] = n + 1
    st[1] = (pos + 1) % cap


@njit(cache=True)
def hist_var_cvar(srt: np.ndarray, n: int, cutoff: float) -> tuple[float, float]:
    """Percentile (numpy 'linear') and lower-tail mean of the sorted ``srt[:n]``."""
    vi = (n - 1) * cutoff
    lo = math.floor(vi)
    gamma = vi - lo
    ilo = int(lo)
    ihi = min(ilo + 1, n - 1)
    a = srt[ilo]
    b = srt[ihi]
    diff = b - a
    q = b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
    k = int((n - 1) * cutoff)
    s = 0.0
    for i in range(k + 1):
        s += srt[i]
    return q, s / (k + 1)


@njit(cache=True)
def hist_var_update(
    ring: np.ndarray, srt: np.ndarray, st: np.ndarray, x: float
) -> tuple[float, float]:
    """Push ``x``; return the scaled (VaR, CVaR), NaNs until the window is full.

    A non-finite ``x`` is ignored and the previous figures are returned.
    """
    if np.isfinite(x):
        sorted_push(ring, srt, st, x)
        n = int(st[0])
        if n == ring.shape[0]:
            q, es = hist_var_cvar(srt, n, st[_H_CUT])
            st[_H_VAR] = q * st[_H_SCALE]
            st[_H_CVAR] = es * st[_H_SCALE]
    return st[_H_VAR], st[_H_CVAR]


# Parametric state vector: rolling power sums (``state_vector(npow)``), then
# [npow, ddof, z, cutoff, scale, last VaR, last CVaR]
_P_NPOW, _P_DDOF, _P_Z, _P_CUT, _P_SCALE, _P_VAR, _P_CVAR = range(-7, 0)


@njit(cache=True)
def param_var_update(buf: np.ndarray, st: np.ndarray, x: float) -> tuple[float, float]:
    """Push ``x``; return scaled normal (VaR, CVaR) or (Cornish-Fisher VaR, NaN).

    NaNs until the window is full; a non-finite ``x`` is ignored (previous figures returned).
    """
    if not np.isfinite(x):
        return st[_P_VAR], st[_P_CVAR]
    npow = int(st[_P_NPOW])
    roll_push(buf, st, x, npow)
    if int(st[0]) < buf.shape[0]:
        return np.nan, np.nan
    ddof, z, cutoff, scale = st[_P_DDOF], st[_P_Z], st[_P_CUT], st[_P_SCALE]
    if npow == 2:
        mu, var = roll_mean_var(st, ddof)
        sigma = np.sqrt(var)
        phi = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
        st[_P_VAR] = (mu + z * sigma) * scale
        st[_P_CVAR] = (mu - sigma * phi / cutoff) * scale
    else:
        mu, v, s, k = roll_moments4(st, ddof)
        if not (np.isfinite(s) and np.isfinite(k)):  # constant window: no tail shape
            s = 0.0
            k = 0.0
        z2 = z * z
        zcf = z + (z2 - 1.0) * s / 6.0 + (z2 * z - 3.0 * z) * k / 24.0
        zcf -= (2.0 * z2 * z - 5.0 * z) * s * s / 36.0
        st[_P_VAR] = (mu + zcf * np.sqrt(v)) * scale
    return st[_P_VAR], st[_P_CVAR]


_new_tuple = tuple.__new__  # builds a NamedTuple from a tuple without a Python frame


class HistoricalVaR(KernelState):
    """Historical VaR and CVaR over the last ``window`` returns (empyrical's definitions)."""

    __slots__ = (
        "_ring",
        "_sorted",
        "_st",
        "_v",
        "confidence",
        "cutoff",
        "horizon",
        "scale",
        "window",
    )

    def __init__(self, window: int = 250, confidence: float = 0.95, horizon: int = 1) -> None:
        if window < 2:
            raise ValueError(f"HistoricalVaR: window must be >= 2, got {window}")
        if horizon < 1:
            raise ValueError(f"HistoricalVaR: horizon must be >= 1, got {horizon}")
        self.window = window
        self.confidence = confidence
        self.cutoff = _cutoff(confidence)
        self.horizon = horizon
        self.scale = math.sqrt(horizon)
        self._ring = np.zeros(window)
        self._sorted = np.zeros(window)
        self._st = np.array([0.0, 0.0, self.cutoff, self.scale, math.nan, math.nan])
        self._v = _NAN_VAR

    @property
    def name(self) -> str:
        """Feature name stem, e.g. ``var_hist_0.95_1`` (CVaR: ``cvar_hist_0.95_1``)."""
        return f"var_hist_{param_str(self.confidence)}_{self.horizon}"

    def update(self, r: float) -> Self:
        """Add one return."""
        self._v = _new_tuple(VaRValue, hist_var_update(self._ring, self._sorted, self._st, r))
        return self

    def get(self) -> VaRValue:
        """Current (VaR, CVaR), NaN until the window is full."""
        return self._v


class ParametricVaR(KernelState):
    """Normal or Cornish-Fisher VaR (and normal CVaR) over the last ``window`` returns.

    ``method`` is ``"normal"`` or ``"cornish_fisher"``; Cornish-Fisher CVaR is not defined here
    and is reported as NaN.
    """

    __slots__ = (
        "_buf",
        "_st",
        "_v",
        "confidence",
        "cutoff",
        "ddof",
        "horizon",
        "method",
        "npow",
        "scale",
        "window",
        "z",
    )

    def __init__(
        self,
        window: int = 250,
        confidence: float = 0.95,
        horizon: int = 1,
        method: str = "normal",
        ddof: int = 1,
    ) -> None:
        if method not in ("normal", "cornish_fisher"):
            raise ValueError(f"ParametricVaR: unknown method {method!r}")
        if window < 3 or horizon < 1 or not 0 <= ddof < window:
            raise ValueError(f"ParametricVaR: bad window/horizon/ddof {window}/{horizon}/{ddof}")
        self.window = window
        self.confidence = confidence
        self.cutoff = _cutoff(confidence)
        self.horizon = horizon
        self.scale = math.sqrt(horizon)
        self.method = method
        self.ddof = ddof
        self.z = NormalDist().inv_cdf(self.cutoff)
        self.npow = 4 if method == "cornish_fisher" else 2
        self._buf = np.zeros(window)
        prm = [self.npow, ddof, self.z, self.cutoff, self.scale, math.nan, math.nan]
        self._st = np.concatenate([state_vector(self.npow), np.array(prm, dtype=np.float64)])
        self._v = _NAN_VAR

    @property
    def name(self) -> str:
        """Feature name stem, e.g. ``var_normal_0.95_1`` or ``var_cf_0.95_1``."""
        tag = "cf" if self.method == "cornish_fisher" else "normal"
        return f"var_{tag}_{param_str(self.confidence)}_{self.horizon}"

    def update(self, r: float) -> Self:
        """Add one return."""
        self._v = _new_tuple(VaRValue, param_var_update(self._buf, self._st, r))
        return self

    def get(self) -> VaRValue:
        """Current (VaR, CVaR), NaN until the window is full."""
        return self._v
