"""RollingMoments against NumPy / SciPy at every step, including numerically hard inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from operators.kernels import RollingMoments

from ._helpers import assert_matches, random_walk, rolling_ref, rolling_vec


def feed(m: RollingMoments, xs: np.ndarray) -> list[tuple[float, float, float, float]]:
    return [m.update(float(x)).moments(1) for x in xs]


@pytest.mark.parametrize("window", [2, 20, 250])
def test_rolling_moments_when_fed_sp500_closes_match_numpy_every_step(closes, window):
    out = np.array(feed(RollingMoments(window, npow=4), closes))
    full = np.arange(len(closes)) >= window - 1
    out[~full] = np.nan
    assert_matches(out[:, 0], rolling_vec(closes, window, lambda w: w.mean(1)), rtol=1e-12)
    assert_matches(out[:, 1], rolling_vec(closes, window, lambda w: w.var(1, ddof=1)), 1e-10)
    if window > 2:
        skew = rolling_vec(closes, window, lambda w: scipy.stats.skew(w, axis=1))
        kurt = rolling_vec(closes, window, lambda w: scipy.stats.kurtosis(w, axis=1))
        assert_matches(out[:, 2], skew, rtol=1e-7)
        assert_matches(out[:, 3], kurt, rtol=1e-7)


@pytest.mark.parametrize(
    ("start", "step"), [(1e9, 1e-3), (1e9, 1.0), (1e-6, 1e-12), (0.0, 1.0)], ids=str
)
def test_rolling_variance_when_large_offset_and_tiny_moves_stays_accurate(start, step):
    # A shifted two-pass std is exact here (x - x[0] has no rounding); naive sums lose it all.
    x = random_walk(5000, start, step, seed=7)
    m = RollingMoments(50, npow=2)
    ours = np.array([m.var(1) if m.update(float(v)).full else np.nan for v in x])
    ref = rolling_ref(x, 50, lambda w: float(np.var(w - w[0], ddof=1)))
    assert_matches(ours, ref, rtol=1e-9)


def test_rolling_moments_when_values_constant_give_zero_variance_exactly():
    m = RollingMoments(10, npow=4)
    for _ in range(35):
        m.update(1e9 + 0.125)
    mean, var, skew, kurt = m.moments(1)
    assert (mean, var) == (1e9 + 0.125, 0.0)
    assert np.isnan(skew) and np.isnan(kurt)


def test_rolling_moments_when_window_wraps_values_are_oldest_first():
    m = RollingMoments(3)
    for x in [1.0, 2.0, 3.0, 4.0, 5.0]:
        m.update(x)
    assert m.values().tolist() == [3.0, 4.0, 5.0]
    assert m.full and m.count == 3


def test_rolling_moments_when_value_not_finite_ignores_it():
    m = RollingMoments(3)
    for x in [1.0, float("nan"), 2.0, float("inf"), 3.0]:
        m.update(x)
    assert m.values().tolist() == [1.0, 2.0, 3.0]


def test_rolling_moments_when_fewer_values_than_ddof_gives_nan_variance():
    m = RollingMoments(5).update(1.0)
    assert m.var(0) == 0.0
    assert np.isnan(m.var(1))
    assert np.isnan(RollingMoments(5).mean())
