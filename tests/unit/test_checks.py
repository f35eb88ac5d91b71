"""Each pre-trade check on its own: the cap it implies and whether its reason fires."""

from __future__ import annotations

import math

import pytest

from operators.checks import (
    STATE_ORDER,
    check_adv,
    check_concentration,
    check_order_notional,
    check_price_collar,
    check_trading_state,
    round_to_lot,
)

BUY, SELL = 1, -1


@pytest.mark.parametrize(
    ("qty", "lot", "expected"),
    [
        (2500.0, 1.0, 2500.0),
        (2500.9, 1.0, 2500.0),
        (2499.9999999999995, 1.0, 2500.0),  # float noise just under a whole lot
        (250.0, 100.0, 200.0),
        (299.99, 100.0, 200.0),
        (300.0, 100.0, 300.0),
        (0.29, 0.1, 0.2),
        (2499.975, 0.5, 2499.5),
        (99.0, 100.0, 0.0),
        (0.0, 1.0, 0.0),
        (-5.0, 1.0, 0.0),
        (math.nan, 1.0, 0.0),
        (math.inf, 1.0, 0.0),
    ],
)
def test_round_to_lot_when_given_quantity_floors_to_whole_lots(qty, lot, expected):
    got = round_to_lot(qty, lot)

    assert got == pytest.approx(expected, abs=1e-9)
    assert got <= max(qty, 0.0) + 1e-6 or math.isnan(qty) or math.isinf(qty)
    if lot:
        assert abs(got / lot - round(got / lot)) < 1e-9


@pytest.mark.parametrize(("qty", "lot"), [(1.9, 0.01), (0.7, 0.1), (0.3, 0.1), (0.57, 0.01)])
def test_round_to_lot_when_quantity_is_whole_decimal_lots_never_exceeds_it(qty, lot):
    assert round_to_lot(qty, lot) <= qty


def test_round_to_lot_when_lot_is_a_tenth_returns_three_lots_for_point_three():
    assert round_to_lot(0.3, 0.1) == pytest.approx(0.3)


def test_check_trading_state_when_active_returns_none():
    assert check_trading_state(10.0, "ACTIVE", BUY, 100.0) is None


@pytest.mark.parametrize(("side", "position"), [(BUY, 0.0), (SELL, 500.0), (BUY, -500.0)])
def test_check_trading_state_when_halted_caps_at_zero(side, position):
    cap = check_trading_state(10.0, "HALTED", side, position)

    assert cap is not None
    assert cap.max_quantity == 0.0
    assert cap.reason is not None and cap.reason.code == "TRADING_HALTED"


@pytest.mark.parametrize(
    ("side", "position", "expected_cap"),
    [
        (SELL, 500.0, 500.0),  # long, selling reduces
        (BUY, -500.0, 500.0),  # short, buying reduces
        (BUY, 500.0, 0.0),  # long, buying increases
        (SELL, -500.0, 0.0),  # short, selling increases
        (BUY, 0.0, 0.0),
        (SELL, 0.0, 0.0),
    ],
)
def test_check_trading_state_when_reduce_only_caps_at_reducible_position(
    side, position, expected_cap
):
    cap = check_trading_state(1_000.0, "REDUCE_ONLY", side, position)

    assert cap is not None
    assert cap.max_quantity == expected_cap
    assert cap.reason is not None and cap.reason.code == "REDUCE_ONLY"


def test_check_trading_state_when_reduce_only_and_trade_fits_gives_no_reason():
    cap = check_trading_state(300.0, "REDUCE_ONLY", SELL, 500.0)

    assert cap is not None and cap.max_quantity == 500.0
    assert cap.reason is None


def test_state_order_when_compared_halted_is_strictest():
    assert STATE_ORDER["ACTIVE"] < STATE_ORDER["REDUCE_ONLY"] < STATE_ORDER["HALTED"]


