"""Volatility baselines, the regime-weighted ensemble and split-conformal intervals.

Everything here is NumPy (plus ``arch`` for fitting GARCH offline); nothing imports torch,
so the serving path (:class:`VolEnsemble`, :class:`LogVolHistory`, :class:`GarchVariance`)
runs in the dataflow next to ONNX Runtime.

Target
    Per-bar log returns ``r``. The realized volatility over the bars ``t-h+1..t`` is
    ``rv[t] = sqrt(mean(r**2) + VOL_FLOOR**2)`` (per-bar, not annualised; the floor only
    matters for flat series) and :func:`log_realized_vol` returns ``log rv``. At an origin
    ``t`` (after bar ``t`` closed) the target is ``log rv[t + h]``: the log realized vol of
    the *next* ``h`` bars (:func:`future_log_rv`).
Baselines (causal: each forecast at ``t`` uses returns up to ``t`` only)
    EWMA (RiskMetrics, lambda 0.94) and GARCH(1,1), both zero-mean as arch's ``ZeroMean``
    with arch's 75-observation backcast. arch wants returns scaled by 100; these
    functions take raw returns and scale internally, and return raw (per-bar) variances.
    The GARCH baseline has per-series parameters fitted on the training span. The GARCH
    member that is served (and blended) has the pooled (alpha, beta) of those fits and
    its intercept targets a slow EWMA of squared returns (:func:`targeted_garch`), so it
    needs no per-instrument fit; it forecasts better than the fitted one on the test span.
    The baseline forecast of the target is ``0.5 * log(mean variance over the next h
    bars) + gaussian_log_bias(h)``: the expected log of a ``h``-bar realized vol when
    returns are Gaussian with that variance (the bias is -0.107 for h = 5).
Ensemble
    Per regime ``k`` a weight vector ``W[k]`` on the simplex over (N-BEATS, EWMA, GARCH)
    and an intercept ``b[k]``, fitted on a validation span by exact simplex-constrained
    least squares (:func:`fit_simplex_weights`). At serve time the regime probabilities
    ``p`` blend them: ``w = p @ W`` (still on the simplex), ``b = p @ b``.
Intervals
    Split-conformal on ``|y - y_hat|`` in log space, per regime (Mondrian): ``q[k]`` is
    the ``ceil((n_k + 1) * coverage)``-th smallest calibration score of regime ``k``
    (regimes with too few calibration rows use the pooled quantile). Short, violent
    regimes (liquidity crisis, dislocation) have wider residuals, so one pooled
    quantile under-covers them. At serve time the half-width is ``p @ q`` and the
    interval is ``exp(y_hat -/+ p @ q)``: exactly the Mondrian interval when ``p`` is
    one-hot.
Serving, per instrument at each bar close (``ens = VolEnsemble.load()``)
    Keep ``ens.history_state()`` and ``ens.garch_state()`` per instrument and feed both
    the bar's log return; take ``ewma_var = ewm_vol_0.94 ** 2`` from the feature kernels.
    Stack the ready histories into one ``[B, L]`` float32 batch, run the ONNX model once
    (``load_model("vol_nbeats").run({"history": batch})["forecast"][:, 0]``), then
    ``ens.forecast_batch(nbeats, ewma_var, garch_mean_var, regime_probs)`` gives
    ``(vol, lo, hi)`` per row; ``regime_probs`` is ``(7,)`` (one market) or ``(B, 7)``.
    :func:`psi_inputs` gives the values to feed ``models.drift.PsiMonitor``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from scipy.special import digamma

from models.regimes import REGIMES

FloatArray = npt.NDArray[np.float64]

MODEL_NAME = "vol_nbeats"
"""Manifest entry that carries the ensemble's weights and conformal quantiles."""
DEFAULT_H = 5
"""Forecast horizon in bars."""
DEFAULT_L = 64
"""N-BEATS history length (trailing log realized vols)."""
VOL_FLOOR = 1e-5
"""Per-bar volatility floor inside the log (0.1 bp)."""
ARCH_SCALE = 100.0
"""arch fits returns in percent (FACTS.md)."""
EWMA_LAMBDA = 0.94
BACKCAST_OBS = 75
BACKCAST_DECAY = 0.94
LONG_RUN_LAMBDA = 0.995
"""Decay of the slow EWMA level the served GARCH targets (half-life about 140 bars)."""
COMPONENTS: tuple[str, ...] = ("nbeats", "ewma", "garch")
"""Ensemble members, in weight-vector order."""
DEFAULT_COVERAGE = 0.9
PSI_FEATURES: tuple[str, ...] = ("nbeats_logvol_in", "ewma_logvol", "garch_logvol")
"""Live inputs watched for drift (:func:`psi_inputs`)."""


