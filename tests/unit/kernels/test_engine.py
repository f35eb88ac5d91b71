"""InstrumentFeatures end to end: ticks in, features equal to the references on bar closes."""

from __future__ import annotations

import math
from datetime import date, timedelta

import empyrical
import numpy as np
import pandas as pd
import pytest
import talib

from operators.kernels import (
    INVALID_PRICE,
    LATE,
    BondSpec,
    FeatureConfig,
    InstrumentFeatures,
    YieldCurve,
    bond_risk,
)

from ._helpers import T0, S, assert_matches, rolling_vec, same_values, shuffle_within, tick_stream

DAY = 86_400 * S
HOUR = 3_600 * S


def daily_ticks(df: pd.DataFrame) -> list[tuple[int, float, float, float, float]]:
    """Four ticks per trading day (open, high, low, close) with a 1-cent quote around each."""
    days = df.index.values.astype("datetime64[ns]").astype(np.int64)
    out = []
    for d, (o, h, lo, c, v) in zip(
        days, df[["Open", "High", "Low", "Close", "Volume"]].to_numpy(), strict=True
    ):
        for k, p in enumerate((o, h, lo, c)):
            out.append((int(d) + (14 + 2 * k) * HOUR, float(p), float(v) / 4, p - 0.005, p + 0.005))
    return out


def replay_daily(df: pd.DataFrame) -> list[dict[str, float]]:
    """Feed daily ticks; return features after each closed bar (one per trading day)."""
    eng = InstrumentFeatures(FeatureConfig(bar_interval_ns=DAY, lateness_ns=0))
    rows = []
    for ts, last, size, bid, ask in daily_ticks(df):
        res = eng.on_tick(ts, bid, ask, last, size)
        assert res.reason is None
        if res.closed_bars:
            rows.append(eng.features())
    eng.flush()
    rows.append(eng.features())
    return rows


