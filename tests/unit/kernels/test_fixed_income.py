"""Bond math against QuantLib 1.44 BondFunctions (FixedRateBond, unadjusted backward schedule)."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
import QuantLib as ql

from operators.kernels import (
    BondSpec,
    YieldCurve,
    bond_risk,
    price_from_yield,
    year_fraction,
    yield_from_price,
    yield_spread,
)
from operators.kernels.fixed_income import coupon_schedule

DAY_COUNTS = {"30/360": ql.Thirty360(ql.Thirty360.BondBasis), "ACT/365F": ql.Actual365Fixed()}
FREQS = {1: ql.Annual, 2: ql.Semiannual, 4: ql.Quarterly}


def qdate(d: date) -> ql.Date:
    return ql.Date(d.day, d.month, d.year)


def ql_bond(spec: BondSpec) -> ql.FixedRateBond:
    schedule = ql.Schedule(
        qdate(spec.issue),
        qdate(spec.maturity),
        ql.Period(FREQS[spec.frequency]),
        ql.NullCalendar(),
        ql.Unadjusted,
        ql.Unadjusted,
        ql.DateGeneration.Backward,
        False,
    )
    return ql.FixedRateBond(0, 100.0, schedule, [spec.coupon], DAY_COUNTS[spec.day_count])


def ql_figures(spec: BondSpec, settle: date, y: float) -> dict[str, float]:
    bond = ql_bond(spec)
    s = qdate(settle)
    ql.Settings.instance().evaluationDate = s
    rate = ql.InterestRate(y, DAY_COUNTS[spec.day_count], ql.Compounded, FREQS[spec.frequency])
    bf = ql.BondFunctions
    return {
        "clean": bf.cleanPrice(bond, rate, s),
        "dirty": bond.dirtyPrice(y, rate.dayCounter(), ql.Compounded, FREQS[spec.frequency], s),
        "accrued": bf.accruedAmount(bond, s),
        "modified": bf.duration(bond, rate, ql.Duration.Modified, s),
        "macaulay": bf.duration(bond, rate, ql.Duration.Macaulay, s),
        "convexity": bf.convexity(bond, rate, s),
        "bpv": bf.basisPointValue(bond, rate, s),
    }


def random_bonds(n: int, seed: int) -> list[tuple[BondSpec, date, float]]:
    """Bonds with random tenors, stubs, coupons, day counts and mid-period settlements."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        maturity = date(2026, 1, 1) + timedelta(days=rnd.randint(0, 12000))
        issue = maturity - timedelta(days=rnd.randint(100, 11000))
        spec = BondSpec(
            coupon=rnd.choice([0.0, 0.0125, 0.05, 0.0725]),
            maturity=maturity,
            issue=issue,
            frequency=rnd.choice([1, 2, 4]),
            day_count=rnd.choice(["30/360", "ACT/365F"]),
        )
        settle = issue + timedelta(days=rnd.randint(0, (maturity - issue).days - 1))
        out.append((spec, settle, rnd.uniform(-0.005, 0.15)))
    return out


TEN_YEAR = BondSpec(0.05, date(2034, 1, 15), date(2024, 1, 15), 2, "30/360")


def test_bond_risk_when_10y_5pct_semiannual_at_6pct_matches_quantlib_facts():
    r = bond_risk(TEN_YEAR, date(2024, 1, 15), 0.06)
    assert r.clean == pytest.approx(92.5612625698, abs=1e-9)
    assert r.modified == pytest.approx(7.6650459613, abs=1e-9)
    assert r.convexity == pytest.approx(71.7853980129, abs=1e-9)


@pytest.mark.parametrize(("spec", "settle", "y"), random_bonds(150, seed=11))
def test_bond_risk_when_any_bond_and_settlement_matches_quantlib_to_1e_9(spec, settle, y):
    ours = bond_risk(spec, settle, y)
    ref = ql_figures(spec, settle, y)
    for field in ("clean", "dirty", "accrued", "modified", "macaulay", "convexity"):
        assert getattr(ours, field) == pytest.approx(ref[field], rel=1e-9, abs=1e-12), field
    # QuantLib 1.44's BPV is second order: -dv01 + 0.5 * convexity * dirty * (1e-4) ** 2
    delta = ref["bpv"] - 0.5 * ref["convexity"] * ref["dirty"] * 1e-8
    assert ours.dv01 == pytest.approx(-delta, rel=1e-9)