# ---------------------------------------------------------------------------------------
# Target


def log_realized_vol(returns: npt.ArrayLike, window: int = DEFAULT_H) -> FloatArray:
    """``log sqrt(mean(r[t-window+1..t]**2) + VOL_FLOOR**2)`` per ``t``; NaN before ``window-1``.

    NaN returns propagate into every window that holds them.
    """
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(r.shape[0], np.nan)
    if window < 1:
        raise ValueError(f"log_realized_vol: window must be >= 1, got {window}")
    if r.shape[0] < window:
        return out
    sq = np.lib.stride_tricks.sliding_window_view(r * r, window)
    out[window - 1 :] = 0.5 * np.log(sq.mean(axis=1) + VOL_FLOOR**2)
    return out


def future_log_rv(returns: npt.ArrayLike, h: int = DEFAULT_H) -> FloatArray:
    """Target at each origin ``t``: log realized vol of ``r[t+1..t+h]``; NaN at the end."""
    trailing = log_realized_vol(returns, h)
    out = np.full(trailing.shape[0], np.nan)
    out[: trailing.shape[0] - h] = trailing[h:]
    return out


def gaussian_log_bias(h: int) -> float:
    """``E[log sqrt(chi2_h / h)]``: the mean log of an ``h``-bar realized vol over sigma."""
    return float(0.5 * (digamma(h / 2.0) + math.log(2.0 / h)))


def logvol_from_var(mean_var: npt.ArrayLike, h: int = DEFAULT_H) -> FloatArray:
    """Baseline forecast of the target from a mean per-bar variance forecast."""
    v = np.asarray(mean_var, dtype=np.float64)
    return np.asarray(0.5 * np.log(v + VOL_FLOOR**2) + gaussian_log_bias(h), dtype=np.float64)


def psi_inputs(
    history_last: npt.ArrayLike, ewma_var: npt.ArrayLike, garch_var: npt.ArrayLike
) -> dict[str, FloatArray]:
    """The drift-watched inputs (:data:`PSI_FEATURES`), as the training reference has them.

    ``history_last``: newest value of the N-BEATS history; ``ewma_var``, ``garch_var``: the
    member variances given to :meth:`VolEnsemble.forecast`, as log vols.
    """
    return {
        "nbeats_logvol_in": np.asarray(history_last, dtype=np.float64),
        "ewma_logvol": 0.5 * np.log(np.asarray(ewma_var, dtype=np.float64) + VOL_FLOOR**2),
        "garch_logvol": 0.5 * np.log(np.asarray(garch_var, dtype=np.float64) + VOL_FLOOR**2),
    }


def nbeats_histories(
    returns: npt.ArrayLike, length: int = DEFAULT_L, h: int = DEFAULT_H
) -> FloatArray:
    """N-BEATS input at every origin: row ``t`` = trailing log realized vols ``t-L+1..t``.

    Rows whose window is not complete are NaN. Shape ``(len(returns), length)``.
    """
    x = log_realized_vol(returns, h)
    out = np.full((x.shape[0], length), np.nan)
    if x.shape[0] >= length:
        out[length - 1 :] = np.lib.stride_tricks.sliding_window_view(x, length)
    return out


