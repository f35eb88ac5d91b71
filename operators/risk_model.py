"""Risk model: EWMA covariance over a growing universe, VaR / CVaR, allowed-quantity closed forms.

Conventions
    *Exposure* ``w``: signed cash per instrument (quantity x price x face value; short < 0).
    *Covariance* ``Sigma``: of daily returns, so ``w' Sigma w`` is the daily P&L variance.
    *VaR and CVaR are positive currency losses* (a loss of 1,000 is ``1000.0``), unlike the
    return-quantile figures of :mod:`operators.kernels.var` (negative = loss): here
    ``VaR = -quantile(P&L)``. The ``h``-day figure is the 1-day one times ``sqrt(h)``.
    Parametric figures are zero-mean normal: ``VaR = z sigma sqrt(h)``,
    ``CVaR = sigma phi(z) / (1 - c) sqrt(h)``, ``z = Phi^-1(c)``, ``sigma = sqrt(w' Sigma w)``.
    Historical figures use the empyrical conventions of :mod:`operators.kernels.var` on the
    P&L vector ``R @ w``: VaR is NumPy's linear-interpolation percentile at ``1 - c``; CVaR
    is the mean of the ``k + 1`` worst P&Ls with ``k = int((T - 1)(1 - c))``.
    *Marginal VaR* of a trade: ``VaR(w + dw) - VaR(w)`` (incremental; > 0 adds risk). The
    gradient ``dVaR/dw = z Sigma w / sigma`` (times ``sqrt(h)``) is reported per unit of the
    proposal's quantity on its side; ``w * gradient`` (component VaR) sums to VaR.

EWMA covariance (:class:`EwmaCovariance`), RiskMetrics with zero mean
    ``S_t = lam S_{t-1} + (1 - lam) r_t r_t'`` once per bar, ``r_t`` the per-bar log returns
    of every instrument in the universe. The caller calls ``update(bar_end_ns, returns)`` once
    per bar end, in increasing ``bar_end_ns``, with every return of that bar
    (:class:`BarReturns` builds those dicts from bar-close marks). So the state depends on
    the bars' event times and contents only, never on the order marks arrived in.

    Missing return: an instrument of the universe without a return in a bar enters the
    recursion with a zero return (its variance and covariances decay by ``lam``). Its price
    move is not lost: the next return is taken against its last price
    (:class:`BarReturns`), so it arrives, whole, with the next bar the instrument closes.
    Zero-filling keeps ``S`` positive semi-definite (a sum of PSD terms), which the
    alternatives (skipping rows and columns, pairwise weights) do not, and makes entry
    ``(i, j)`` depend on the returns of ``i`` and ``j`` only. Non-finite returns count as
    missing.

    New instruments join the universe the first bar they have a return. Seeding: with a
    prior per-bar variance ``s0`` (``prior_vars``; e.g. the mark's ``daily_vol**2 /
    bars_per_day``) the row starts at ``diag(s0)``, zero covariances, and the recursion
    equals pandas ``ewm(alpha=1-lam, adjust=False)`` of ``[s0, r1**2, r2**2, ...]``. Without
    a prior the row starts at zero and the figures are bias-corrected by the weight
    ``b_i = 1 - lam**n_i`` (``n_i`` bars since joining): ``cov = D^-1/2 S D^-1/2``,
    ``D = diag(b)``, which is pandas ``ewm(adjust=True)`` on the diagonal and still PSD.

    A volatility is ready once the instrument was seeded or has ``min_obs`` real returns; a
    correlation once both instruments have ``min_obs`` real returns. Pairs that are not
    ready get correlation 0 (a PSD choice); unready volatilities are NaN unless a forecast
    or a fallback is given, and a NaN volatility makes every figure that uses it NaN, which
    the checks turn into a fail-safe ``NO_RISK_MODEL`` rejection.

    Storage trick: ``S = g M`` with a scalar ``g``. A bar multiplies ``g`` by ``lam`` and adds
    ``(1 - lam) / g r r'`` to the rows and columns of the instruments that moved, so a bar
    costs O(m^2) for ``m`` returns instead of O(N^2); ``M`` is renormalised when ``g`` drops
    below 1e-100 (every ~3,700 bars).

Volatility forecasts and regime
    Risk uses ``Sigma = k^2 D_s R D_s``: ``R`` the EWMA correlation, ``s_i`` the daily
    volatility (a forecast from ``vols`` if given, else the EWMA volatility once ready, else
    ``fallback_vols``), ``k`` a volatility multiplier, e.g.
    :func:`regime_vol_multiplier` of the regime probabilities. Correlation comes from the
    EWMA model only.

Use in the flow
    Per bar close: ``BarReturns.add(mark)`` for each mark, then for each
    ``(end, returns, priors)`` of ``BarReturns.flush(watermark)``:
    ``EwmaCovariance.update(end, returns, priors)``. Per decision: :func:`trade_risk` on the
    book's exposures, then :func:`check_var_budget`, :func:`check_gross_notional`,
    :func:`check_net_notional` and, with :class:`OrderRate`, :func:`check_order_rate`.

Why not a factor model
    The universe is ~1,000 instruments: ``M`` is 8 MB, a bar costs O(m^2) and a decision
    O(k^2) for a book of ``k`` positions (about a millisecond at 1,000 on a shared 2-CPU
    machine, see ``bench/decision_bench.py``). A factor model would need factor returns
    (sector, rates, credit) the flow does not carry yet; it is the next step beyond a few
    thousand instruments.
"""

from __future__ import annotations

import bisect
import copy
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Self

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.checks import Cap, Reason
from operators.kernels.var import hist_var_cvar
from operators.records import Mark

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_LAMBDA = 0.94
RENORMALISE_BELOW = 1e-100
"""Fold the scale ``g`` back into ``M`` once it drops below this."""
TOLERANCE = 1e-9
"""Relative slack before a quantity counts as over a closed-form cap (float noise)."""

# ---------------------------------------------------------------------------------------
# Normal quantiles
# ---------------------------------------------------------------------------------------


