from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import talib

from models.market_features import (
    MARKET_BAR_KEYS,
    MARKET_FEATURES,
    WARMUP_BARS,
    FeatureWindow,
    MarketFeatureError,
    MarketFeatures,
    RollingMax,
    RollingMeanStd,
    _causal_monthly,
    compute_features,
    feature_windows,
    market_bars_from_real,
    market_bars_from_sim,
)
from models.simulator import MarketSimulator

N_BARS = 700


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return market_bars_from_sim(MarketSimulator(seed=5).path(N_BARS))


def reference(bars: pd.DataFrame) -> pd.DataFrame:
    """Vectorised pandas/NumPy/TA-Lib definition of every feature, from scratch."""
    c = bars["index_close"]
    r = np.log(c).diff()
    vol_10 = np.sqrt((r**2).rolling(10).mean())
    vol_60 = np.sqrt((r**2).rolling(60).mean())
    log_s, log_v = np.log(bars["spread_bps"]), np.log(bars["volume"])

    def z(x: pd.Series) -> pd.Series:
        long = x.rolling(120, min_periods=1)
        return (x.rolling(5).mean() - long.mean()) / long.std(ddof=0)

    out = pd.DataFrame(
        {
            "ret_1": r,
            "ret_5": np.log(c / c.shift(5)),
            "mom_20": np.log(c / c.shift(20)),
            "vol_10": vol_10,
            "vol_60": vol_60,
            "vol_ratio": np.log(vol_10 / vol_60),
            "vol_chg_5": np.log(vol_10 / vol_10.shift(5)),
            "drawdown": np.log(c / c.rolling(250, min_periods=1).max()),
            "credit_chg_5": 1e4 * bars["credit_spread"].diff(5),
            "credit_chg_20": 1e4 * bars["credit_spread"].diff(20),
            "rate_chg_5": 1e4 * bars["rate"].diff(5),
            "rate_chg_20": 1e4 * bars["rate"].diff(20),
            "spread_z": z(log_s),
            "volume_z": z(log_v),
            "rsi_14": talib.RSI(c.to_numpy(), 14),
        }
    )
    out.iloc[: WARMUP_BARS - 1] = np.nan
    return out[list(MARKET_FEATURES)]


def test_features_when_updated_bar_by_bar_match_the_reference_at_every_step(bars) -> None:
    expected = reference(bars).to_numpy()
    state = MarketFeatures()
    rows = bars.to_dict("records")
    for t, bar in enumerate(rows):
        got = state.update(bar)
        if t < WARMUP_BARS - 1:
            assert got is None
            continue
        assert got is not None and got.shape == (len(MARKET_FEATURES),)
        np.testing.assert_allclose(got, expected[t], rtol=1e-9, atol=1e-10, err_msg=f"bar {t}")


def test_features_when_computed_on_a_prefix_equal_the_full_run_rows(bars) -> None:
    full = compute_features(bars)
    for k in (WARMUP_BARS, 200, 451, N_BARS):
        np.testing.assert_array_equal(compute_features(bars.iloc[:k])[-1], full[k - 1])


def test_features_when_warm_are_nan_free_and_before_are_nan(bars) -> None:
    f = compute_features(bars)
    assert np.isnan(f[: WARMUP_BARS - 1]).all()
    assert np.isfinite(f[WARMUP_BARS - 1 :]).all()


def test_features_when_pickled_mid_stream_continue_identically(bars) -> None:
    rows = bars.to_dict("records")
    state = MarketFeatures()
    for bar in rows[:300]:
        state.update(bar)
    restored = pickle.loads(pickle.dumps(state))
    copy = state.snapshot()
    for bar in rows[300:]:
        a, b, c = state.update(bar), restored.update(bar), copy.update(bar)
        assert a is not None and b is not None and c is not None
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_features_when_values_have_huge_offsets_or_are_constant_stay_finite() -> None:
    state = MarketFeatures()
    rng = np.random.default_rng(0)
    out = None
    for i in range(400):
        bar = {
            "index_close": 1e9 * (1.0 + 1e-9 * rng.normal()),
            "rate": 0.04,
            "credit_spread": 0.01,
            "spread_bps": 3.0,  # constant: z-score falls back to 0
            "volume": 1e12 + i,
        }
        out = state.update(bar)
    assert out is not None and np.isfinite(out).all()
    assert out[MARKET_FEATURES.index("spread_z")] == 0.0