class LogVolHistory:
    """Per-instrument N-BEATS input, updated bar by bar (serving side of :func:`nbeats_histories`).

    Keeps the last ``length + h - 1`` returns; :meth:`get` is the ``[length]`` float32
    history of trailing ``h``-bar log realized vols, or None until enough bars exist.
    Non-finite returns are ignored (no bar).
    """

    __slots__ = ("_returns", "h", "length")

    def __init__(self, length: int = DEFAULT_L, h: int = DEFAULT_H) -> None:
        if length < 1 or h < 1:
            raise ValueError(f"LogVolHistory: need length, h >= 1, got {length}, {h}")
        self.length = length
        self.h = h
        self._returns: deque[float] = deque(maxlen=length + h - 1)

    @property
    def name(self) -> str:
        """Feature name, e.g. ``logrv_5_hist_64``."""
        return f"logrv_{self.h}_hist_{self.length}"

    @property
    def ready(self) -> bool:
        """True once a full history exists."""
        return len(self._returns) == self._returns.maxlen

    def update(self, r: float) -> Self:
        """Add one bar's log return."""
        if math.isfinite(r):
            self._returns.append(float(r))
        return self

    def get(self) -> npt.NDArray[np.float32] | None:
        """The ``[length]`` history (oldest first), or None when not ready."""
        if not self.ready:
            return None
        x = log_realized_vol(np.fromiter(self._returns, dtype=np.float64), self.h)
        return x[self.h - 1 :].astype(np.float32)

    def snapshot(self) -> LogVolHistory:
        """A deep copy (Bytewax state snapshot)."""
        out = LogVolHistory(self.length, self.h)
        out._returns.extend(self._returns)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"length": self.length, "h": self.h, "returns": list(self._returns)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.length = state["length"]
        self.h = state["h"]
        self._returns = deque(state["returns"], maxlen=self.length + self.h - 1)


# ---------------------------------------------------------------------------------------
# Baselines


def arch_backcast(resids: npt.ArrayLike) -> float:
    """Backcast as arch computes it: mean of the first 75 squared residuals, weights 0.94**i."""
    e = np.asarray(resids, dtype=np.float64)
    tau = min(BACKCAST_OBS, e.shape[0])
    w = BACKCAST_DECAY ** np.arange(tau)
    return float(np.sum(e[:tau] ** 2 * (w / w.sum())))


def ewma_variance(returns: npt.ArrayLike, lam: float = EWMA_LAMBDA) -> FloatArray:
    """Conditional variance of arch's ``EWMAVariance(lam)`` of raw returns, zero mean.

    ``s2[0]`` is the backcast; ``s2[t] = (1 - lam) * r[t-1]**2 + lam * s2[t-1]``: the
    variance of ``r[t]`` given returns before ``t``. Computed on returns times 100 (as
    arch) and returned in raw units.
    """
    e = np.asarray(returns, dtype=np.float64) * ARCH_SCALE
    s2 = np.empty(e.shape[0])
    prev = arch_backcast(e)
    for t in range(e.shape[0]):
        if t > 0:
            prev = (1.0 - lam) * e[t - 1] ** 2 + lam * prev
        s2[t] = prev
    return s2 / ARCH_SCALE**2


def ewma_forecast(returns: npt.ArrayLike, lam: float = EWMA_LAMBDA) -> FloatArray:
    """Variance forecast for ``r[t+1]`` (and every later bar) made at origin ``t``."""
    r = np.asarray(returns, dtype=np.float64)
    s2 = ewma_variance(r, lam)
    return np.asarray((1.0 - lam) * r**2 + lam * s2, dtype=np.float64)


@dataclass(frozen=True)
class GarchParams:
    """GARCH(1,1) on raw per-bar returns: ``s2[t] = omega + alpha r[t-1]**2 + beta s2[t-1]``."""

    omega: float
    alpha: float
    beta: float

    @property
    def persistence(self) -> float:
        """``alpha + beta``."""
        return self.alpha + self.beta

    def scaled(self) -> FloatArray:
        """Parameter vector as arch has it (returns in percent): omega * 1e4, alpha, beta."""
        return np.array([self.omega * ARCH_SCALE**2, self.alpha, self.beta])

    @classmethod
    def from_arch(cls, params: Sequence[float]) -> GarchParams:
        """From arch's ``[omega, alpha[1], beta[1]]`` fitted on returns times 100."""
        omega, alpha, beta = (float(p) for p in params)
        return cls(omega / ARCH_SCALE**2, alpha, beta)

    def mean_var(self, next_var: npt.ArrayLike, h: int) -> FloatArray:
        """Mean of the 1..h-step variance forecasts given the one-step ``next_var``."""
        v = np.asarray(next_var, dtype=np.float64)
        total, step = np.zeros_like(v), v
        for _ in range(h):
            total = total + step
            step = self.omega + self.persistence * step
        return np.asarray(total / h, dtype=np.float64)


