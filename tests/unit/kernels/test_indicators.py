"""Indicators against TA-Lib 0.8.2 at every step, on S&P 500 closes and synthetic edge cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import talib

from operators.kernels import ATR, EMA, MACD, RSI, SMA, Bollinger

from ._helpers import assert_matches, random_walk, rolling_ref


def run(stat, xs: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    return [stat.update(float(x)).get() for x in xs]


def run_bb(bb: Bollinger, xs: np.ndarray) -> np.ndarray:
    return np.array([tuple(bb.update(float(x)).get()) for x in xs])


def run_macd(m: MACD, xs: np.ndarray) -> np.ndarray:
    return np.array([tuple(m.update(float(x)).get()) for x in xs])


def run_atr(a: ATR, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> list[float]:
    return [a.update(float(x), float(y), float(z)).get() for x, y, z in zip(h, lo, c, strict=True)]


def ohlc_arrays(sp500: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return sp500["High"].to_numpy(), sp500["Low"].to_numpy(), sp500["Close"].to_numpy()


# Synthetic edge cases: constant, a 30% gap, a 1e9 offset with tiny moves, a two-level step.
EDGE_SERIES = {
    "constant": np.full(300, 101.25),
    "gap": np.concatenate([random_walk(150, 100.0, 0.5, 1), random_walk(150, 130.0, 0.5, 2)]),
    "offset_1e9": random_walk(300, 1e9, 1e-3, 3),
    "step": np.repeat([50.0, 50.5, 49.75, 50.0], 75),
}


@pytest.mark.parametrize("period", [2, 5, 14, 20, 50])
def test_sma_when_fed_sp500_closes_matches_talib_every_step(closes, period):
    assert_matches(run(SMA(period), closes), talib.SMA(closes, period))


@pytest.mark.parametrize("period", [1, 2, 12, 20, 50])
def test_ema_when_fed_sp500_closes_matches_talib_every_step(closes, period):
    assert_matches(run(EMA(period), closes), talib.EMA(closes, period))


@pytest.mark.parametrize("period", [2, 9, 14, 30])
def test_rsi_when_fed_sp500_closes_matches_talib_every_step(closes, period):
    assert_matches(run(RSI(period), closes), talib.RSI(closes, period))


@pytest.mark.parametrize(
    ("fast", "slow", "signal"), [(12, 26, 9), (5, 35, 5), (3, 10, 16), (26, 12, 9), (2, 3, 1)]
)
def test_macd_when_fed_sp500_closes_matches_talib_every_step(closes, fast, slow, signal):
    ours = run_macd(MACD(fast, slow, signal), closes)
    ref = talib.MACD(closes, fast, slow, signal)
    for k in range(3):
        assert_matches(ours[:, k], ref[k])


def test_macd_when_default_periods_first_value_is_at_index_33(closes):
    ours = run_macd(MACD(), closes)
    assert np.isnan(ours[:33]).all()
    assert not np.isnan(ours[33:]).any()


@pytest.mark.parametrize(("period", "up", "dn"), [(5, 2.0, 2.0), (20, 2.0, 2.0), (20, 2.5, 1.5)])
def test_bollinger_when_fed_sp500_closes_matches_talib_bands_every_step(closes, period, up, dn):
    ours = run_bb(Bollinger(period, up, dn), closes)
    upper, middle, lower = talib.BBANDS(closes, period, up, dn, 0)
    assert_matches(ours[:, 0], middle)
    assert_matches(ours[:, 1], upper)
    assert_matches(ours[:, 2], lower)


def test_bollinger_when_fed_sp500_closes_pctb_and_bandwidth_follow_the_bands(closes):
    ours = run_bb(Bollinger(20), closes)
    upper, middle, lower = talib.BBANDS(closes, 20, 2.0, 2.0, 0)
    assert_matches(ours[:, 3], (closes - lower) / (upper - lower), atol=1e-12)
    assert_matches(ours[:, 4], (upper - lower) / middle)


@pytest.mark.parametrize("period", [1, 2, 14, 30])
def test_atr_when_fed_sp500_bars_matches_talib_every_step(sp500, period):
    h, lo, c = ohlc_arrays(sp500)
    assert_matches(run_atr(ATR(period), h, lo, c), talib.ATR(h, lo, c, period))


@pytest.mark.parametrize("series", list(EDGE_SERIES))
def test_indicators_when_fed_edge_case_series_match_talib_every_step(series):
    x = EDGE_SERIES[series]
    assert_matches(run(SMA(20), x), talib.SMA(x, 20))
    assert_matches(run(EMA(20), x), talib.EMA(x, 20))
    assert_matches(run(RSI(14), x), talib.RSI(x, 14))
    ours = run_macd(MACD(), x)
    for k, ref in enumerate(talib.MACD(x, 12, 26, 9)):
        assert_matches(ours[:, k], ref)
    h, lo = x * (1 + 1e-4), x * (1 - 1e-4)
    assert_matches(run_atr(ATR(14), h, lo, x), talib.ATR(h, lo, x, 14))


@pytest.mark.parametrize("series", ["constant", "gap", "step"])
def test_bollinger_when_fed_edge_case_series_matches_talib_every_step(series):
    x = EDGE_SERIES[series]
    ours = run_bb(Bollinger(20), x)
    upper, middle, lower = talib.BBANDS(x, 20, 2.0, 2.0, 0)
    assert_matches(ours[:, 0], middle)
    assert_matches(ours[:, 1], upper)
    assert_matches(ours[:, 2], lower)


def test_bollinger_when_prices_are_1e9_plus_tiny_moves_matches_exact_population_std():
    # TA-Lib's sum-of-squares std loses every digit here; compare with a shifted two-pass std.
    x = EDGE_SERIES["offset_1e9"]
    ours = run_bb(Bollinger(20), x)
    sd = rolling_ref(x, 20, lambda w: float(np.std(w - w[0])))
    mid = rolling_ref(x, 20, lambda w: float(w[0] + np.mean(w - w[0])))
    # bands near 1e9 are representable only to ~1.2e-7 (one ulp): compare to a few ulps
    assert_matches(ours[:, 0], mid, rtol=1e-15)
    assert_matches(ours[:, 1], mid + 2.0 * sd, rtol=1e-15)
    assert_matches(ours[:, 2], mid - 2.0 * sd, rtol=1e-15)
    assert np.nanmin(ours[:, 1] - ours[:, 2]) > 0.0


def test_indicators_when_prices_are_constant_give_talib_degenerate_values():
    x = EDGE_SERIES["constant"]
    rsi = RSI(14)
    bb = Bollinger(20)
    for v in x:
        rsi.update(float(v))
        bb.update(float(v))
    assert rsi.get() == 0.0  # TA-Lib reports 0 when there is no gain and no loss
    assert bb.get().upper == bb.get().lower == 101.25
    assert math.isnan(bb.get().pct_b)
    assert bb.get().bandwidth == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_indicator_update_when_value_not_finite_leaves_state_unchanged(closes, bad):
    stats = [SMA(5), EMA(5), RSI(5), MACD(3, 6, 2), Bollinger(5)]
    for s in stats:
        for x in closes[:20]:
            s.update(float(x))
    before = [s.get() for s in stats]
    for s in stats:
        s.update(bad)
    assert [s.get() for s in stats] == before
    atr = ATR(3)
    for x in closes[:10]:
        atr.update(float(x) + 1, float(x) - 1, float(x))
    v = atr.get()
    assert atr.update(bad, 1.0, 1.0).get() == v


def test_indicator_names_when_built_carry_their_parameters():
    assert SMA(20).name == "sma_20"
    assert EMA(12).name == "ema_12"
    assert RSI(14).name == "rsi_14"
    assert MACD(12, 26, 9).name == "macd_12_26_9"
    assert Bollinger(20, 2.0, 2.0).name == "bb_20_2"
    assert Bollinger(20, 2.5, 1.5).name == "bb_20_2.5_1.5"
    assert ATR(14).name == "atr_14"


@pytest.mark.parametrize("make", [lambda: SMA(0), lambda: RSI(1), lambda: MACD(1, 26, 9)])
def test_indicator_when_period_out_of_range_raises_value_error(make):
    with pytest.raises(ValueError, match="must be an integer"):
        make()