@pytest.mark.parametrize(
    ("qty", "unit_notional", "limit", "cap", "fires"),
    [
        (50_000.0, 100.0, 5_000_000.0, 50_000.0, False),  # exactly at the limit
        (50_001.0, 100.0, 5_000_000.0, 50_000.0, True),
        (1.0, 1000.0, 999.0, 0.999, True),
        (10.0, 0.5, 5.0, 10.0, False),
    ],
)
def test_check_order_notional_when_given_order_caps_at_limit_over_unit_notional(
    qty, unit_notional, limit, cap, fires
):
    got = check_order_notional(qty, unit_notional, limit)

    assert got.max_quantity == pytest.approx(cap)
    assert (got.reason is not None) == fires
    if fires:
        assert got.reason.code == "MAX_ORDER_NOTIONAL"
        assert got.reason.value == pytest.approx(qty * unit_notional)
        assert got.reason.limit == limit


@pytest.mark.parametrize(
    ("qty", "side", "position", "expected_cap", "fires"),
    [
        (2500.0, BUY, 0.0, 2500.0, False),  # exactly 25% of 1,000,000 at 100
        (2501.0, BUY, 0.0, 2500.0, True),
        (1500.0, BUY, 1000.0, 1500.0, False),
        (1501.0, BUY, 1000.0, 1500.0, True),
        (3500.0, SELL, 1000.0, 3500.0, False),  # ends 2500 short: 25%
        (3501.0, SELL, 1000.0, 3500.0, True),
        (1.0, BUY, 3000.0, 0.0, True),  # already over the limit
        (100.0, SELL, 3000.0, 5500.0, False),  # reducing an over-limit position
    ],
)
def test_check_concentration_when_given_position_caps_by_closed_form(
    qty, side, position, expected_cap, fires
):
    got = check_concentration(qty, side, position, 100.0, 1_000_000.0, 0.25)

    assert got.max_quantity == pytest.approx(expected_cap)
    assert (got.reason is not None) == fires
    if fires:
        assert got.reason.code == "CONCENTRATION"
        assert got.reason.value == pytest.approx(abs(position + side * qty) * 100.0 / 1e6)
        assert got.reason.limit == 0.25


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_check_concentration_when_portfolio_value_not_positive_caps_at_zero(value):
    got = check_concentration(1.0, BUY, 0.0, 100.0, value, 0.25)

    assert got.max_quantity == 0.0
    assert got.reason is not None and got.reason.code == "NON_POSITIVE_PORTFOLIO_VALUE"


@pytest.mark.parametrize(
    ("qty", "adv", "share", "cap", "fires"),
    [
        (100_000.0, 1_000_000.0, 0.1, 100_000.0, False),
        (150_000.0, 1_000_000.0, 0.1, 100_000.0, True),
        (5.0, 40.0, 0.25, 10.0, False),
    ],
)
def test_check_adv_when_adv_known_caps_at_share_of_adv(qty, adv, share, cap, fires):
    got = check_adv(qty, adv, share)

    assert got is not None
    assert got.max_quantity == pytest.approx(cap)
    assert (got.reason is not None) == fires
    if fires:
        assert got.reason.code == "ADV_SHARE"
        assert got.reason.value == pytest.approx(qty / adv)


@pytest.mark.parametrize("adv", [0.0, -1.0])
def test_check_adv_when_adv_unknown_returns_none(adv):
    assert check_adv(1e12, adv, 0.1) is None


def test_check_price_collar_when_market_order_returns_none():
    assert check_price_collar(None, 100.0, 0.1) is None


@pytest.mark.parametrize(
    ("limit_price", "fires"),
    [
        (100.0, False),
        (95.0, False),
        (105.0, False),
        (90.0, False),  # exactly 10% below: not *more* than the collar
        (110.0, False),  # exactly 10% above: not *more* than the collar
        (89.99, True),
        (110.01, True),
        (1000.0, True),  # fat finger
        (1.0, True),
    ],
)
def test_check_price_collar_when_limit_price_given_fires_only_beyond_collar(limit_price, fires):
    got = check_price_collar(limit_price, 100.0, 0.10)

    assert (got is not None) == fires
    if fires:
        assert got.max_quantity == 0.0
        assert got.reason.code == "PRICE_COLLAR"
        assert got.reason.value == pytest.approx(abs(limit_price - 100.0) / 100.0)
        assert got.reason.limit == 0.10
