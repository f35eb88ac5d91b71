"""Input validation: bad prices, sizes, quotes and yields give a reason code, never state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operators.kernels import (
    CROSSED_QUOTE,
    INVALID_PRICE,
    INVALID_SIZE,
    INVALID_TIMESTAMP,
    INVALID_YIELD,
    check_price,
    check_quote,
    check_size,
    check_tick,
    check_yield,
)

BAD_PRICES = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.5, "1.0", None]


@pytest.mark.parametrize("x", BAD_PRICES, ids=repr)
def test_check_price_when_value_is_nan_inf_zero_negative_or_not_a_number_returns_reason(x):
    assert check_price(x) == INVALID_PRICE


@pytest.mark.parametrize("x", [1e-12, 1.0, 101.25, 1e12, np.float64(3.5), 7])
def test_check_price_when_value_is_positive_and_finite_returns_none(x):
    assert check_price(x) is None


@pytest.mark.parametrize(
    ("x", "expected"), [(0.0, None), (10.0, None), (-1.0, INVALID_SIZE), (math.nan, INVALID_SIZE)]
)
def test_check_size_when_given_value_returns_expected_reason(x, expected):
    assert check_size(x) == expected


@pytest.mark.parametrize(
    ("bid", "ask", "expected"),
    [
        (99.0, 100.0, None),
        (100.0, 100.0, None),
        (100.5, 100.0, CROSSED_QUOTE),
        (math.nan, 100.0, INVALID_PRICE),
        (99.0, math.inf, INVALID_PRICE),
        (0.0, 1.0, INVALID_PRICE),
    ],
)
def test_check_quote_when_given_bid_ask_returns_expected_reason(bid, ask, expected):
    assert check_quote(bid, ask) == expected


@pytest.mark.parametrize(
    ("y", "freq", "expected"),
    [(0.05, 2, None), (-0.01, 2, None), (-2.0, 2, INVALID_YIELD), (math.nan, 1, INVALID_YIELD)],
)
def test_check_yield_when_given_value_returns_expected_reason(y, freq, expected):
    assert check_yield(y, freq) == expected


def test_check_tick_when_timestamp_not_an_integer_returns_invalid_timestamp():
    assert check_tick(1.5, 99.0, 100.0, 99.5, 1.0) == INVALID_TIMESTAMP  # type: ignore[arg-type]
    assert check_tick(np.int64(5), 99.0, 100.0, 99.5, 1.0) is None