def test_rolling_mean_std_when_run_long_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = 1e6 + rng.normal(size=5000)
    stat = RollingMeanStd(120)
    for i, v in enumerate(x):
        stat.update(float(v))
        window = x[max(0, i - 119) : i + 1]
        if i % 97 == 0 or i == len(x) - 1:
            assert stat.mean() == pytest.approx(window.mean(), abs=1e-8)
            assert stat.std() == pytest.approx(window.std(), abs=1e-6)


def test_rolling_max_when_run_matches_pandas() -> None:
    x = np.random.default_rng(2).normal(size=1000).cumsum()
    expected = pd.Series(x).rolling(50, min_periods=1).max().to_numpy()
    stat = RollingMax(50)
    got = [stat.update(float(v)).get() for v in x]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [("index_close", 0.0), ("spread_bps", -1.0), ("volume", float("nan")), ("rate", float("inf"))],
)
def test_update_when_bar_value_is_invalid_raises_naming_it(key, value) -> None:
    bar = {"index_close": 100.0, "rate": 0.04, "credit_spread": 0.01, "spread_bps": 2.0}
    bar["volume"] = 1e6
    bar[key] = value
    with pytest.raises(MarketFeatureError, match=key):
        MarketFeatures().update(bar)


def test_update_when_bar_lacks_a_key_raises() -> None:
    with pytest.raises(MarketFeatureError, match="credit_spread"):
        MarketFeatures().update({"index_close": 1.0, "rate": 0.0, "spread_bps": 1.0, "volume": 1})


def test_feature_window_when_streamed_equals_windows_of_the_batch_features(bars) -> None:
    full = compute_features(bars)
    window = FeatureWindow(32)
    ends, got = [], []
    for t, bar in enumerate(bars.to_dict("records")):
        w = window.update(bar)
        if w is not None:
            ends.append(t)
            got.append(w)
    assert ends[0] == WARMUP_BARS - 1 + 31
    np.testing.assert_array_equal(np.stack(got), feature_windows(full, 32, ends))
    assert pickle.loads(pickle.dumps(window)).length == 32


def test_market_bars_from_sim_when_built_have_the_bar_keys_and_bond_spread(bars) -> None:
    path = MarketSimulator(seed=5).path(50)
    sim = market_bars_from_sim(path)
    assert tuple(sim.columns) == MARKET_BAR_KEYS
    np.testing.assert_allclose(
        sim["credit_spread"], path["SIM-IG-7Y.yield"] - path["SIM-UST-10Y.yield"]
    )


def test_causal_monthly_when_a_later_month_changes_earlier_days_do_not() -> None:
    months = pd.date_range("2000-01-01", periods=8, freq="MS", tz="UTC")
    days = pd.date_range("2000-03-01", "2000-08-31", freq="D", tz="UTC")
    base = pd.Series(np.arange(8, dtype=float), index=months)
    bumped = base.copy()
    bumped.iloc[5] = 100.0  # June
    a, b = _causal_monthly(base, days), _causal_monthly(bumped, days)
    before_july = days < pd.Timestamp("2000-07-01", tz="UTC")
    np.testing.assert_array_equal(a[before_july], b[before_july])
    assert not np.array_equal(a[~before_july], b[~before_july])
    assert a[0] == 0.0  # March 1st: January's value (February still incomplete)


def test_market_bars_from_real_when_loaded_are_finite_and_positive() -> None:
    real = market_bars_from_real(start="2008-01-01", end="2008-12-31")
    assert tuple(real.columns) == MARKET_BAR_KEYS
    assert 240 < len(real) < 260
    assert np.isfinite(real.to_numpy()).all()
    assert (real[["index_close", "spread_bps", "volume"]] > 0).all().all()
    # the implied-volatility spread proxy widens in the autumn 2008 crisis
    assert real["spread_bps"]["2008-10"].mean() > 2 * real["spread_bps"]["2008-01"].mean()