def fit_garch(returns: npt.ArrayLike) -> GarchParams:
    """Fit zero-mean Gaussian GARCH(1,1) with arch on returns times 100."""
    from arch import arch_model

    r = np.asarray(returns, dtype=np.float64)
    model = arch_model(r * ARCH_SCALE, mean="Zero", vol="GARCH", p=1, q=1, rescale=False)
    res = model.fit(disp="off", show_warning=False)
    return GarchParams.from_arch(res.params.to_numpy())


def garch_variance(returns: npt.ArrayLike, params: GarchParams) -> FloatArray:
    """Conditional variance of ``r[t]`` given returns before ``t`` (arch's recursion).

    ``s2[0] = omega + (alpha + beta) * backcast`` with arch's backcast over the series'
    first 75 returns; raw units in and out (scaled internally as arch).
    """
    e = np.asarray(returns, dtype=np.float64) * ARCH_SCALE
    omega, alpha, beta = params.scaled()
    s2 = np.empty(e.shape[0])
    bc = arch_backcast(e)
    prev_e2, prev_s2 = bc, bc
    for t in range(e.shape[0]):
        prev_s2 = omega + alpha * prev_e2 + beta * prev_s2
        s2[t] = prev_s2
        prev_e2 = e[t] ** 2
    return s2 / ARCH_SCALE**2


def garch_forecast(returns: npt.ArrayLike, params: GarchParams, h: int = DEFAULT_H) -> FloatArray:
    """Mean variance over bars ``t+1..t+h`` forecast at origin ``t``."""
    r = np.asarray(returns, dtype=np.float64)
    s2 = garch_variance(r, params)
    nxt = params.omega + params.alpha * r**2 + params.beta * s2
    return params.mean_var(nxt, h)


def targeted_garch(
    returns: npt.ArrayLike, alpha: float, beta: float, lam: float = LONG_RUN_LAMBDA
) -> tuple[FloatArray, FloatArray]:
    """GARCH(1,1) variance-targeted to a slow EWMA level: ``(next_var, level)`` per origin.

    ``level[t] = lam * level[t-1] + (1 - lam) * r[t]**2`` and
    ``next_var[t] = (1 - alpha - beta) * level[t] + alpha * r[t]**2 + beta * next_var[t-1]``
    is the variance forecast for ``r[t+1]``; both start from arch's backcast. One
    (alpha, beta) pair then serves any instrument: the intercept follows its own level.
    """
    r = np.asarray(returns, dtype=np.float64)
    e2 = r * r
    persistence = alpha + beta
    level = s2 = arch_backcast(r * ARCH_SCALE) / ARCH_SCALE**2
    next_var, levels = np.empty(r.shape[0]), np.empty(r.shape[0])
    for t in range(r.shape[0]):
        level = lam * level + (1.0 - lam) * e2[t]
        s2 = (1.0 - persistence) * level + alpha * e2[t] + beta * s2
        next_var[t], levels[t] = s2, level
    return next_var, levels


def targeted_mean_var(
    next_var: npt.ArrayLike, level: npt.ArrayLike, alpha: float, beta: float, h: int
) -> FloatArray:
    """Mean of the 1..h-step variance forecasts of :func:`targeted_garch` (level held)."""
    persistence = alpha + beta
    step = np.asarray(next_var, dtype=np.float64)
    omega = (1.0 - persistence) * np.asarray(level, dtype=np.float64)
    total = np.zeros_like(step)
    for _ in range(h):
        total = total + step
        step = omega + persistence * step
    return np.asarray(total / h, dtype=np.float64)


def targeted_garch_forecast(
    returns: npt.ArrayLike, alpha: float, beta: float, h: int = DEFAULT_H
) -> FloatArray:
    """Mean variance over bars ``t+1..t+h`` at each origin ``t`` (the served GARCH member)."""
    next_var, level = targeted_garch(returns, alpha, beta)
    return targeted_mean_var(next_var, level, alpha, beta, h)


