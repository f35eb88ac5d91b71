from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from arch import arch_model
from arch.univariate import EWMAVariance, ZeroMean

from models import vol_ensemble as ve
from models.datasets import load_daily
from models.regimes import REGIMES

N = 1500


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    close = load_daily("sp500")["close"].to_numpy()
    return np.diff(np.log(close))[:N]


@pytest.fixture(scope="module")
def garch(returns: np.ndarray) -> ve.GarchParams:
    return ve.fit_garch(returns[:1000])


def _ensemble(**kw: object) -> ve.VolEnsemble:
    weights = np.tile([0.5, 0.2, 0.3], (7, 1))
    weights[1] = [1.0, 0.0, 0.0]
    weights[2] = [0.0, 0.4, 0.6]
    args: dict[str, object] = {
        "weights": weights,
        "bias": np.linspace(-0.1, 0.1, 7),
        "quantiles": {0.9: 0.5, 0.8: 0.4},
    }
    return ve.VolEnsemble(**(args | kw))  # type: ignore[arg-type]


# -- target -------------------------------------------------------------------------------


def test_log_realized_vol_is_log_root_mean_square_of_window(returns: np.ndarray) -> None:
    x = ve.log_realized_vol(returns, 5)
    assert np.isnan(x[:4]).all()
    for t in (4, 100, N - 1):
        window = returns[t - 4 : t + 1]
        assert x[t] == pytest.approx(0.5 * math.log(np.mean(window**2) + ve.VOL_FLOOR**2))


def test_future_log_rv_at_origin_covers_next_h_returns(returns: np.ndarray) -> None:
    y = ve.future_log_rv(returns, 5)
    t = 200
    assert y[t] == pytest.approx(0.5 * math.log(np.mean(returns[t + 1 : t + 6] ** 2) + 1e-10))
    assert np.isnan(y[-5:]).all() and np.isfinite(y[-6])


def test_gaussian_log_bias_matches_monte_carlo() -> None:
    z = np.random.default_rng(0).standard_normal((400_000, 5))
    mc = float(np.mean(0.5 * np.log(np.mean(z**2, axis=1))))
    assert ve.gaussian_log_bias(5) == pytest.approx(mc, abs=3e-3)
    assert ve.gaussian_log_bias(5) == pytest.approx(-0.10657, abs=1e-4)


def test_log_vol_history_when_updated_bar_by_bar_equals_batch_windows(
    returns: np.ndarray,
) -> None:
    hist = ve.nbeats_histories(returns, 64, 5)
    state = ve.LogVolHistory(64, 5)
    for t, r in enumerate(returns[:200]):
        got = state.update(float(r)).get()
        if t < 64 + 5 - 2:
            assert got is None and np.isnan(hist[t]).any()
        else:
            assert got is not None and got.dtype == np.float32
            np.testing.assert_allclose(got, hist[t], rtol=1e-6)
    restored = pickle.loads(pickle.dumps(state))
    np.testing.assert_array_equal(restored.get(), state.get())
    np.testing.assert_array_equal(state.snapshot().get(), state.get())
    assert state.name == "logrv_5_hist_64"


# -- baselines ----------------------------------------------------------------------------


def test_ewma_variance_equals_arch_ewma_at_every_step(returns: np.ndarray) -> None:
    res = ZeroMean(returns * 100, volatility=EWMAVariance(0.94)).fit(disp="off")
    arch_var = np.asarray(res.conditional_volatility) ** 2 / 1e4
    np.testing.assert_allclose(ve.ewma_variance(returns), arch_var, rtol=1e-12)
    fc = res.forecast(horizon=1, start=0, reindex=False).variance.to_numpy()[:, 0] / 1e4
    np.testing.assert_allclose(ve.ewma_forecast(returns), fc, rtol=1e-12)


def test_ewma_variance_equals_hand_recursion(returns: np.ndarray) -> None:
    e = returns * 100
    w = 0.94 ** np.arange(75)
    s2 = float(np.sum(e[:75] ** 2 * w / w.sum()))
    got = ve.ewma_variance(returns) * 1e4
    for t in range(N):
        if t > 0:
            s2 = 0.06 * e[t - 1] ** 2 + 0.94 * s2
        assert got[t] == pytest.approx(s2, rel=1e-12)


def test_garch_variance_equals_arch_fixed_model(returns: np.ndarray, garch: ve.GarchParams) -> None:
    res = arch_model(returns * 100, mean="Zero", vol="GARCH", rescale=False).fix(garch.scaled())
    arch_var = np.asarray(res.conditional_volatility) ** 2 / 1e4
    np.testing.assert_allclose(ve.garch_variance(returns, garch), arch_var, rtol=1e-12)


@pytest.mark.parametrize("h", [1, 5, 10])
def test_garch_forecast_equals_arch_forecast_mean_over_horizon(
    returns: np.ndarray, garch: ve.GarchParams, h: int
) -> None:
    res = arch_model(returns * 100, mean="Zero", vol="GARCH", rescale=False).fix(garch.scaled())
    fc = res.forecast(horizon=h, start=0, reindex=False).variance.to_numpy().mean(axis=1) / 1e4
    np.testing.assert_allclose(ve.garch_forecast(returns, garch, h), fc, rtol=1e-12)