@pytest.fixture(scope="module")
def daily_features(sp500: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(replay_daily(sp500.iloc[:1200]))


def test_features_when_daily_ticks_replayed_match_talib_on_bar_closes(sp500, daily_features):
    df = sp500.iloc[:1200]
    h, lo, c = (df[k].to_numpy() for k in ("High", "Low", "Close"))
    f = daily_features
    assert len(f) == len(df)
    assert_matches(f["bar_close"], c, rtol=0.0)
    assert_matches(f["sma_20"], talib.SMA(c, 20))
    assert_matches(f["ema_20"], talib.EMA(c, 20))
    assert_matches(f["rsi_14"], talib.RSI(c, 14))
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    assert_matches(f["macd_12_26_9"], macd)
    assert_matches(f["macd_signal_12_26_9"], signal)
    assert_matches(f["macd_hist_12_26_9"], hist)
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    assert_matches(f["bb_upper_20_2"], upper)
    assert_matches(f["bb_middle_20_2"], middle)
    assert_matches(f["bb_lower_20_2"], lower)
    assert_matches(f["atr_14"], talib.ATR(h, lo, c, 14))
    hl = np.log(h / lo)
    park = np.sqrt(rolling_vec(hl**2 / (4 * math.log(2)), 20, lambda w: w.mean(1)))
    assert_matches(f["parkinson_vol_20"], park, rtol=1e-10)


def test_features_when_daily_ticks_replayed_match_risk_references_on_bar_closes(
    sp500, daily_features
):
    c = sp500["Close"].to_numpy()[:1200]
    r = np.concatenate([[np.nan], c[1:] / c[:-1] - 1.0])
    lr = np.concatenate([[np.nan], np.diff(np.log(c))])
    f = daily_features
    assert_matches(f["return_1"], r, rtol=1e-15)
    var = rolling_vec(r[1:], 250, lambda w: np.percentile(w, 5, axis=1))
    assert_matches(f["var_hist_0.95_1"], np.concatenate([[np.nan], var]), rtol=1e-15)
    cvar = [empyrical.conditional_value_at_risk(r[i - 249 : i + 1]) for i in range(250, len(r))]
    assert_matches(f["cvar_hist_0.95_1"][250:], np.array(cvar), rtol=1e-14)
    rvol = rolling_vec(lr[1:], 20, lambda w: w.std(1, ddof=1))
    assert_matches(f["rvol_20"], np.concatenate([[np.nan], rvol]), rtol=1e-10)
    # EWMA: NaN until the 75-return backcast is complete
    assert f["ewm_vol_0.94"][:75].isna().all()
    assert f["ewm_vol_0.94"][75:].notna().all()


def test_feature_names_when_listed_equal_the_keys_of_features():
    eng = InstrumentFeatures()
    assert list(eng.features()) == eng.feature_names()
    assert all(math.isnan(v) for v in eng.features().values())
    bond_eng = InstrumentFeatures(
        FeatureConfig(bond=BondSpec(0.05, date(2034, 1, 15), date(2024, 1, 15)))
    )
    assert list(bond_eng.features()) == bond_eng.feature_names()
    assert "bond_dv01" in bond_eng.feature_names()
    assert "bond_dv01" not in eng.feature_names()


def test_features_when_ticks_shuffled_within_lateness_equal_sorted_features():
    ticks = tick_stream(6000, seed=3, gap_ns=3 * S)
    cfg = FeatureConfig(bar_interval_ns=30 * S, lateness_ns=10 * S, var_window=50)

    def run(stream):  # type: ignore[no-untyped-def]
        eng = InstrumentFeatures(cfg)
        per_bar, bars = {}, []
        for ts, p, sz, bid, ask in stream:
            res = eng.on_tick(ts, bid, ask, p, sz)
            assert (res.late, res.reason) == (False, None)
            if res.closed_bars:
                bars.extend(res.closed_bars)
                per_bar[res.closed_bars[-1].start_ns] = tuple(eng.features().items())[4:]
        bars.extend(eng.flush())
        return bars, per_bar, eng.features()

    bars_a, per_bar_a, final_a = run(ticks)
    bars_b, per_bar_b, final_b = run(shuffle_within(ticks, 10 * S, seed=9))
    assert same_values(bars_a, bars_b)
    common = per_bar_a.keys() & per_bar_b.keys()
    assert len(common) > 100
    for k in common:
        assert same_values(per_bar_a[k], per_bar_b[k])
    assert same_values(tuple(final_a.items()), tuple(final_b.items()))
    assert not math.isnan(final_a["var_hist_0.95_1"])


def test_on_tick_when_tick_is_too_late_reports_late_and_leaves_features_unchanged():
    eng = InstrumentFeatures(FeatureConfig(bar_interval_ns=60 * S, lateness_ns=5 * S))
    for k in range(200):
        eng.on_tick(T0 + k * 7 * S, 99.99, 100.01, 100.0 + 0.01 * (k % 7), 5.0)
    before = eng.features()
    res = eng.on_tick(T0 + 10 * S, 99.0, 101.0, 100.0, 1.0)
    assert (res.late, res.reason, res.closed_bars) == (True, LATE, ())
    assert same_values(tuple(eng.features().items()), tuple(before.items()))


@pytest.mark.parametrize("bad_last", [math.nan, math.inf, 0.0, -100.0])
def test_on_tick_when_price_invalid_rejects_it_and_leaves_features_unchanged(bad_last):
    eng = InstrumentFeatures()
    eng.on_tick(T0, 99.99, 100.01, 100.0, 5.0)
    before = eng.features()
    res = eng.on_tick(T0 + S, 99.99, 100.01, bad_last, 5.0)
    assert (res.late, res.reason) == (False, INVALID_PRICE)
    assert same_values(tuple(eng.features().items()), tuple(before.items()))


def test_tick_features_when_ticks_arrive_report_the_latest_event_time_tick():
    eng = InstrumentFeatures()
    eng.on_tick(T0 + 2 * S, 99.0, 101.0, 100.5, 1.0)
    eng.on_tick(T0 + 1 * S, 98.0, 102.0, 98.0, 1.0)  # older: not the latest
    f = eng.features()
    assert (f["last_price"], f["mid"]) == (100.5, 100.0)
    assert f["quoted_spread_bps"] == pytest.approx(200.0, rel=1e-15)
    assert f["effective_spread_bps"] == pytest.approx(100.0, rel=1e-15)


def test_bond_features_when_ticks_carry_yields_match_bond_risk_and_curve_spread():
    spec = BondSpec(0.05, date(2034, 1, 15), date(2024, 1, 15), 2, "30/360")
    curve = YieldCurve((1.0, 5.0, 10.0), (0.040, 0.045, 0.050))
    eng = InstrumentFeatures(
        FeatureConfig(bar_interval_ns=DAY, lateness_ns=0, bond=spec, curve=curve)
    )
    day0 = (date(2026, 4, 1) - date(1970, 1, 1)).days
    yields = [0.055, 0.056, 0.0545]
    for k, y in enumerate(yields):
        eng.on_tick((day0 + k) * DAY + 15 * HOUR, 94.9, 95.1, 95.0, 10.0, y)
    eng.flush()
    f = eng.features()
    settle = date(2026, 4, 1) + timedelta(days=2)
    r = bond_risk(spec, settle, 0.0545)
    assert f["bond_yield"] == 0.0545
    for name, value in [
        ("bond_clean_price", r.clean),
        ("bond_accrued", r.accrued),
        ("bond_mod_duration", r.modified),
        ("bond_mac_duration", r.macaulay),
        ("bond_convexity", r.convexity),
        ("bond_dv01", r.dv01),
    ]:
        assert f[name] == value, name
    t = (spec.maturity - settle).days / 365.0
    spread = 1e4 * (0.0545 - (0.045 + (t - 5.0) / 5.0 * 0.005))
    prev_t = t + 1 / 365.0
    prev_spread = 1e4 * (0.056 - (0.045 + (prev_t - 5.0) / 5.0 * 0.005))
    assert f["bond_spread_bps"] == pytest.approx(spread, abs=1e-9)
    assert f["bond_spread_chg_bps"] == pytest.approx(spread - prev_spread, abs=1e-9)


def test_flush_when_bars_are_open_closes_them_and_updates_bar_features():
    eng = InstrumentFeatures()
    eng.on_tick(T0 + S, 99.99, 100.01, 100.0, 5.0)
    assert math.isnan(eng.features()["bar_close"]) and eng.last_bar is None
    (bar,) = eng.flush()
    assert bar.close == 100.0 and eng.features()["bar_close"] == 100.0
    assert eng.last_bar == bar
    assert eng.bar_features() == {
        k: v for k, v in eng.features().items() if k in eng.bar_features()
    }
    assert "last_price" not in eng.bar_features()