class GarchVariance:
    """Running served GARCH member per instrument (bar by bar :func:`targeted_garch`).

    The first ``backcast_obs`` returns are buffered to build arch's backcast and
    replayed; after that each update is O(1). Construct it with
    ``VolEnsemble.garch_default`` (pooled alpha, beta of the training fits).
    """

    __slots__ = ("_level", "_pending", "_s2", "alpha", "backcast_obs", "beta")

    def __init__(self, params: GarchParams, backcast_obs: int = BACKCAST_OBS) -> None:
        if params.alpha < 0 or params.beta < 0 or params.persistence >= 1.0:
            raise ValueError(f"GarchVariance: need alpha, beta >= 0, alpha + beta < 1: {params}")
        self.alpha = params.alpha
        self.beta = params.beta
        self.backcast_obs = backcast_obs
        self._pending: list[float] | None = []
        self._s2 = math.nan
        self._level = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``garch_var_0.18_0.78``."""
        return f"garch_var_{self.alpha:.2f}_{self.beta:.2f}"

    @property
    def ready(self) -> bool:
        """True once the backcast is known."""
        return self._pending is None

    def update(self, r: float) -> Self:
        """Add one bar's log return (non-finite values are skipped)."""
        if not math.isfinite(r):
            return self
        if self._pending is None:
            e2 = r * r
            self._level = LONG_RUN_LAMBDA * self._level + (1.0 - LONG_RUN_LAMBDA) * e2
            persistence = self.alpha + self.beta
            self._s2 = (1.0 - persistence) * self._level + self.alpha * e2 + self.beta * self._s2
            return self
        self._pending.append(float(r))
        if len(self._pending) == self.backcast_obs:
            next_var, level = targeted_garch(self._pending, self.alpha, self.beta)
            self._s2, self._level = float(next_var[-1]), float(level[-1])
            self._pending = None
        return self

    def get(self) -> float:
        """Variance forecast for the next bar; NaN until ready."""
        return self._s2

    def mean_var(self, h: int = DEFAULT_H) -> float:
        """Mean variance forecast over the next ``h`` bars; NaN until ready."""
        if not self.ready:
            return math.nan
        return float(targeted_mean_var(self._s2, self._level, self.alpha, self.beta, h))

    def snapshot(self) -> GarchVariance:
        """A deep copy (Bytewax state snapshot)."""
        out = GarchVariance(GarchParams(0.0, self.alpha, self.beta), self.backcast_obs)
        out._pending = None if self._pending is None else list(self._pending)
        out._s2, out._level = self._s2, self._level
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ---------------------------------------------------------------------------------------
# Ensemble weights


def fit_simplex_weights(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, float]:
    """Least squares ``y ~ x @ w + b`` with ``w >= 0``, ``sum(w) = 1``, free ``b``; exact.

    Solves the equality-constrained problem on every support set and keeps the best
    feasible one (fine for a handful of members).
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 2 or ya.shape != (xa.shape[0],) or xa.shape[0] == 0:
        raise ValueError(f"fit_simplex_weights: bad shapes {xa.shape}, {ya.shape}")
    xm, ym = xa.mean(axis=0), ya.mean()
    xc, yc = xa - xm, ya - ym
    gram, cross = xc.T @ xc, xc.T @ yc
    k = xa.shape[1]
    best_w, best_loss = np.full(k, 1.0 / k), math.inf
    for mask in range(1, 1 << k):
        idx = [i for i in range(k) if mask >> i & 1]
        n = len(idx)
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = 2.0 * gram[np.ix_(idx, idx)]
        kkt[:n, n] = kkt[n, :n] = 1.0
        rhs = np.r_[2.0 * cross[idx], 1.0]
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
        if np.any(sol < -1e-12):
            continue
        w = np.zeros(k)
        w[idx] = np.clip(sol, 0.0, None)
        w /= w.sum()
        loss = float(w @ gram @ w - 2.0 * cross @ w)
        if loss < best_loss - 1e-15:
            best_w, best_loss = w, loss
    return best_w, float(ym - xm @ best_w)


def fit_regime_weights(
    x: npt.ArrayLike, y: npt.ArrayLike, regime: npt.ArrayLike, min_count: int = 100
) -> tuple[FloatArray, FloatArray]:
    """Per-regime simplex weights ``(7, members)`` and intercepts ``(7,)``.

    ``regime`` holds codes in model order; a regime with fewer than ``min_count`` rows
    gets the weights fitted on all rows.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    codes = np.asarray(regime, dtype=np.int64)
    w_all, b_all = fit_simplex_weights(xa, ya)
    weights = np.tile(w_all, (len(REGIMES), 1))
    bias = np.full(len(REGIMES), b_all)
    for k in range(len(REGIMES)):
        rows = codes == k
        if rows.sum() >= min_count:
            weights[k], bias[k] = fit_simplex_weights(xa[rows], ya[rows])
    return weights, bias


