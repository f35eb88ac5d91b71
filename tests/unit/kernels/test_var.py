"""VaR / CVaR against empyrical-reloaded (historical) and NumPy / SciPy (parametric)."""

from __future__ import annotations

import math
from statistics import NormalDist

import empyrical
import numpy as np
import pytest
import scipy.stats

from operators.kernels import HistoricalVaR, ParametricVaR

from ._helpers import assert_matches, rolling_ref, rolling_vec

CASES = [(250, 0.95), (100, 0.99), (21, 0.95), (37, 0.9)]


@pytest.mark.parametrize(("window", "confidence"), CASES)
def test_historical_var_when_fed_sp500_returns_matches_empyrical_every_step(
    returns, window, confidence
):
    h = HistoricalVaR(window, confidence)
    ours = np.array([tuple(h.update(float(r)).get()) for r in returns])
    cutoff = round(1.0 - confidence, 12)
    ref_var = rolling_ref(returns, window, lambda w: empyrical.value_at_risk(w, cutoff))
    ref_cvar = rolling_ref(
        returns, window, lambda w: empyrical.conditional_value_at_risk(w, cutoff)
    )
    assert_matches(ours[:, 0], ref_var, rtol=1e-15)
    assert_matches(ours[:, 1], ref_cvar, rtol=1e-14)


def test_historical_var_when_window_has_ties_matches_empyrical():
    r = np.round(np.random.default_rng(3).normal(0, 0.01, 600), 3)  # many equal returns
    h = HistoricalVaR(40, 0.95)
    ours = np.array([tuple(h.update(float(x)).get()) for x in r])
    assert_matches(ours[:, 0], rolling_ref(r, 40, lambda w: empyrical.value_at_risk(w)), 1e-15)
    ref_cvar = rolling_ref(r, 40, lambda w: empyrical.conditional_value_at_risk(w))
    assert_matches(ours[:, 1], ref_cvar, 1e-14)


@pytest.mark.parametrize("horizon", [1, 10])
@pytest.mark.parametrize(("window", "confidence"), CASES[:2])
def test_parametric_var_when_fed_sp500_returns_matches_closed_form_every_step(
    returns, window, confidence, horizon
):
    a = round(1.0 - confidence, 12)
    z = NormalDist().inv_cdf(a)
    phi = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    norm = ParametricVaR(window, confidence, horizon, "normal")
    cf = ParametricVaR(window, confidence, horizon, "cornish_fisher")
    ours_n = np.array([tuple(norm.update(float(r)).get()) for r in returns])
    ours_cf = np.array([cf.update(float(r)).get().var for r in returns])

    def ref_cf(w: np.ndarray) -> np.ndarray:
        s, k = scipy.stats.skew(w, axis=1), scipy.stats.kurtosis(w, axis=1)
        zc = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
        return w.mean(1) + zc * w.std(1, ddof=1)

    scale = math.sqrt(horizon)
    ref_n = rolling_vec(returns, window, lambda w: w.mean(1) + z * w.std(1, ddof=1))
    ref_es = rolling_vec(returns, window, lambda w: w.mean(1) - w.std(1, ddof=1) * phi / a)
    assert_matches(ours_n[:, 0], scale * ref_n, rtol=1e-10)
    assert_matches(ours_n[:, 1], scale * ref_es, rtol=1e-10)
    assert_matches(ours_cf, scale * rolling_vec(returns, window, ref_cf), rtol=1e-9)


def test_historical_var_when_horizon_is_ten_scales_by_sqrt_ten(returns):
    one, ten = HistoricalVaR(100, 0.99, 1), HistoricalVaR(100, 0.99, 10)
    for r in returns[:300]:
        one.update(float(r))
        ten.update(float(r))
    assert ten.get().var == pytest.approx(math.sqrt(10) * one.get().var, rel=1e-15)
    assert ten.get().cvar == pytest.approx(math.sqrt(10) * one.get().cvar, rel=1e-15)


def test_cornish_fisher_var_when_returns_are_constant_equals_the_constant():
    cf = ParametricVaR(10, 0.95, method="cornish_fisher")
    for _ in range(10):
        cf.update(0.001)
    assert cf.get().var == pytest.approx(0.001, rel=1e-12)


def test_var_when_window_not_full_is_nan(returns):
    h = HistoricalVaR(50)
    for r in returns[:49]:
        h.update(float(r))
    assert all(math.isnan(v) for v in h.get())
    assert not math.isnan(h.update(float(returns[49])).get().var)


def test_var_names_when_built_carry_method_confidence_and_horizon():
    assert HistoricalVaR(250, 0.95, 1).name == "var_hist_0.95_1"
    assert ParametricVaR(250, 0.99, 10).name == "var_normal_0.99_10"
    assert ParametricVaR(250, 0.95, 1, "cornish_fisher").name == "var_cf_0.95_1"