def test_garch_fit_is_causal_on_training_span(returns: np.ndarray) -> None:
    changed = returns.copy()
    changed[1200:] *= 3.0
    assert ve.fit_garch(changed[:1000]) == ve.fit_garch(returns[:1000])
    a, b = (
        ve.garch_forecast(returns, ve.fit_garch(returns[:1000])),
        ve.garch_forecast(changed, ve.fit_garch(changed[:1000])),
    )
    np.testing.assert_array_equal(a[:1200], b[:1200])


def test_targeted_garch_equals_hand_recursion(returns: np.ndarray) -> None:
    a, b, lam = 0.1, 0.85, ve.LONG_RUN_LAMBDA
    next_var, level = ve.targeted_garch(returns, a, b)
    w = 0.94 ** np.arange(75)
    lv = s2 = float(np.sum(returns[:75] ** 2 * w / w.sum()))
    for t, r in enumerate(returns):
        lv = lam * lv + (1 - lam) * r * r
        s2 = 0.05 * lv + a * r * r + b * s2
        assert next_var[t] == pytest.approx(s2, rel=1e-10)
        assert level[t] == pytest.approx(lv, rel=1e-10)
    mean5 = ve.targeted_garch_forecast(returns, a, b, 5)
    steps = [next_var[-1]]
    for _ in range(4):
        steps.append(0.05 * level[-1] + 0.95 * steps[-1])
    assert mean5[-1] == pytest.approx(np.mean(steps), rel=1e-12)


def test_garch_running_state_equals_batch_at_every_step(returns: np.ndarray) -> None:
    params = ve.GarchParams(0.0, 0.18, 0.78)
    state = ve.GarchVariance(params)
    batch1 = ve.targeted_garch_forecast(returns[:400], 0.18, 0.78, 1)
    batch5 = ve.targeted_garch_forecast(returns[:400], 0.18, 0.78, 5)
    for t, r in enumerate(returns[:400]):
        state.update(float(r))
        if t < 74:
            assert not state.ready and math.isnan(state.get()) and math.isnan(state.mean_var())
        else:
            assert state.get() == pytest.approx(batch1[t], rel=1e-12)
            assert state.mean_var(5) == pytest.approx(batch5[t], rel=1e-12)
    restored = pickle.loads(pickle.dumps(state))
    for copy in (restored, state.snapshot()):
        assert copy.update(0.01).get() == state.snapshot().update(0.01).get()
    with pytest.raises(ValueError, match="alpha"):
        ve.GarchVariance(ve.GarchParams(0.0, 0.5, 0.5))


def test_psi_inputs_are_log_vols_of_member_variances() -> None:
    got = ve.psi_inputs(-4.5, 1e-4, 4e-4)
    assert set(got) == set(ve.PSI_FEATURES)
    assert float(got["ewma_logvol"]) == pytest.approx(math.log(0.01), abs=1e-5)
    assert float(got["garch_logvol"]) == pytest.approx(math.log(0.02), abs=1e-5)


# -- ensemble weights ------------------------------------------------------------------------


def test_fit_simplex_weights_recovers_convex_combination() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 3))
    y = x @ np.array([0.6, 0.3, 0.1]) + 0.25 + 0.01 * rng.normal(size=5000)
    w, b = ve.fit_simplex_weights(x, y)
    np.testing.assert_allclose(w, [0.6, 0.3, 0.1], atol=5e-3)
    assert b == pytest.approx(0.25, abs=5e-3)


def test_fit_simplex_weights_when_best_is_outside_stays_on_simplex() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 3))
    y = 2.0 * x[:, 0] - 1.0 * x[:, 1]
    w, _ = ve.fit_simplex_weights(x, y)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[0] == pytest.approx(1.0)


def test_fit_regime_weights_sum_to_one_and_fall_back_when_rare() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 3))
    regime = rng.integers(0, 6, 3000)  # regime 6 never seen
    y = np.where(regime == 0, x[:, 0], x[:, 2])
    weights, bias = ve.fit_regime_weights(x, y, regime)
    assert weights.shape == (7, 3) and bias.shape == (7,)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights[0], [1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(weights[3], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(weights[6], ve.fit_simplex_weights(x, y)[0])


@pytest.mark.parametrize("k", range(7))
def test_blend_when_probs_one_hot_equals_that_regimes_weights(k: int) -> None:
    ens = _ensemble()
    w, b = ve.blend(ens.weights, ens.bias, np.eye(7)[k])
    np.testing.assert_allclose(w, ens.weights[k])
    assert b == pytest.approx(ens.bias[k])


def test_blend_of_soft_probs_sums_to_one() -> None:
    ens = _ensemble()
    probs = np.random.default_rng(3).dirichlet(np.ones(7), size=50)
    w, _ = ve.blend(ens.weights, ens.bias, probs)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w, probs @ ens.weights)
    with pytest.raises(ValueError, match="probabilities"):
        ve.blend(ens.weights, ens.bias, np.zeros(7))


# -- conformal ------------------------------------------------------------------------------


def test_conformal_quantile_uses_finite_sample_rank() -> None:
    scores = np.arange(1.0, 10.0)  # n = 9: ceil(10 * 0.9) = 9th smallest
    assert ve.conformal_quantile(scores, 0.9) == 9.0
    assert ve.conformal_quantile(scores[:8], 0.9) == math.inf
    assert ve.conformal_quantile(scores, 0.5) == 5.0


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_conformal_coverage_on_exchangeable_data_is_nominal(coverage: float) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=22_000)
    y = 0.5 * x + rng.standard_t(5, size=x.size) * 0.3
    resid = np.abs(y - 0.5 * x)
    q = ve.conformal_quantile(resid[:2000], coverage)
    got = ve.coverage_rate(y[2000:], 0.5 * x[2000:] - q, 0.5 * x[2000:] + q)
    assert got == pytest.approx(coverage, abs=0.03)


