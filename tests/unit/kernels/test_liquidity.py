"""Liquidity measures against NumPy / pandas recomputation on S&P 500 data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from operators.kernels import (
    Amihud,
    AverageDailyVolume,
    VolumeZScore,
    effective_spread_bps,
    quoted_spread_bps,
)

from ._helpers import assert_matches, rolling_vec

NS_PER_DAY = 86_400_000_000_000


def test_quoted_spread_bps_when_bid_99_ask_101_is_200_bps():
    assert quoted_spread_bps(99.0, 101.0) == pytest.approx(200.0, rel=1e-15)


@pytest.mark.parametrize(("price", "expected"), [(100.0, 0.0), (101.0, 200.0), (99.5, 100.0)])
def test_effective_spread_bps_when_trade_away_from_mid_is_twice_the_distance(price, expected):
    assert effective_spread_bps(price, 99.0, 101.0) == pytest.approx(expected, abs=1e-12)


def test_amihud_when_fed_sp500_bars_matches_rolling_mean_of_abs_return_per_dollar(sp500):
    c, v = sp500["Close"].to_numpy(), sp500["Volume"].to_numpy()
    r = c[1:] / c[:-1] - 1.0
    dollar = c[1:] * v[1:]
    a = Amihud(20)
    ours = [a.update(float(x), float(d)).get() for x, d in zip(r, dollar, strict=True)]
    assert_matches(ours, rolling_vec(np.abs(r) / dollar, 20, lambda w: w.mean(1)), rtol=1e-10)


def test_amihud_when_bar_has_no_dollar_volume_skips_it():
    a = Amihud(2).update(0.01, 1e6).update(0.02, 0.0).update(0.03, 1e6)
    assert a.get() == pytest.approx((0.01 + 0.03) / 2e6, rel=1e-15)


def test_volume_zscore_when_fed_sp500_volume_matches_previous_window_zscore(sp500):
    v = sp500["Volume"].to_numpy()
    z = VolumeZScore(20)
    ours = np.array([z.update(float(x)).get() for x in v])
    base = np.lib.stride_tricks.sliding_window_view(v[:-1], 20)
    ref = np.concatenate([np.full(20, np.nan), (v[20:] - base.mean(1)) / base.std(1, ddof=1)])
    assert_matches(ours, ref, rtol=1e-9)


def test_volume_zscore_when_baseline_is_constant_is_nan():
    z = VolumeZScore(3)
    for _ in range(5):
        z.update(100.0)
    assert math.isnan(z.get())


def test_adv_when_fed_sp500_daily_volume_matches_rolling_mean_of_completed_days(sp500):
    days = (sp500.index.values.astype("datetime64[ns]").astype(np.int64)) // NS_PER_DAY
    v = sp500["Volume"].to_numpy()
    adv = AverageDailyVolume(20)
    ours = []
    for d, x in zip(days, v, strict=True):
        # two half-volume bars per day, the second in the afternoon
        adv.update(int(d) * NS_PER_DAY + 3600 * 10**9 * 10, float(x) / 2)
        adv.update(int(d) * NS_PER_DAY + 3600 * 10**9 * 15, float(x) / 2)
        ours.append(adv.get())
    # on day i the completed days are 0..i-1
    ref = pd.Series(v).rolling(20).mean().shift(1).to_numpy()
    assert_matches(ours, ref, rtol=1e-12)


def test_adv_when_day_offset_moves_the_boundary_counts_evening_volume_next_day():
    adv = AverageDailyVolume(1, day_offset_ns=4 * 3600 * 10**9)  # day starts at 20:00 UTC
    adv.update(NS_PER_DAY + 10 * 3600 * 10**9, 100.0)  # day 1, 10:00
    adv.update(NS_PER_DAY + 21 * 3600 * 10**9, 50.0)  # after 20:00: next day
    adv.update(2 * NS_PER_DAY + 21 * 3600 * 10**9, 1.0)
    assert adv.get() == 50.0
