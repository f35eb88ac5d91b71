"""Mitigation suggestions: reduce, split at the ADV limit, most correlated hedge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from operators.mitigation import (
    Suggestion,
    best_hedge,
    hedge_suggestion,
    model_hedge,
    reduce_to,
    split_over_days,
    suggestions,
)
from operators.risk_model import EwmaCovariance

Z95 = scipy.stats.norm.ppf(0.95)


def cov_from(s: list[float], rho: list[list[float]]) -> np.ndarray:
    return np.array(rho) * np.outer(s, s)


# 3 assets: A-B corr +0.5, A-C corr -0.8, B-C corr -0.3
S3 = [0.02, 0.03, 0.015]
R3 = [[1.0, 0.5, -0.8], [0.5, 1.0, -0.3], [-0.8, -0.3, 1.0]]


def test_reduce_to_when_allowed_is_between_zero_and_requested_suggests_it():
    s = reduce_to(1_000, 400)
    assert s is not None and s.kind == "REDUCE" and s.quantity == 400
    assert s.message == "reduce to 400"
    assert reduce_to(1_000, 0) is None
    assert reduce_to(1_000, 1_000) is None


@pytest.mark.parametrize(
    ("qty", "adv", "share", "lot", "days", "per_day"),
    [
        (250_000, 1_000_000, 0.10, 1.0, 3, 100_000),  # ceil(2.5)
        (300_000, 1_000_000, 0.10, 1.0, 3, 100_000),  # exactly 3 days
        (300_000, 1_000_000, 0.10, 30_000.0, 4, 90_000),  # lots shrink the daily slice
        (1_000, 999, 0.25, 1.0, 5, 249),
    ],
)
def test_split_over_days_when_adv_limit_binds_uses_ceil_of_quantity_over_daily_cap(
    qty, adv, share, lot, days, per_day
):
    s = split_over_days(qty, adv, share, lot)

    assert s is not None and s.kind == "SPLIT"
    assert (s.days, s.quantity) == (days, per_day)
    assert f"split over {days} days" in s.message


def test_split_over_days_when_within_limit_or_adv_unknown_suggests_nothing():
    assert split_over_days(100_000, 1_000_000, 0.10) is None
    assert split_over_days(100_000, 0.0, 0.10) is None


@pytest.mark.parametrize(
    ("i", "expected", "rho"),
    [(0, "C", -0.8), (1, "A", 0.5), (2, "A", -0.8)],
)
def test_best_hedge_when_three_assets_picks_the_highest_absolute_correlation(i, expected, rho):
    ids = ["A", "B", "C"]
    c = cov_from(S3, R3)
    j = ids.index(expected)
    trade = 1_000_000.0

    h = best_hedge(ids, c, i, trade)

    assert h is not None and h.instrument_id == expected
    assert h.correlation == pytest.approx(rho, rel=1e-12)
    assert h.ratio == pytest.approx(rho * S3[i] / S3[j], rel=1e-12)
    assert h.notional == pytest.approx(-rho * S3[i] / S3[j] * trade, rel=1e-12)
    hedged = np.zeros(3)
    hedged[i], hedged[j] = trade, h.notional
    # the min-variance hedge leaves (1 - rho^2) of the trade's variance
    assert hedged @ c @ hedged == pytest.approx(trade**2 * S3[i] ** 2 * (1 - rho**2), rel=1e-12)


def test_best_hedge_when_excluded_or_uncorrelated_skips_them():
    ids = ["A", "B", "C"]
    c = cov_from(S3, R3)
    h = best_hedge(ids, c, 0, 1e6, exclude={"C"})
    assert h is not None and h.instrument_id == "B"
    assert best_hedge(ids, np.diag(np.square(S3)), 0, 1e6) is None


def simulated_model(seed: int = 0) -> EwmaCovariance:
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov_from(S3, R3) / 100.0)
    model = EwmaCovariance(0.995, min_obs=20, periods_per_day=100.0)
    for t in range(4_000):
        model.update(t, dict(zip("ABC", (chol @ rng.normal(size=3)).tolist(), strict=True)))
    return model


def test_model_hedge_when_fed_from_known_covariance_agrees_with_dense_best_hedge():
    model = simulated_model()
    ids = ["A", "B", "C"]

    h = model_hedge(model, "A", 1e6)
    ref = best_hedge(ids, model.cov(ids), 0, 1e6)

    assert h is not None and ref is not None
    assert h.instrument_id == ref.instrument_id == "C"
    assert h.correlation == pytest.approx(ref.correlation, rel=1e-12)
    assert h.ratio == pytest.approx(ref.ratio, rel=1e-12)
    assert h.correlation == pytest.approx(-0.8, abs=0.1)


def test_hedge_suggestion_when_hedge_lowers_var_gives_side_units_and_var_after():
    model = simulated_model()
    book_after = {"A": 2e6, "B": 1e5}
    ids = ["A", "B", "C"]
    c = model.cov(ids)

    s = hedge_suggestion(model, book_after, "A", 1e6, unit_cash={"C": 40.0}, lot_sizes={"C": 100.0})

    assert s is not None and s.kind == "HEDGE" and s.instrument_id == "C"
    assert s.side == "BUY"  # negative correlation: hedge on the same side
    assert s.notional is not None and s.notional > 0
    assert s.quantity == math.floor(s.notional / 40.0 / 100.0) * 100.0
    w = np.array([2e6, 1e5, s.notional])
    assert s.var_after == pytest.approx(Z95 * math.sqrt(w @ c @ w), rel=1e-9)
    assert s.var_after < Z95 * math.sqrt(w[:2] @ c[:2, :2] @ w[:2])


def test_hedge_suggestion_when_hedge_would_add_risk_suggests_nothing():
    model = simulated_model()
    # already long plenty of C (A's hedge): buying more C to hedge a small A trade adds risk
    s = hedge_suggestion(model, {"A": 1e5, "C": 5e6}, "A", 1e5)
    assert s is None


def test_suggestions_when_reduced_lists_reduce_split_hedge_in_order():
    hedge = Suggestion("HEDGE", "hedge: ...")

    got = suggestions(250_000, 100_000, adv=1_000_000, adv_share=0.1, lot=1.0, hedge=hedge)

    assert [s.kind for s in got] == ["REDUCE", "SPLIT", "HEDGE"]
    assert suggestions(100, 100, adv=1e6, adv_share=0.1) == []
    assert set(got[1].record()) >= {"kind", "message", "quantity", "days"}
