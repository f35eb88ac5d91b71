"""Volatility kernels against arch (EWMA recursion) and NumPy (rolling estimators)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from arch.univariate import EWMAVariance, ZeroMean

from operators.kernels import (
    EwmaVariance,
    EwmaVol,
    GarmanKlassVol,
    ParkinsonVol,
    RealizedVol,
    arch_backcast,
)

from ._helpers import assert_matches, random_walk, rolling_ref


def arch_sigma2(resids: np.ndarray, lam: float) -> np.ndarray:
    """arch's conditional variance: sigma2[t] uses residuals up to t - 1."""
    res = ZeroMean(resids, volatility=EWMAVariance(lam)).fit(disp="off")
    return np.asarray(res.conditional_volatility) ** 2


def one_step_forecasts(e: EwmaVariance, resids: np.ndarray) -> np.ndarray:
    return np.array([e.update(float(r)).get() for r in resids])


@pytest.mark.parametrize("lam", [0.94, 0.97, 0.8])
def test_ewma_variance_when_fed_sp500_returns_matches_arch_every_step(log_returns, lam):
    r = 100.0 * log_returns  # arch wants returns scaled by 100
    ours = one_step_forecasts(EwmaVariance(lam), r)
    ref = arch_sigma2(r, lam)
    # after return t, get() is the forecast for t + 1; warm-up = the 75-return backcast
    assert np.isnan(ours[:74]).all()
    assert_matches(ours[74:-1], ref[75:], rtol=1e-12)


def test_ewma_variance_when_seeded_with_archs_backcast_matches_arch_from_the_first_step(
    log_returns,
):
    r = 100.0 * log_returns[:500]
    ours = one_step_forecasts(EwmaVariance(0.94, backcast=arch_backcast(r)), r)
    assert_matches(ours[:-1], arch_sigma2(r, 0.94)[1:], rtol=1e-12)


def test_ewma_vol_when_fed_returns_is_the_square_root_of_the_variance(log_returns):
    v, s = EwmaVariance(0.94), EwmaVol(0.94)
    for r in log_returns[:200]:
        v.update(float(r))
        s.update(float(r))
    assert s.get() == math.sqrt(v.get())
    assert (v.name, s.name) == ("ewm_var_0.94", "ewm_vol_0.94")


def test_ewma_variance_when_returns_are_zero_decays_geometrically():
    e = EwmaVariance(0.9, backcast=4.0)
    for _ in range(3):
        e.update(0.0)
    assert e.get() == pytest.approx(4.0 * 0.9**3, rel=1e-15)


@pytest.mark.parametrize(("window", "ddof"), [(2, 1), (20, 1), (60, 0), (250, 1)])
def test_realized_vol_when_fed_sp500_returns_matches_numpy_std_every_step(
    log_returns, window, ddof
):
    rv = RealizedVol(window, ddof)
    ours = [rv.update(float(r)).get() for r in log_returns]
    ref = rolling_ref(log_returns, window, lambda w: float(np.std(w, ddof=ddof)))
    assert_matches(ours, ref, rtol=1e-10)


def test_realized_vol_when_returns_are_constant_is_exactly_zero():
    rv = RealizedVol(5)
    for _ in range(12):
        rv.update(0.001)
    assert rv.get() == 0.0


@pytest.mark.parametrize("window", [1, 10, 20])
def test_parkinson_and_garman_klass_when_fed_sp500_bars_match_numpy_every_step(sp500, window):
    o, h, lo, c = (sp500[k].to_numpy() for k in ("Open", "High", "Low", "Close"))
    hl, co = np.log(h / lo), np.log(c / o)
    park_terms = hl**2 / (4.0 * math.log(2.0))
    gk_terms = 0.5 * hl**2 - (2.0 * math.log(2.0) - 1.0) * co**2
    p, g = ParkinsonVol(window), GarmanKlassVol(window)
    ours_p, ours_g = [], []
    for bar in zip(o, h, lo, c, strict=True):
        ours_p.append(p.update(*map(float, bar)).get())
        ours_g.append(g.update(*map(float, bar)).get())
    assert_matches(ours_p, np.sqrt(rolling_ref(park_terms, window, np.mean)), rtol=1e-10)
    assert_matches(ours_g, np.sqrt(rolling_ref(gk_terms, window, np.mean)), rtol=1e-10)


def test_range_vol_when_bars_are_single_ticks_is_zero():
    p, g = ParkinsonVol(3), GarmanKlassVol(3)
    for x in random_walk(10, 100.0, 1.0, 5):
        p.update(x, x, x, x)
        g.update(x, x, x, x)
    assert p.get() == 0.0 and g.get() == 0.0


@pytest.mark.parametrize(
    "bar", [(1.0, 0.5, 1.0, 1.0), (1.0, 2.0, 0.0, 1.0), (1.0, math.nan, 1.0, 1.0), (3, 2, 1, 1)]
)
def test_range_vol_when_bar_is_invalid_ignores_it(bar):
    p = ParkinsonVol(1).update(10.0, 11.0, 9.0, 10.5)
    v = p.get()
    assert p.update(*bar).get() == v
