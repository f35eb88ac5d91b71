"""Event-time bars: OHLCV, lateness, out-of-order equivalence, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels import INVALID_PRICE, INVALID_SIZE, LATE, Bar, BarBuilder

from ._helpers import T0, S, Tick, same_values, shuffle_within, tick, tick_stream


def run(builder: BarBuilder, ticks: list[Tick]) -> tuple[list[Bar], int]:
    bars: list[Bar] = []
    late = 0
    for t in ticks:
        res = builder.add(*t)
        late += res.late
        bars.extend(res.closed)
    bars.extend(builder.flush())
    return bars, late


def test_bar_when_ticks_in_one_interval_aggregates_ohlcv_vwap_and_spreads():
    b = BarBuilder(60 * S, 0)
    for t in [tick(T0 + S, 100.0, 2.0), tick(T0 + 2 * S, 102.0, 1.0, 0.04), tick(T0 + 3 * S, 99)]:
        assert b.add(*t).reason is None
    (bar,) = b.flush()
    assert (bar.start_ns, bar.end_ns) == (T0, T0 + 60 * S)
    assert (bar.open, bar.high, bar.low, bar.close) == (100.0, 102.0, 99.0, 99.0)
    assert (bar.volume, bar.notional, bar.ticks) == (4.0, 401.0, 3)
    assert bar.vwap == 401.0 / 4.0
    assert bar.spread_mean == pytest.approx(0.08 / 3, rel=1e-12)
    mean_bps = (1e4 * 0.02 / 100 + 1e4 * 0.04 / 102 + 1e4 * 0.02 / 99) / 3
    assert bar.spread_bps_mean == pytest.approx(mean_bps, rel=1e-12)
    assert bar.eff_spread_bps_mean == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(bar.close_yield)


def test_bar_when_single_tick_has_equal_ohlc_and_vwap():
    b = BarBuilder(60 * S, 0)
    b.add(*tick(T0 + 5 * S, 101.5, 7.0))
    closed = b.add(*tick(T0 + 60 * S, 99.0)).closed
    assert len(closed) == 1
    bar = closed[0]
    assert bar.open == bar.high == bar.low == bar.close == bar.vwap == 101.5
    assert (bar.volume, bar.ticks) == (7.0, 1)


def test_bar_when_only_quotes_traded_has_nan_vwap():
    b = BarBuilder(60 * S, 0)
    b.add(*tick(T0, 100.0, 0.0))
    (bar,) = b.flush()
    assert bar.volume == 0.0 and math.isnan(bar.vwap)


def test_bars_when_gap_between_ticks_skip_empty_intervals():
    b = BarBuilder(60 * S, 0)
    bars, _ = run(b, [tick(T0), tick(T0 + 10 * 60 * S), tick(T0 + 11 * 60 * S + 1)])
    assert [x.start_ns for x in bars] == [T0, T0 + 600 * S, T0 + 660 * S]


def test_bar_when_watermark_passes_its_end_closes_and_not_before():
    b = BarBuilder(60 * S, 5 * S)
    b.add(*tick(T0 + 10 * S))
    assert b.add(*tick(T0 + 64 * S)).closed == ()  # watermark 59 s < end 60 s
    assert b.add(*tick(T0 + 65 * S - 1)).closed == ()
    closed = b.add(*tick(T0 + 65 * S)).closed  # watermark == end
    assert [x.start_ns for x in closed] == [T0]


def test_tick_when_its_bar_is_still_open_within_lateness_updates_that_bar():
    b = BarBuilder(60 * S, 5 * S)
    b.add(*tick(T0 + 10 * S, 100.0))
    b.add(*tick(T0 + 63 * S, 105.0))
    res = b.add(*tick(T0 + 59 * S, 90.0))  # 4 s behind max, bar end + 5 s > max
    assert (res.late, res.reason) == (False, None)
    first = b.flush()[0]
    assert (first.low, first.close, first.ticks) == (90.0, 90.0, 2)


def test_tick_when_later_than_allowed_lateness_is_reported_late_and_ignored():
    b = BarBuilder(60 * S, 5 * S)
    b.add(*tick(T0 + 10 * S, 100.0))
    closed = b.add(*tick(T0 + 70 * S, 101.0)).closed
    res = b.add(*tick(T0 + 59 * S, 1.0))
    assert (res.late, res.reason, res.closed) == (True, LATE, ())
    assert closed[0].low == 100.0 and closed[0].ticks == 1
    assert b.flush()[0].ticks == 1  # the open bar did not see it either


def test_tick_when_its_bar_was_flushed_is_reported_late():
    b = BarBuilder(60 * S, 5 * S)
    b.add(*tick(T0 + 10 * S))
    b.flush()
    assert b.add(*tick(T0 + 11 * S)).reason == LATE
    assert b.add(*tick(T0 + 61 * S)).reason is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (tick(T0, math.nan), INVALID_PRICE),
        (tick(T0, math.inf), INVALID_PRICE),
        (tick(T0, 0.0), INVALID_PRICE),
        (tick(T0, -5.0), INVALID_PRICE),
        ((T0, 100.0, -1.0, 99.0, 101.0), INVALID_SIZE),
        ((T0, 100.0, 1.0, math.nan, 101.0), INVALID_PRICE),
    ],
)
def test_tick_when_price_or_size_invalid_is_rejected_and_never_reaches_a_bar(bad, reason):
    b = BarBuilder(60 * S, 0)
    b.add(*tick(T0, 100.0))
    res = b.add(*bad)
    assert (res.reason, res.late) == (reason, False)
    (bar,) = b.flush()
    assert (bar.ticks, bar.low, bar.high, bar.volume) == (1, 100.0, 100.0, 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_bars_when_stream_shuffled_within_lateness_equal_sorted_bars_exactly(seed):
    ticks = tick_stream(3000, seed)
    sorted_bars, late = run(BarBuilder(60 * S, 10 * S), ticks)
    shuffled = shuffle_within(ticks, 10 * S, seed + 100)
    assert shuffled != ticks
    shuffled_bars, late_shuffled = run(BarBuilder(60 * S, 10 * S), shuffled)
    assert (late, late_shuffled) == (0, 0)
    assert len(sorted_bars) > 40
    assert same_values(shuffled_bars, sorted_bars)  # identical, including the exact sums


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations(range(24)),
    interval=st.sampled_from([S, 5 * S, 60 * S]),
)
def test_bars_when_any_permutation_within_lateness_equal_sorted_bars(order, interval):
    rng = np.random.default_rng(len(order))
    ts = T0 + np.sort(rng.integers(0, 20 * S, 24))
    ticks = [tick(int(t), float(100 + rng.normal()), float(rng.integers(1, 9))) for t in ts]
    lateness = 30 * S  # every tick of the permutation is within lateness
    expected, _ = run(BarBuilder(interval, lateness), ticks)
    got, late = run(BarBuilder(interval, lateness), [ticks[i] for i in order])
    assert late == 0
    assert same_values(got, expected)


def test_bar_when_ticks_share_a_timestamp_breaks_open_close_ties_by_price_then_size():
    b = BarBuilder(60 * S, 0)
    for t in [tick(T0 + S, 101.0, 1.0), tick(T0 + S, 100.0, 2.0), tick(T0 + S, 101.0, 3.0)]:
        b.add(*t)
    (bar,) = b.flush()
    assert (bar.open, bar.close) == (100.0, 101.0)


def test_bar_when_ticks_carry_yields_keeps_the_latest_ticks_yield():
    b = BarBuilder(60 * S, 10 * S)
    b.add(*tick(T0 + 2 * S, 99.0), 0.051)
    b.add(*tick(T0 + 3 * S, 99.5))
    b.add(*tick(T0 + 1 * S, 98.0), 0.052)
    (bar,) = b.flush()
    assert bar.close_yield == 0.051