@pytest.mark.parametrize(("spec", "settle", "y"), random_bonds(60, seed=12))
def test_yield_from_price_when_given_quantlib_clean_price_recovers_quantlibs_yield(spec, settle, y):
    clean = ql_figures(spec, settle, y)["clean"]
    bond = ql_bond(spec)
    ref = ql.BondFunctions.bondYield(
        bond,
        ql.BondPrice(clean, ql.BondPrice.Clean),
        DAY_COUNTS[spec.day_count],
        ql.Compounded,
        FREQS[spec.frequency],
        qdate(settle),
        1e-14,
        200,
        0.05,
    )
    ours = yield_from_price(spec, settle, clean)
    assert ours == pytest.approx(ref, abs=1e-11)
    assert ours == pytest.approx(y, abs=1e-11)


@pytest.mark.parametrize("guess", [-0.5, 0.0, 0.05, 0.9])
def test_yield_from_price_when_guess_is_far_off_still_converges(guess):
    settle = date(2027, 3, 3)
    for y in (-0.01, 0.02, 0.25, 0.6):
        clean = price_from_yield(TEN_YEAR, settle, y).clean
        assert yield_from_price(TEN_YEAR, settle, clean, guess) == pytest.approx(y, abs=1e-12)


def test_price_when_settling_between_coupons_dirty_is_clean_plus_accrued():
    p = price_from_yield(TEN_YEAR, date(2026, 4, 3), 0.06)
    assert p.accrued == pytest.approx(100 * 0.05 * 78 / 360, rel=1e-12)  # 30/360 from 15 Jan
    assert p.dirty == pytest.approx(p.clean + p.accrued, rel=1e-15)


def test_price_when_settling_on_a_coupon_date_excludes_that_coupon_and_accrues_nothing():
    on = price_from_yield(TEN_YEAR, date(2026, 7, 15), 0.05)
    assert on.accrued == 0.0
    assert on.clean == pytest.approx(100.0, abs=1e-10)  # a par bond at its own yield


@pytest.mark.parametrize("day_count", ["30/360", "ACT/365F"])
def test_year_fraction_when_random_dates_matches_quantlib_day_counter(day_count):
    rnd = random.Random(5)
    dc = DAY_COUNTS[day_count]
    for _ in range(3000):
        d1 = date(2000, 1, 1) + timedelta(days=rnd.randint(0, 12000))
        d2 = d1 + timedelta(days=rnd.randint(0, 4000))
        assert year_fraction(d1, d2, day_count) == dc.yearFraction(qdate(d1), qdate(d2))


def test_schedule_when_issue_is_off_cycle_has_a_short_first_coupon_like_quantlib():
    spec = BondSpec(0.04, date(2030, 8, 31), date(2025, 5, 10), 4, "ACT/365F")
    ours = coupon_schedule(spec)
    ref = ql.Schedule(
        qdate(spec.issue),
        qdate(spec.maturity),
        ql.Period(ql.Quarterly),
        ql.NullCalendar(),
        ql.Unadjusted,
        ql.Unadjusted,
        ql.DateGeneration.Backward,
        False,
    )
    assert [qdate(d) for d in ours] == list(ref)
    assert ours[1] == date(2025, 5, 31)


def test_yield_spread_when_curve_is_linear_returns_bond_yield_minus_interpolated_yield():
    curve = YieldCurve((1.0, 5.0, 10.0), (0.03, 0.04, 0.045))
    settle = date(2029, 1, 15)  # 5 years (1826 days) before maturity
    t = (TEN_YEAR.maturity - settle).days / 365.0
    expected = 0.055 - (0.04 + (t - 5.0) / 5.0 * 0.005)
    assert yield_spread(TEN_YEAR, settle, 0.055, curve) == pytest.approx(expected, abs=1e-15)
    assert curve(0.5) == 0.03 and curve(30.0) == 0.045


def test_bond_functions_when_settlement_at_or_after_maturity_raise_value_error():
    with pytest.raises(ValueError, match="not before"):
        bond_risk(TEN_YEAR, TEN_YEAR.maturity, 0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frequency": 3},
        {"day_count": "ACT/360"},
        {"issue": date(2040, 1, 1)},
        {"coupon": float("nan")},
    ],
)
def test_bond_spec_when_terms_invalid_raises_value_error(kwargs):
    base = {"coupon": 0.05, "maturity": date(2034, 1, 15), "issue": date(2024, 1, 15)}
    with pytest.raises(ValueError, match="BondSpec"):
        BondSpec(**{**base, **kwargs})