def blend(
    weights: npt.ArrayLike, bias: npt.ArrayLike, probs: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Probability-weighted weight vectors and intercepts: ``(p @ W, p @ b)``.

    ``probs`` is ``(7,)`` or ``(B, 7)``; rows are renormalised to sum to 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum(axis=-1, keepdims=True)
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(total <= 0):
        raise ValueError(f"regime probabilities must be finite, >= 0 and not all 0: {p}")
    p = p / total
    return p @ np.asarray(weights, dtype=np.float64), p @ np.asarray(bias, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Conformal


def conformal_quantile(scores: npt.ArrayLike, coverage: float = DEFAULT_COVERAGE) -> float:
    """Split-conformal quantile: the ``ceil((n + 1) * coverage)``-th smallest score."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    k = math.ceil((s.shape[0] + 1) * coverage)
    if s.shape[0] == 0 or k > s.shape[0]:
        return math.inf
    return float(s[k - 1])


def regime_quantiles(
    scores: npt.ArrayLike,
    regime: npt.ArrayLike,
    coverage: float = DEFAULT_COVERAGE,
    min_count: int = 200,
) -> FloatArray:
    """Mondrian conformal quantile per regime ``(7,)``; pooled where ``< min_count`` rows."""
    s = np.asarray(scores, dtype=np.float64)
    codes = np.asarray(regime, dtype=np.int64)
    pooled = conformal_quantile(s, coverage)
    out = np.full(len(REGIMES), pooled)
    for k in range(len(REGIMES)):
        rows = codes == k
        if rows.sum() >= min_count:
            out[k] = conformal_quantile(s[rows], coverage)
    return out


def coverage_rate(y: npt.ArrayLike, lo: npt.ArrayLike, hi: npt.ArrayLike) -> float:
    """Share of ``y`` inside ``[lo, hi]``."""
    ya = np.asarray(y, dtype=np.float64)
    return float(np.mean((ya >= np.asarray(lo)) & (ya <= np.asarray(hi))))


# ---------------------------------------------------------------------------------------
# Serving


@dataclass(frozen=True)
class VolEnsemble:
    """What the decision step calls: blend the members by regime, add a conformal band.

    All volatilities are per bar (not annualised); variances are of raw log returns.
    """

    weights: FloatArray
    """``(7, 3)`` simplex weights per regime over :data:`COMPONENTS`."""
    bias: FloatArray
    """``(7,)`` intercepts per regime, log-vol units."""
    quantiles: Mapping[float, FloatArray]
    """Conformal quantile of ``|log-vol residual|`` per regime ``(7,)``, by nominal coverage."""
    h: int = DEFAULT_H
    length: int = DEFAULT_L
    garch_default: GarchParams = field(default_factory=lambda: GarchParams(0.0, 0.08, 0.9))
    """Pooled (alpha, beta) of the served GARCH member (:class:`GarchVariance`)."""

    def __post_init__(self) -> None:
        """Validate shapes and that each regime's weights are on the simplex."""
        w = np.asarray(self.weights, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64)
        if w.shape != (len(REGIMES), len(COMPONENTS)) or b.shape != (len(REGIMES),):
            raise ValueError(f"VolEnsemble: weights {w.shape}, bias {b.shape}")
        if np.any(w < 0) or not np.allclose(w.sum(axis=1), 1.0):
            raise ValueError(f"VolEnsemble: weights must be >= 0 and sum to 1: {w}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)
        q = {float(c): np.broadcast_to(np.asarray(v, dtype=np.float64), (len(REGIMES),)).copy()
             for c, v in self.quantiles.items()}  # fmt: skip
        if any(np.any(~(v > 0)) for v in q.values()):
            raise ValueError(f"VolEnsemble: conformal quantiles must be > 0: {q}")
        object.__setattr__(self, "quantiles", q)

    @property
    def log_bias(self) -> float:
        """:func:`gaussian_log_bias` of the horizon."""
        return gaussian_log_bias(self.h)

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> VolEnsemble:
        """From the manifest entry's ``extra`` (see ``export.nbeats``)."""
        ens = extra["ensemble"]
        g = extra.get("garch_default", {"alpha": 0.08, "beta": 0.9})
        return cls(
            weights=np.array([ens["weights"][r.value] for r in REGIMES]),
            bias=np.array([ens["bias"][r.value] for r in REGIMES]),
            quantiles={
                float(c): np.array([q[r.value] for r in REGIMES])
                for c, q in extra["conformal"]["quantiles"].items()
            },
            h=int(extra["h"]),
            length=int(extra["L"]),
            garch_default=GarchParams(0.0, float(g["alpha"]), float(g["beta"])),
        )

    @classmethod
    def load(cls, manifest: Path | None = None, name: str = MODEL_NAME) -> VolEnsemble:
        """Read weights and quantiles from ``manifest`` (default models/artifacts)."""
        from export.manifest import MANIFEST, load_manifest

        entries = load_manifest(manifest or MANIFEST)
        if name not in entries:
            raise KeyError(f"VolEnsemble.load: {name!r} not in the manifest")
        return cls.from_extra(entries[name].extra)

    def quantile(
        self, coverage: float = DEFAULT_COVERAGE, regime_probs: npt.ArrayLike | None = None
    ) -> FloatArray:
        """Conformal half-width in log-vol: ``p @ q`` for one of the stored coverages.

        Without ``regime_probs``: the ``(7,)`` per-regime quantiles.
        """
        for level, q in self.quantiles.items():
            if abs(level - coverage) < 1e-9:
                if regime_probs is None:
                    return q
                p = np.asarray(regime_probs, dtype=np.float64)
                return np.asarray(p @ q / p.sum(axis=-1), dtype=np.float64)
        raise ValueError(f"no conformal quantile for coverage {coverage}: {sorted(self.quantiles)}")

    def members(
        self, nbeats_logvol: npt.ArrayLike, ewma_var: npt.ArrayLike, garch_var: npt.ArrayLike
    ) -> FloatArray:
        """``(..., 3)`` member forecasts of the target (log-vol)."""
        return np.stack(
            [
                np.asarray(nbeats_logvol, dtype=np.float64),
                logvol_from_var(ewma_var, self.h),
                logvol_from_var(garch_var, self.h),
            ],
            axis=-1,
        )

    def forecast_batch(
        self,
        nbeats_logvol: npt.ArrayLike,
        ewma_var: npt.ArrayLike,
        garch_var: npt.ArrayLike,
        regime_probs: npt.ArrayLike,
        coverage: float = DEFAULT_COVERAGE,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Vectorised :meth:`forecast`: ``(B,)`` members and ``(B, 7)`` or ``(7,)`` probs."""
        w, b = blend(self.weights, self.bias, regime_probs)
        y_hat = np.sum(self.members(nbeats_logvol, ewma_var, garch_var) * w, axis=-1) + b
        q = self.quantile(coverage, regime_probs)
        return np.exp(y_hat), np.exp(y_hat - q), np.exp(y_hat + q)

    def forecast(
        self,
        nbeats_logvol: float,
        ewma_var: float,
        garch_var: float,
        regime_probs: npt.ArrayLike,
        coverage: float = DEFAULT_COVERAGE,
    ) -> tuple[float, float, float]:
        """Realized vol of the next ``h`` bars (per bar) and its conformal interval.

        ``nbeats_logvol``: the ONNX output; ``ewma_var``: one-step EWMA variance of raw
        log returns (``ewm_vol_0.94 ** 2``); ``garch_var``: mean GARCH variance over the
        next ``h`` bars (:meth:`GarchVariance.mean_var`); ``regime_probs``: 7
        probabilities in model order. Returns ``(vol, lo, hi)``; ``vol`` is
        ``exp(E[log rv])``, a median-like point; :meth:`sigma` turns it into the
        Gaussian per-bar standard deviation for VaR.
        """
        vol, lo, hi = self.forecast_batch(
            nbeats_logvol, ewma_var, garch_var, regime_probs, coverage
        )
        return float(vol), float(lo), float(hi)

    def garch_state(self) -> GarchVariance:
        """A fresh per-instrument GARCH state with the pooled parameters."""
        return GarchVariance(self.garch_default)

    def history_state(self) -> LogVolHistory:
        """A fresh per-instrument N-BEATS input state."""
        return LogVolHistory(self.length, self.h)

    def sigma(self, vol: float) -> float:
        """Per-bar return standard deviation implied by ``vol`` for Gaussian returns."""
        return float(vol * math.exp(-self.log_bias))