def test_regime_quantiles_cover_each_regime_and_pool_rare_ones() -> None:
    rng = np.random.default_rng(5)
    regime = rng.integers(0, 6, 40_000)  # regime 6 never seen: pooled quantile
    scale = 0.2 + 0.1 * regime
    resid = np.abs(rng.normal(size=regime.size) * scale)
    q = ve.regime_quantiles(resid[:20_000], regime[:20_000], 0.9)
    assert q[6] == ve.conformal_quantile(resid[:20_000], 0.9)
    assert (np.diff(q[:6]) > 0).all()
    for k in range(6):
        rows = regime[20_000:] == k
        got = float(np.mean(resid[20_000:][rows] <= q[k]))
        assert got == pytest.approx(0.9, abs=0.03)


# -- serving --------------------------------------------------------------------------------


def test_forecast_when_probs_one_hot_uses_regime_weights_and_band() -> None:
    ens = _ensemble()
    nb, ewma, garch = -4.6, 1e-4, 2e-4
    vol, lo, hi = ens.forecast(nb, ewma, garch, np.eye(7)[2])
    members = np.array([nb, ve.logvol_from_var(ewma, 5), ve.logvol_from_var(garch, 5)])
    expected = float(members @ ens.weights[2] + ens.bias[2])
    assert math.log(vol) == pytest.approx(expected)
    assert math.log(hi) - math.log(vol) == pytest.approx(0.5)
    assert math.log(vol) - math.log(lo) == pytest.approx(0.5)
    _, lo80, hi80 = ens.forecast(nb, ewma, garch, np.eye(7)[2], coverage=0.8)
    assert lo < lo80 < vol < hi80 < hi
    assert ens.sigma(vol) == pytest.approx(vol * math.exp(0.10657), rel=1e-4)


def test_forecast_half_width_is_probability_weighted() -> None:
    q = np.linspace(0.3, 0.9, 7)
    ens = _ensemble(quantiles={0.9: q})
    probs = np.random.default_rng(6).dirichlet(np.ones(7))
    vol, lo, hi = ens.forecast(-4.6, 1e-4, 1e-4, probs)
    assert math.log(hi / vol) == pytest.approx(float(probs @ q))
    assert math.log(vol / lo) == pytest.approx(float(probs @ q))
    _, lo3, hi3 = ens.forecast(-4.6, 1e-4, 1e-4, np.eye(7)[3])
    assert math.log(hi3 / lo3) == pytest.approx(2 * q[3])


def test_forecast_batch_equals_scalar_forecast_per_row() -> None:
    ens = _ensemble()
    rng = np.random.default_rng(5)
    nb = rng.normal(-4.5, 0.3, 8)
    ewma, garch = np.exp(rng.normal(-9, 0.5, 8)), np.exp(rng.normal(-9, 0.5, 8))
    probs = rng.dirichlet(np.ones(7), size=8)
    vol, lo, hi = ens.forecast_batch(nb, ewma, garch, probs)
    assert vol.shape == lo.shape == hi.shape == (8,)
    for i in range(8):
        assert ens.forecast(nb[i], ewma[i], garch[i], probs[i]) == pytest.approx(
            (vol[i], lo[i], hi[i])
        )


def test_vol_ensemble_rejects_weights_off_the_simplex() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        _ensemble(weights=np.full((7, 3), 0.5))
    with pytest.raises(ValueError, match="coverage"):
        _ensemble().quantile(0.5)


def test_vol_ensemble_loads_from_committed_manifest() -> None:
    ens = ve.VolEnsemble.load()
    assert ens.weights.shape == (len(REGIMES), 3)
    np.testing.assert_allclose(ens.weights.sum(axis=1), 1.0)
    q = ens.quantile(0.9)
    assert q.shape == (7,) and (q > 0.3).all() and (q < 2.0).all()
    assert ens.h == 5 and ens.length == 64
    vol, lo, hi = ens.forecast(math.log(0.01), 1e-4, 1e-4, np.full(7, 1 / 7))
    assert lo < vol < hi and 0.002 < vol < 0.05