def _cutoff(confidence: float) -> float:
    """Tail probability ``1 - c``, rounded as :mod:`operators.kernels.var` does."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"risk model: confidence must be in (0, 1), got {confidence}")
    return round(1.0 - confidence, 12)


@functools.lru_cache(maxsize=64)
def z_score(confidence: float) -> float:
    """One-sided normal quantile ``Phi^-1(c)`` (1.6449 at 95%)."""
    return NormalDist().inv_cdf(1.0 - _cutoff(confidence))


@functools.lru_cache(maxsize=64)
def es_factor(confidence: float) -> float:
    """Normal expected-shortfall multiplier ``phi(z) / (1 - c)`` (2.0627 at 95%)."""
    z = z_score(confidence)
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) / _cutoff(confidence)


def regime_vol_multiplier(
    probabilities: Mapping[str, float], multipliers: Mapping[str, float]
) -> float:
    """Volatility multiplier of a regime mixture: ``sqrt(sum p_k m_k^2 / sum p_k)``.

    ``multipliers`` (per regime name) are a risk policy to configure; use them with EWMA
    volatilities only, since the vol ensemble's forecasts already condition on the regime.

    The variance of a mixture of zero-mean normals is the probability-weighted variance, so
    multipliers combine in squares. Regimes without a multiplier count as 1; no usable
    probabilities give 1.
    """
    total = weighted = 0.0
    for regime, p in probabilities.items():
        if math.isfinite(p) and p > 0:
            m = multipliers.get(regime, 1.0)
            total += p
            weighted += p * m * m
    return math.sqrt(weighted / total) if total > 0 else 1.0


# ---------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------


@njit(cache=True)
def rank1_add(m: FloatArray, idx: IntArray, r: FloatArray, c: float) -> None:
    """``m[idx_a, idx_b] += c r_a r_b`` for every pair (rows and columns of ``idx`` only)."""
    k = idx.shape[0]
    for a in range(k):
        ca = c * r[a]
        row = m[idx[a]]
        for b in range(k):
            row[idx[b]] += ca * r[b]


@njit(cache=True)
def _pick_vol(
    a: int, pos: IntArray, first: FloatArray, univ: FloatArray, last: FloatArray
) -> float:
    """Volatility of book position ``a``: ``first`` (forecast), universe EWMA, then ``last``."""
    s = first[a] if first.shape[0] else np.nan
    if not np.isfinite(s) and pos[a] >= 0:
        s = univ[pos[a]]
    if not np.isfinite(s) and last.shape[0]:
        s = last[a]
    return s if np.isfinite(s) and s >= 0.0 else np.nan


@njit(cache=True)
def book_moments(
    m: FloatArray,
    pos: IntArray,
    w: FloatArray,
    first: FloatArray,
    univ: FloatArray,
    last: FloatArray,
    vol_mult: float,
    scales: FloatArray,
    p: int,
) -> tuple[float, float, float]:
    """Book variance ``w' Sigma w``, cross term ``(Sigma w)_p`` and volatility ``s_p``.

    ``Sigma_ab = k^2 s_a s_b rho_ab`` with ``rho_ab = M_ab scales_a scales_b`` (``scales`` are
    ``1 / sqrt(M_ii)`` over the universe, 0 where correlations are not ready) and ``rho_aa =
    1``. ``pos``: universe position of each book entry (-1: not in the universe);
    ``first`` / ``last``: per-entry forecast and fallback volatilities (NaN: none; empty:
    none at all); ``univ``: EWMA volatilities of the universe. A NaN volatility of a held
    position makes the variance NaN (fail safe). The pair loop visits each pair once.
    """
    k = pos.shape[0]
    x = np.empty(k)
    u = np.empty(k)
    diag = 0.0
    for a in range(k):
        s = _pick_vol(a, pos, first, univ, last) * vol_mult
        xa = 0.0 if w[a] == 0.0 else s * w[a]
        x[a] = xa
        u[a] = xa * scales[pos[a]] if pos[a] >= 0 and np.isfinite(xa) else 0.0
        diag += xa * xa
    off = 0.0
    for a in range(k):
        ua = u[a]
        if ua == 0.0:
            continue
        row = m[pos[a]]
        # four running sums in a fixed order: faster than one chain, the same bits on any CPU
        s0 = s1 = s2 = s3 = 0.0
        b = a + 1
        while b + 3 < k:
            s0 += row[pos[b]] * u[b]
            s1 += row[pos[b + 1]] * u[b + 1]
            s2 += row[pos[b + 2]] * u[b + 2]
            s3 += row[pos[b + 3]] * u[b + 3]
            b += 4
        while b < k:
            s0 += row[pos[b]] * u[b]
            b += 1
        off += ua * ((s0 + s1) + (s2 + s3))
    sp = _pick_vol(p, pos, first, univ, last) * vol_mult
    inv_p = scales[pos[p]] if pos[p] >= 0 else 0.0
    t = 0.0
    if inv_p != 0.0:
        row = m[pos[p]]
        for b in range(k):
            if b != p:
                t += row[pos[b]] * u[b]
    return diag + 2.0 * off, sp * (x[p] + inv_p * t), sp


@njit(cache=True)
def scenario_var_pair(
    ring: FloatArray, rows: int, pos: IntArray, w: FloatArray, p: int, dx: float, cutoff: float
) -> tuple[float, float, float, float]:
    """Historical (VaR, CVaR) as P&L quantiles (negative = loss) before and after a trade.

    ``ring[i, t]``: return of universe instrument ``i`` in stored bar ``t``. P&L of exposures
    ``w`` (at universe positions ``pos``) in each of the first ``rows`` bars, and with ``dx``
    more cash in position ``p``; empyrical's percentile and tail mean
    (:func:`operators.kernels.var.hist_var_cvar`).
    """
    before = np.zeros(rows)
    for a in range(pos.shape[0]):
        wa = w[a]
        if wa != 0.0:
            hist = ring[pos[a]]
            for t in range(rows):
                before[t] += hist[t] * wa
    after = np.empty(rows)
    own = ring[p]
    for t in range(rows):
        after[t] = before[t] + own[t] * dx
    vb, cb = hist_var_cvar(np.sort(before), rows, cutoff)
    va, ca = hist_var_cvar(np.sort(after), rows, cutoff)
    return vb, cb, va, ca


# ---------------------------------------------------------------------------------------
# EWMA covariance
# ---------------------------------------------------------------------------------------


class EwmaCovariance:
    """EWMA (RiskMetrics) covariance of per-bar returns over a universe that grows.

    ``lam``: decay (0.94). ``min_obs``: real returns before a volatility or correlation is
    used. ``periods_per_day``: bars in a trading day (per-bar variance x this = daily).
    ``history``: bar return vectors kept for historical VaR (0: none). See the module
    docstring for the update contract, missing returns and seeding.
    """

    def __init__(
        self,
        lam: float = DEFAULT_LAMBDA,
        min_obs: int = 20,
        periods_per_day: float = 1.0,
        history: int = 0,
        capacity: int = 16,
    ) -> None:
        if not 0.0 < lam < 1.0:
            raise ValueError(f"EwmaCovariance: lam must be in (0, 1), got {lam}")
        if min_obs < 1 or history < 0 or capacity < 1:
            raise ValueError(
                f"EwmaCovariance: bad min_obs/history/capacity {min_obs}/{history}/{capacity}"
            )
        if not (math.isfinite(periods_per_day) and periods_per_day > 0):
            raise ValueError(f"EwmaCovariance: periods_per_day must be > 0, got {periods_per_day}")
        self.lam = float(lam)
        self.min_obs = min_obs
        self.periods_per_day = float(periods_per_day)
        self.history = history
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.bars = 0
        """Bars applied so far."""
        self.last_bar_ns: int | None = None
        self._g = 1.0
        self._m = np.zeros((capacity, capacity))
        self._join = np.zeros(capacity, dtype=np.int64)
        self._seeded = np.zeros(capacity, dtype=np.bool_)
        self._nobs = np.zeros(capacity, dtype=np.int64)
        self._ring = np.zeros((capacity, history))  # one row of history per instrument
        self._ring_pos = 0
        self._ring_rows = 0
        self._vols: FloatArray | None = None
        self._scale: FloatArray | None = None

    @property
    def name(self) -> str:
        """Model name with its parameter, e.g. ``ewm_cov_0.94``."""
        return f"ewm_cov_{self.lam:g}"

    @property
    def n(self) -> int:
        """Instruments in the universe."""
        return len(self.ids)

    def snapshot(self) -> EwmaCovariance:
        """An independent deep copy (arrays, lists and dicts of immutables copied)."""
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray | list | dict):
                setattr(new, name, value.copy())
        return new

    # ---- updates ---------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        cap = self._m.shape[0]
        if need <= cap:
            return
        new = max(need, 2 * cap)
        m = np.zeros((new, new))
        m[:cap, :cap] = self._m
        self._m = m
        self._join = np.concatenate([self._join, np.zeros(new - cap, dtype=np.int64)])
        self._seeded = np.concatenate([self._seeded, np.zeros(new - cap, dtype=np.bool_)])
        self._nobs = np.concatenate([self._nobs, np.zeros(new - cap, dtype=np.int64)])
        ring = np.zeros((new, self.history))
        ring[:cap] = self._ring
        self._ring = ring

    def add(self, instrument_id: str, prior_var: float | None = None) -> int:
        """Add an instrument (no-op if known); ``prior_var`` is a per-bar variance seed."""
        i = self.index.get(instrument_id)
        if i is not None:
            return i
        i = self.n
        self._grow(i + 1)
        self.ids.append(instrument_id)
        self.index[instrument_id] = i
        self._join[i] = self.bars
        seeded = prior_var is not None and math.isfinite(prior_var) and prior_var > 0
        self._seeded[i] = seeded
        if seeded:
            assert prior_var is not None
            self._m[i, i] = prior_var / self._g
        self._vols = self._scale = None
        return i

    def update(
        self,
        bar_end_ns: int,
        returns: Mapping[str, float],
        prior_vars: Mapping[str, float] | None = None,
    ) -> Self:
        """Apply one bar: ``S = lam S + (1 - lam) r r'`` with every return of the bar.

        Call once per bar end, in increasing ``bar_end_ns``; instruments without a return
        in ``returns`` get 0 for this bar; new instruments join (seeded from ``prior_vars``
        when it holds their per-bar variance).
        """
        if self.last_bar_ns is not None and bar_end_ns <= self.last_bar_ns:
            raise ValueError(
                f"EwmaCovariance.update: bar end {bar_end_ns} is not after {self.last_bar_ns}"
            )
        present = sorted(k for k, r in returns.items() if math.isfinite(r))
        priors = prior_vars or {}
        for k in present:
            if k not in self.index:
                self.add(k, priors.get(k))
        idx = np.fromiter((self.index[k] for k in present), dtype=np.int64, count=len(present))
        r = np.fromiter((returns[k] for k in present), dtype=np.float64, count=len(present))
        self._g *= self.lam
        if len(present):
            rank1_add(self._m, idx, r, (1.0 - self.lam) / self._g)
            self._nobs[idx] += 1
        if self.history:
            col = self._ring[:, self._ring_pos]
            col[:] = 0.0
            col[idx] = r
            self._ring_pos = (self._ring_pos + 1) % self.history
            self._ring_rows = min(self._ring_rows + 1, self.history)
        if self._g < RENORMALISE_BELOW:
            n = self.n
            self._m[:n, :n] *= self._g
            self._g = 1.0
        self.bars += 1
        self.last_bar_ns = bar_end_ns
        self._vols = self._scale = None
        return self

    # ---- reads -----------------------------------------------------------------------

    def _idx(self, ids: Iterable[str]) -> IntArray:
        try:
            return np.array([self.index[k] for k in ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"EwmaCovariance: unknown instrument {exc.args[0]!r}") from exc

    def raw(self, ids: Iterable[str]) -> FloatArray:
        """The recursion's ``S`` (per bar, no bias correction, no readiness rules)."""
        i = self._idx(ids)
        return np.asarray(self._g * self._m[np.ix_(i, i)], dtype=np.float64)

    def weights(self, ids: Iterable[str]) -> FloatArray:
        """Bias weights ``b``: 1 when seeded, else ``1 - lam ** bars_since_join``."""
        i = self._idx(ids)
        b = 1.0 - self.lam ** (self.bars - self._join[i]).astype(np.float64)
        return np.where(self._seeded[i], 1.0, b)

    def vol_ready(self, ids: Iterable[str]) -> npt.NDArray[np.bool_]:
        """Whether each EWMA volatility may be used (seeded, or ``min_obs`` returns)."""
        i = self._idx(ids)
        return self._seeded[i] | (self._nobs[i] >= self.min_obs)

    def daily_vols(self) -> FloatArray:
        """Daily EWMA volatility of every instrument in universe order (NaN: not ready)."""
        if self._vols is None:
            n = self.n
            ids = self.ids
            var = self._g * np.diagonal(self._m)[:n] / self.weights(ids) * self.periods_per_day
            with np.errstate(invalid="ignore", divide="ignore"):
                vols = np.sqrt(np.maximum(var, 0.0))
            self._vols = np.where(self.vol_ready(ids), vols, np.nan)
        return self._vols

    def vol(self, instrument_id: str) -> float:
        """Daily EWMA volatility (NaN when unknown or not ready)."""
        i = self.index.get(instrument_id)
        return math.nan if i is None else float(self.daily_vols()[i])

    def corr_scales(self) -> FloatArray:
        """``1 / sqrt(M_ii)`` of every instrument where correlations are ready, else 0."""
        if self._scale is None:
            n = self.n
            d = np.diagonal(self._m)[:n]
            ok = (self._nobs[:n] >= self.min_obs) & (d > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                self._scale = np.where(ok, 1.0 / np.sqrt(np.where(ok, d, 1.0)), 0.0)
        return self._scale

    def corr_scale(self, i: IntArray) -> FloatArray:
        """``1 / sqrt(M_ii)`` at universe positions ``i`` where correlations are ready, else 0."""
        return np.asarray(self.corr_scales()[i], dtype=np.float64)

    def corr(self, a: str, b: str) -> float:
        """EWMA correlation (NaN when either is unknown or not ready)."""
        if a not in self.index or b not in self.index:
            return math.nan
        inv = self.corr_scale(self._idx((a, b)))
        if inv[0] == 0.0 or inv[1] == 0.0:
            return math.nan
        if a == b:
            return 1.0
        return float(self._m[self.index[a], self.index[b]] * inv[0] * inv[1])

    def corr_row(self, instrument_id: str, ids: Iterable[str] | None = None) -> FloatArray:
        """Correlations of one instrument with each of ``ids`` (NaN: unknown or not ready).

        Without ``ids``: with the whole universe, in :attr:`ids` order.
        """
        scales = self.corr_scales()
        i = self.index.get(instrument_id)
        if ids is None:  # the whole universe: a dozen floats, faster in Python
            n = self.n
            if i is None:
                return np.full(n, np.nan)
            inv_i = float(scales[i])
            pairs = zip(self._m[i, :n].tolist(), scales.tolist(), strict=True)
            return np.array(
                [m * s * inv_i if s * inv_i > 0 else math.nan for m, s in pairs], dtype=np.float64
            )
        get = self.index.get
        pos = np.array([get(k, -1) for k in ids], dtype=np.int64)
        if i is None:
            return np.full(len(pos), np.nan)
        idx = np.maximum(pos, 0)
        inv = np.where(pos >= 0, scales[idx], 0.0)
        inv_i = float(scales[i])
        rho = self._m[i, idx] * inv * inv_i
        return np.asarray(np.where(inv * inv_i > 0, rho, np.nan), dtype=np.float64)

    def correlation(self, ids: Iterable[str]) -> FloatArray:
        """Correlation matrix; unknown or unready pairs get 0, the diagonal 1."""
        ids = list(ids)
        known = np.array([k in self.index for k in ids], dtype=np.bool_)
        i = np.array([self.index.get(k, 0) for k in ids], dtype=np.int64)
        inv = np.where(known, self.corr_scale(i), 0.0)
        rho = self._m[np.ix_(i, i)] * np.outer(inv, inv)
        np.fill_diagonal(rho, 1.0)
        return np.asarray(rho, dtype=np.float64)

    def vols_for(
        self,
        ids: Iterable[str],
        vols: Mapping[str, float] | None = None,
        fallback_vols: Mapping[str, float] | None = None,
    ) -> FloatArray:
        """Daily volatilities: ``vols`` (forecasts) first, then EWMA, then ``fallback_vols``."""
        ewma = self.daily_vols()
        out = []
        for k in ids:
            s = vols.get(k, math.nan) if vols else math.nan
            if not math.isfinite(s):
                i = self.index.get(k)
                s = float(ewma[i]) if i is not None else math.nan
            if not math.isfinite(s) and fallback_vols:
                s = fallback_vols.get(k, math.nan)
            out.append(s if math.isfinite(s) and s >= 0 else math.nan)
        return np.array(out, dtype=np.float64)

    def scaled(
        self,
        ids: Iterable[str],
        vols: Mapping[str, float] | None = None,
        fallback_vols: Mapping[str, float] | None = None,
        vol_mult: float = 1.0,
    ) -> FloatArray:
        """Daily covariance ``k^2 D_s R D_s`` with the volatility rules of :meth:`vols_for`."""
        ids = list(ids)
        s = self.vols_for(ids, vols, fallback_vols) * vol_mult
        return np.asarray(self.correlation(ids) * np.outer(s, s), dtype=np.float64)

    def cov(self, ids: Iterable[str]) -> FloatArray:
        """Daily EWMA covariance (bias-corrected; unready pairs 0, unready vols NaN)."""
        return self.scaled(ids)

    def scenarios(self, ids: Iterable[str]) -> FloatArray:
        """Stored per-bar return vectors ``[T, k]`` (oldest first; missing returns are 0)."""
        i = self._idx(ids)
        rows = self._ring_rows
        order = (np.arange(rows) + (self._ring_pos - rows)) % max(self.history, 1)
        return np.asarray(self._ring[np.ix_(i, order)].T, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Bar returns from marks
# ---------------------------------------------------------------------------------------


class BarReturns:
    """Turns bar-close marks into one returns dict per bar end, in event-time order.

    ``add(mark)`` files a mark under its bar end (``Mark.ts_event``); ``flush(upto_ns)``
    returns, oldest first, ``(bar_end_ns, returns, prior_vars)`` for every pending bar end
    at or before ``upto_ns``: the log return of each instrument against its last flushed
    price, and its per-bar prior variance (``daily_vol**2 / periods_per_day``). An
    instrument's first mark only records its price. A mark for a bar end already flushed
    is late: ``add`` returns False and counts it; its move is not lost, since the next
    return is taken against the last flushed price. Flushing is deterministic when every
    mark of a bar is in before the watermark passes it.
    """

    def __init__(self, periods_per_day: float = 1.0) -> None:
        self.periods_per_day = float(periods_per_day)
        self.last_price: dict[str, float] = {}
        self.pending: dict[int, dict[str, Mark]] = {}
        self.flushed_upto: int | None = None
        self.late = 0

    def add(self, mark: Mark) -> bool:
        """File a mark; False (and counted in ``late``) if its bar was already flushed."""
        if self.flushed_upto is not None and mark.ts_event <= self.flushed_upto:
            self.late += 1
            return False
        self.pending.setdefault(mark.ts_event, {})[mark.instrument_id] = mark
        return True

    def flush(self, upto_ns: int) -> list[tuple[int, dict[str, float], dict[str, float]]]:
        """Complete bars with ends at or before ``upto_ns``, oldest first."""
        out = []
        for end in sorted(e for e in self.pending if e <= upto_ns):
            returns: dict[str, float] = {}
            priors: dict[str, float] = {}
            for inst, mark in sorted(self.pending.pop(end).items()):
                if not (math.isfinite(mark.price) and mark.price > 0):
                    continue
                prev = self.last_price.get(inst)
                if prev is not None:
                    returns[inst] = math.log(mark.price / prev)
                    if math.isfinite(mark.daily_vol) and mark.daily_vol > 0:
                        priors[inst] = mark.daily_vol**2 / self.periods_per_day
                self.last_price[inst] = mark.price
            out.append((end, returns, priors))
            self.flushed_upto = end
        if self.flushed_upto is None or upto_ns > self.flushed_upto:
            self.flushed_upto = upto_ns
        return out


# ---------------------------------------------------------------------------------------
# VaR and CVaR on arrays
# ---------------------------------------------------------------------------------------


def _sigma(w: FloatArray, cov: FloatArray) -> float:
    return math.sqrt(max(float(w @ cov @ w), 0.0))


def parametric_var(
    w: npt.ArrayLike, cov: npt.ArrayLike, confidence: float = 0.95, horizon_days: float = 1.0
) -> float:
    """Normal VaR ``z sqrt(w' Sigma w) sqrt(h)`` (positive loss)."""
    w_, c_ = np.asarray(w, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    return z_score(confidence) * _sigma(w_, c_) * math.sqrt(horizon_days)


def parametric_cvar(
    w: npt.ArrayLike, cov: npt.ArrayLike, confidence: float = 0.95, horizon_days: float = 1.0
) -> float:
    """Normal expected shortfall ``sigma phi(z) / (1 - c) sqrt(h)`` (positive loss)."""
    w_, c_ = np.asarray(w, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    return es_factor(confidence) * _sigma(w_, c_) * math.sqrt(horizon_days)


def marginal_var(
    w: npt.ArrayLike,
    cov: npt.ArrayLike,
    dw: npt.ArrayLike,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
) -> float:
    """Incremental VaR of a trade ``dw``: ``VaR(w + dw) - VaR(w)`` (> 0 adds risk)."""
    w_ = np.asarray(w, dtype=np.float64)
    after = w_ + np.asarray(dw, dtype=np.float64)
    return parametric_var(after, cov, confidence, horizon_days) - parametric_var(
        w_, cov, confidence, horizon_days
    )


def var_gradient(
    w: npt.ArrayLike, cov: npt.ArrayLike, confidence: float = 0.95, horizon_days: float = 1.0
) -> FloatArray:
    """Marginal VaR per unit of cash exposure: ``z Sigma w / sqrt(w' Sigma w) sqrt(h)``.

    At a zero-risk book the one-sided derivative along each axis is ``z s_i sqrt(h)``.
    """
    w_, c_ = np.asarray(w, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    sigma = _sigma(w_, c_)
    scale = z_score(confidence) * math.sqrt(horizon_days)
    if sigma == 0.0:
        return np.asarray(scale * np.sqrt(np.maximum(np.diagonal(c_), 0.0)), dtype=np.float64)
    return np.asarray(scale * (c_ @ w_) / sigma, dtype=np.float64)


def component_var(
    w: npt.ArrayLike, cov: npt.ArrayLike, confidence: float = 0.95, horizon_days: float = 1.0
) -> FloatArray:
    """Euler contributions ``w_i dVaR/dw_i``; they sum to the VaR."""
    w_ = np.asarray(w, dtype=np.float64)
    return np.asarray(w_ * var_gradient(w_, cov, confidence, horizon_days), dtype=np.float64)


def historical_var_cvar(
    pnl: npt.ArrayLike, confidence: float = 0.95, scale: float = 1.0
) -> tuple[float, float]:
    """Historical (VaR, CVaR) of a P&L vector as positive losses, times ``scale``.

    empyrical's definitions (as :class:`operators.kernels.var.HistoricalVaR`): VaR is minus
    the linear-interpolation percentile at ``1 - c``; CVaR minus the mean of the ``k + 1``
    smallest P&Ls, ``k = int((T - 1)(1 - c))``. NaN with fewer than 2 scenarios.
    """
    srt = np.sort(np.asarray(pnl, dtype=np.float64))
    if srt.shape[0] < 2 or not np.isfinite(srt).all():
        return math.nan, math.nan
    q, es = hist_var_cvar(srt, srt.shape[0], _cutoff(confidence))
    return -q * scale, -es * scale


def historical_var(
    w: npt.ArrayLike,
    scenario_returns: npt.ArrayLike,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
) -> float:
    """Historical VaR of exposures ``w`` over scenario returns ``[T, n]`` (P&L ``R @ w``)."""
    pnl = np.asarray(scenario_returns, dtype=np.float64) @ np.asarray(w, dtype=np.float64)
    return historical_var_cvar(pnl, confidence, math.sqrt(horizon_days))[0]


def historical_cvar(
    w: npt.ArrayLike,
    scenario_returns: npt.ArrayLike,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
) -> float:
    """Historical CVaR (expected shortfall) of exposures ``w``, positive loss."""
    pnl = np.asarray(scenario_returns, dtype=np.float64) @ np.asarray(w, dtype=np.float64)
    return historical_var_cvar(pnl, confidence, math.sqrt(horizon_days))[1]


# ---------------------------------------------------------------------------------------
# Allowed quantities (closed forms and a monotone search)
# ---------------------------------------------------------------------------------------


def var_limit_quantity(
    s2: float,
    c: float,
    v: float,
    unit_cash: float,
    side: int,
    limit_s2: float,
    cap_at_min_var: bool = False,
) -> float:
    """Largest ``q >= 0`` keeping the book's variance within ``limit_s2`` (closed form).

    ``sigma^2(q) = s2 + 2 side a c q + a^2 v q^2`` with ``a = unit_cash``; the answer is not
    lot-rounded and is ``inf`` when the limit never binds.

    ``s2``: book variance ``w' Sigma w``; ``c = (Sigma w)_i``; ``v = Sigma_ii``; ``limit_s2``:
    the variance at the VaR limit, ``(limit / (z sqrt(h)))^2``.

    Rule when the book is already over the limit (``s2 > limit_s2``): a trade that increases
    risk gets 0; one that reduces it may go as far as it does not end above where it started
    (``VaR after <= max(limit, VaR before)``), or, with ``cap_at_min_var``, up to the
    minimum-variance point or the far side of the limit, whichever is larger. The allowed
    quantities always form an interval ``[0, q]``. NaN inputs give 0 (fail safe).
    """
    vals = (s2, c, v, unit_cash, limit_s2)
    if not all(math.isfinite(x) for x in vals) or unit_cash <= 0:
        return 0.0
    b = side * c  # d(sigma^2)/dx / 2 at x = 0, x = cash traded on the proposal's side
    over = s2 > limit_s2
    if v <= 0.0:  # flat in the instrument: linear (b is 0 for a PSD matrix)
        if b <= 0.0:
            return math.inf
        return 0.0 if over else (limit_s2 - s2) / (2.0 * b) / unit_cash
    if not over:
        c0 = s2 - limit_s2  # <= 0: roots straddle 0
        d = math.sqrt(max(b * b - v * c0, 0.0))
        x = -c0 / (b + d) if b > 0.0 else (d - b) / v  # stable larger root
        return max(x, 0.0) / unit_cash
    if b >= 0.0:
        return 0.0
    x_min = -b / v  # minimum-variance point
    d2 = b * b - v * (s2 - limit_s2)
    x_limit = (-b + math.sqrt(d2)) / v if d2 >= 0.0 else 0.0
    x = max(x_min, x_limit) if cap_at_min_var else 2.0 * x_min  # back to VaR before
    return x / unit_cash


def max_qty_var_budget(
    w: npt.ArrayLike,
    cov: npt.ArrayLike,
    i: int,
    unit_cash: float,
    side: int,
    budget: float,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
    cap_at_min_var: bool = False,
) -> float:
    """Largest ``q >= 0`` with ``VaR(w + side q unit_cash e_i) <= max(budget, VaR(w))``.

    ``VaR^2`` is quadratic in ``q``; the answer is its larger root (:func:`var_limit_quantity`
    has the rule when the book is over budget). Not lot-rounded; ``inf`` if it never binds.
    """
    w_, c_ = np.asarray(w, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    s2 = float(w_ @ c_ @ w_)
    c = float(c_[i] @ w_)
    limit_s2 = (budget / (z_score(confidence) * math.sqrt(horizon_days))) ** 2
    return var_limit_quantity(s2, c, float(c_[i, i]), unit_cash, side, limit_s2, cap_at_min_var)


def max_qty_gross(w: npt.ArrayLike, i: int, unit_cash: float, side: int, limit: float) -> float:
    """Largest ``q >= 0`` with gross notional ``sum |w|`` after the trade ``<= max(limit, before)``.

    Gross is ``others + |w_i + side q a|``, so ``q <= (L - others - side w_i) / a`` with
    ``L = max(limit, gross before)``: a trade that shrinks the position is allowed while the
    book is over the limit, as far as it does not end above where it started.
    """
    w_ = np.asarray(w, dtype=np.float64)
    if unit_cash <= 0 or not all(map(math.isfinite, w_.tolist())):
        return 0.0
    wi = float(w_[i])
    others = float(np.add.reduce(np.abs(w_))) - abs(wi)  # ndarray.sum without its wrapper
    cap = max(limit, others + abs(wi))
    return max(0.0, (cap - others - side * wi) / unit_cash)


def max_qty_net(w: npt.ArrayLike, unit_cash: float, side: int, limit: float) -> float:
    """Largest ``q >= 0`` with ``|sum w|`` after the trade ``<= max(limit, |net before|)``.

    Closed form ``q = (L - side net) / a``, ``L = max(limit, |net|)``.
    """
    w_ = np.asarray(w, dtype=np.float64)
    if unit_cash <= 0 or not all(map(math.isfinite, w_.tolist())):
        return 0.0
    net = float(np.add.reduce(w_))
    cap = max(limit, abs(net))
    return max(0.0, (cap - side * net) / unit_cash)


def monotone_search(
    pred: Callable[[float], bool], hi: float, lot: float, max_lots: int = 1 << 52
) -> float:
    """Largest whole number of lots ``q <= hi`` with ``pred(q)`` (0 when one lot fails).

    ``pred`` must be monotone: true up to some quantity, false beyond.

    Bisection on lots: ``O(log(hi / lot))`` calls; an infinite ``hi`` is bracketed by
    doubling first (at most ``max_lots`` lots).
    """
    if lot <= 0 or not (hi >= lot):
        return 0.0
    top = max_lots if math.isinf(hi) else min(max_lots, math.floor(hi / lot + 1e-9))
    if top < 1 or not pred(lot):
        return 0.0
    lo, k = 1, 2  # pred(lo * lot) holds
    while k <= top and pred(k * lot):
        lo, k = k, 2 * k
    if k <= top:
        hi_lots = k  # pred fails here
    elif pred(top * lot):
        return top * lot
    else:
        hi_lots = top
    while hi_lots - lo > 1:
        mid = (lo + hi_lots) // 2
        if pred(mid * lot):
            lo = mid
        else:
            hi_lots = mid
    return lo * lot


# ---------------------------------------------------------------------------------------
# Order rate
# ---------------------------------------------------------------------------------------


class OrderRate:
    """Proposals of one portfolio in the last ``window_ns`` of event time.

    ``admit(ts, key)`` records a proposal and returns how many recorded proposals fall in
    ``(ts - window_ns, ts]``, counting only those ordered at or before ``(ts, key)``, itself
    included: one exactly ``window_ns`` older is out. The count depends on timestamps and
    keys only, not on arrival order, for proposals admitted in event-time order (as the
    shard decides them); entries older than ``window_ns + keep_ns`` behind the newest are
    pruned.
    """

    def __init__(self, window_ns: int, keep_ns: int | None = None) -> None:
        if window_ns <= 0:
            raise ValueError(f"OrderRate: window_ns must be > 0, got {window_ns}")
        self.window_ns = window_ns
        self.keep_ns = window_ns if keep_ns is None else keep_ns
        self.times: list[tuple[int, str]] = []

    def count(self, ts: int, key: str = "") -> int:
        """Recorded proposals in ``(ts - window_ns, ts]`` ordered at or before ``(ts, key)``."""
        lo = bisect.bisect_left(self.times, (ts - self.window_ns + 1, ""))
        return max(0, bisect.bisect_right(self.times, (ts, key)) - lo)

    def admit(self, ts: int, key: str = "") -> int:
        """Record a proposal at ``ts``; return the count in the window, itself included."""
        bisect.insort(self.times, (ts, key))
        n = self.count(ts, key)
        floor = self.times[-1][0] - self.window_ns - self.keep_ns
        if self.times[0][0] <= floor:
            del self.times[: bisect.bisect_right(self.times, (floor, "\U0010ffff"))]
        return n

    def snapshot(self) -> OrderRate:
        """An independent deep copy."""
        return copy.deepcopy(self)


# ---------------------------------------------------------------------------------------
# Per-decision risk
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeRisk:
    """Risk of a proposal against its book: figures in currency, positive = loss."""

    var_before: float
    var_after: float
    cvar_before: float
    cvar_after: float
    marginal_var: float
    """``var_after - var_before`` (> 0: the trade adds risk)."""
    var_gradient: float
    """dVaR/dq at the current book, per unit of quantity on the proposal's side."""
    max_quantity: float
    """Largest quantity within the VaR limit (not lot-rounded; ``inf``: never binds)."""
    var_limit: float
    """The VaR the book may reach (the limit ``max_quantity`` was solved for)."""
    instrument_vol: float
    """Daily volatility of the proposal's instrument, as used (multiplier included)."""
    hist_var_before: float = math.nan
    hist_var_after: float = math.nan
    hist_cvar_before: float = math.nan
    hist_cvar_after: float = math.nan

    @property
    def ok(self) -> bool:
        """Whether the parametric figures could be computed (no NaN volatility)."""
        return math.isfinite(self.var_before) and math.isfinite(self.var_after)


@dataclass(frozen=True, slots=True)
class BookMoments:
    """Variance terms of a book and one instrument: ``sigma^2(x) = s2 + 2 x c + x^2 v``."""

    s2: float
    c: float
    v: float
    vol: float


def book_moments_for(
    model: EwmaCovariance,
    exposures: Mapping[str, float],
    instrument_id: str,
    vols: Mapping[str, float] | None = None,
    fallback_vols: Mapping[str, float] | None = None,
    vol_mult: float = 1.0,
) -> BookMoments:
    """``w' Sigma w``, ``(Sigma w)_i`` and ``Sigma_ii`` of a book and one instrument.

    Correlations from the model, volatilities by the rules of :meth:`EwmaCovariance.vols_for`.
    """
    keys = list(exposures)
    weights = list(exposures.values())
    if instrument_id in exposures:
        p = keys.index(instrument_id)
    else:
        p = len(keys)
        keys.append(instrument_id)
        weights.append(0.0)
    w = np.array(weights, dtype=np.float64)
    get = model.index.get
    pos = np.array([get(k, -1) for k in keys], dtype=np.int64)
    first = _per_key(keys, vols)
    last = _per_key(keys, fallback_vols)
    s2, c, vol = book_moments(
        model._m, pos, w, first, model.daily_vols(), last, vol_mult, model.corr_scales(), p
    )
    return BookMoments(max(s2, 0.0) if math.isfinite(s2) else s2, c, vol * vol, vol)


_NONE = np.empty(0)


def _per_key(keys: Iterable[str], values: Mapping[str, float] | None) -> FloatArray:
    if not values:
        return _NONE
    get = values.get
    return np.array([get(k, math.nan) for k in keys], dtype=np.float64)


def trade_risk(
    model: EwmaCovariance,
    exposures: Mapping[str, float],
    instrument_id: str,
    unit_cash: float,
    side: int,
    quantity: float,
    *,
    var_budget: float = math.inf,
    budget_kind: str = "marginal",
    confidence: float = 0.95,
    horizon_days: float = 1.0,
    vols: Mapping[str, float] | None = None,
    fallback_vols: Mapping[str, float] | None = None,
    vol_mult: float = 1.0,
    cap_at_min_var: bool = False,
    historical: bool = True,
) -> TradeRisk:
    """Everything the decision needs about a proposal's risk, in one pass over the book.

    ``exposures``: the book's signed cash per instrument before the trade (BookView
    notionals); the trade adds ``side * quantity * unit_cash`` to ``instrument_id``.
    ``budget_kind``: ``"marginal"`` (``VaR after - VaR before <= var_budget``) or
    ``"portfolio"`` (``VaR after <= max(var_budget, VaR before)``). Historical figures are
    plain historical simulation over the model's stored bars (no volatility scaling),
    scaled by ``sqrt(periods_per_day * horizon_days)``; NaN with fewer than 2 stored bars or
    when an exposed instrument (or the proposal's) joined the universe inside the window.
    """
    if budget_kind not in ("marginal", "portfolio"):
        raise ValueError(
            f"trade_risk: budget_kind must be marginal or portfolio, got {budget_kind}"
        )
    mom = book_moments_for(model, exposures, instrument_id, vols, fallback_vols, vol_mult)
    dx = side * quantity * unit_cash
    s2_after = max(mom.s2 + 2.0 * dx * mom.c + dx * dx * mom.v, 0.0)
    root_h = math.sqrt(horizon_days)
    zh = z_score(confidence) * root_h
    eh = es_factor(confidence) * root_h
    sigma, sigma_after = math.sqrt(mom.s2), math.sqrt(s2_after)
    var_before, var_after = zh * sigma, zh * sigma_after
    # dVaR/dq at the book; at a riskless book the one-sided derivative z s_i a sqrt(h)
    grad = zh * side * unit_cash * mom.c / sigma if sigma > 0 else zh * unit_cash * mom.vol
    # the solver applies max(limit, VaR before) itself: give it the budget, not the max
    solve_for = var_before + var_budget if budget_kind == "marginal" else var_budget
    limit = max(solve_for, var_before) if math.isfinite(var_before) else math.nan
    limit_s2 = (solve_for / zh) ** 2 if math.isfinite(solve_for) else math.inf
    if math.isinf(limit_s2):
        max_q = math.inf if math.isfinite(mom.s2 + mom.c + mom.v) else 0.0
    else:
        max_q = var_limit_quantity(mom.s2, mom.c, mom.v, unit_cash, side, limit_s2, cap_at_min_var)
    hist = (math.nan,) * 4
    if historical and model.history and model._ring_rows >= 2:
        hist = _historical(model, exposures, instrument_id, dx, confidence, horizon_days)
    return TradeRisk(
        var_before,
        var_after,
        eh * sigma,
        eh * sigma_after,
        var_after - var_before,
        grad,
        max_q,
        limit,
        mom.vol,
        *hist,
    )


def _historical(
    model: EwmaCovariance,
    exposures: Mapping[str, float],
    instrument_id: str,
    dx: float,
    confidence: float,
    horizon_days: float,
) -> tuple[float, float, float, float]:
    nan4 = (math.nan,) * 4
    get = model.index.get
    p = get(instrument_id, -1)
    w = np.fromiter(exposures.values(), dtype=np.float64, count=len(exposures))
    pos = np.fromiter((get(k, -1) for k in exposures), dtype=np.int64, count=len(exposures))
    rows = model._ring_rows
    if p < 0 or ((pos < 0) & (w != 0.0)).any():
        return nan4  # an exposed instrument without stored returns
    held = np.append(pos[w != 0.0], p)
    if (model.bars - model._join[held] < rows).any():
        return nan4  # joined inside the window: its earlier rows are zeros, not history
    cut = _cutoff(confidence)
    qb, eb, qa, ea = scenario_var_pair(model._ring, rows, pos, w, p, dx, cut)
    scale = math.sqrt(model.periods_per_day * horizon_days)
    vb, cb, va, ca = -qb * scale, -eb * scale, -qa * scale, -ea * scale
    return vb, va, cb, ca


# ---------------------------------------------------------------------------------------
# Checks (operators.checks pattern: each returns the cap it implies and its reason)
# ---------------------------------------------------------------------------------------


def _over(qty: float, cap: float) -> bool:
    return qty > cap * (1.0 + TOLERANCE) + 1e-12


def check_var_budget(
    qty: float, risk: TradeRisk, budget: float, budget_kind: str = "marginal"
) -> Cap:
    """VaR limit: cap at ``risk.max_quantity``; no risk figures at all is a fail-safe 0."""
    if not risk.ok or math.isnan(risk.max_quantity):
        return Cap(
            0.0, Reason("NO_RISK_MODEL", "no volatility for an instrument of the book or trade")
        )
    if not _over(qty, risk.max_quantity):
        return Cap(risk.max_quantity, None)
    if budget_kind == "marginal":
        why = f"marginal 1-day VaR {risk.marginal_var:,.0f} exceeds budget {budget:,.0f}"
        return Cap(risk.max_quantity, Reason("VAR_BUDGET", why, risk.marginal_var, budget))
    why = f"1-day VaR after {risk.var_after:,.0f} exceeds limit {budget:,.0f}"
    return Cap(risk.max_quantity, Reason("VAR_LIMIT", why, risk.var_after, budget))


def _aligned(exposures: Mapping[str, float], instrument_id: str) -> tuple[FloatArray, int]:
    weights = list(exposures.values())
    if instrument_id in exposures:
        return np.array(weights, dtype=np.float64), list(exposures).index(instrument_id)
    weights.append(0.0)
    return np.array(weights, dtype=np.float64), len(exposures)


def check_gross_notional(
    qty: float,
    side: int,
    exposures: Mapping[str, float],
    instrument_id: str,
    unit_cash: float,
    limit: float,
) -> Cap:
    """Gross notional ``sum |w|`` after the trade must stay within ``limit`` (closed form)."""
    w, i = _aligned(exposures, instrument_id)
    cap = max_qty_gross(w, i, unit_cash, side, limit)
    if not _over(qty, cap):
        return Cap(cap, None)
    w[i] += side * qty * unit_cash
    gross = float(np.abs(w).sum())
    why = f"gross notional would be {gross:,.0f}, limit {limit:,.0f}"
    return Cap(cap, Reason("GROSS_NOTIONAL", why, gross, limit))


def check_net_notional(
    qty: float,
    side: int,
    exposures: Mapping[str, float],
    instrument_id: str,
    unit_cash: float,
    limit: float,
) -> Cap:
    """``|net notional|`` after the trade must stay within ``limit`` (closed form)."""
    w, _ = _aligned(exposures, instrument_id)
    cap = max_qty_net(w, unit_cash, side, limit)
    if not _over(qty, cap):
        return Cap(cap, None)
    net = float(w.sum()) + side * qty * unit_cash
    why = f"net notional would be {net:,.0f}, limit {limit:,.0f}"
    return Cap(cap, Reason("NET_NOTIONAL", why, abs(net), limit))


def check_order_rate(count: int, limit: int, window_ns: int) -> Cap | None:
    """At most ``limit`` proposals per portfolio in ``window_ns`` (``count`` includes this one)."""
    if count <= limit:
        return None
    why = f"{count} proposals in {window_ns / 1e9:g}s, limit {limit}"
    return Cap(0.0, Reason("ORDER_RATE", why, float(count), float(limit)))
