"""Fixed-rate bullet bonds: price <-> yield, duration, convexity, DV01, spread over a curve.

Conventions (they reproduce QuantLib 1.44 ``FixedRateBond`` + ``BondFunctions`` to 1e-9):

* Schedule: generated backward from ``maturity`` in steps of ``12 / frequency`` months
  (``maturity - k * step``, day clipped to the month's length, no end-of-month rule), unadjusted
  (``NullCalendar``), down to ``issue``; an ``issue`` off that grid gives a short first coupon.
  QuantLib: ``Schedule(issue, maturity, Period(freq), NullCalendar(), Unadjusted, Unadjusted,
  DateGeneration.Backward, False)``.
* Coupon amount ``100 * c * tau(start, end)`` with the bond's day count, so ACT/365F coupons
  vary with the period length (as QuantLib's ``FixedRateBond(0, 100, schedule, [c], dc)``).
* Day counts: ``"30/360"`` = QuantLib ``Thirty360(Thirty360.BondBasis)`` (day 31 -> 30; an end
  day 31 -> 30 when the start day is 30 or 31); ``"ACT/365F"`` = ``Actual365Fixed()``.
* Yield: compounded at the coupon frequency with the bond's day count
  (``InterestRate(y, dc, Compounded, freq)``); discounting as ``CashFlows::npv``: cash flows
  paid strictly after settlement (no settlement days: settlement is the valuation date),
  discount factors chained period by period from settlement.
* Prices per 100 face: ``dirty = clean + accrued``, ``accrued = 100 * c * tau(start, settle)``.
* ``modified = -dP/dy / P`` and ``convexity = d2P/dy2 / P`` as ``CashFlows::duration`` /
  ``convexity``; ``macaulay = (1 + y / f) * modified``; ``dv01 = modified * dirty * 1e-4`` (price
  fall for +1bp to first order, positive; QuantLib's ``basisPointValue`` is
  ``-dv01 + 0.5 * convexity * dirty * 1e-8``).
* Spread: ``yield - curve(T)``, ``T`` = ACT/365F years from settlement to maturity, the curve
  linearly interpolated in ``T`` with flat extrapolation.
"""

from __future__ import annotations

import bisect
import calendar
import itertools
import math
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
from numba import njit

DayCount = Literal["30/360", "ACT/365F"]
_DAY_COUNTS = ("30/360", "ACT/365F")


def year_fraction(d1: date, d2: date, day_count: DayCount) -> float:
    """Year fraction between two dates for ``"30/360"`` (bond basis) or ``"ACT/365F"``."""
    if day_count == "ACT/365F":
        return (d2 - d1).days / 365.0
    dd1, dd2 = d1.day, d2.day
    if dd1 == 31:
        dd1 = 30
    if dd2 == 31 and dd1 == 30:
        dd2 = 30
    days = 360 * (d2.year - d1.year) + 30 * (d2.month - d1.month) + (dd2 - dd1)
    return days / 360.0


def add_months(d: date, months: int) -> date:
    """``d`` shifted by ``months``, the day clipped to the target month's length."""
    m0 = d.month - 1 + months
    y, m = d.year + m0 // 12, m0 % 12 + 1
    return date(y, m, min(d.day, calendar.monthrange(y, m)[1]))


@dataclass(frozen=True, slots=True)
class BondSpec:
    """A fixed-rate bullet bond: annual ``coupon`` (0.05 = 5%) paid ``frequency`` times a year."""

    coupon: float
    maturity: date
    issue: date
    frequency: int = 2
    day_count: DayCount = "30/360"

    def __post_init__(self) -> None:
        if self.frequency not in (1, 2, 4, 12):
            raise ValueError(f"BondSpec: frequency must be 1, 2, 4 or 12, got {self.frequency}")
        if self.day_count not in _DAY_COUNTS:
            raise ValueError(f"BondSpec: day_count must be one of {_DAY_COUNTS}")
        if not self.issue < self.maturity:
            raise ValueError(f"BondSpec: issue {self.issue} must precede {self.maturity}")
        if not (math.isfinite(self.coupon) and self.coupon >= 0.0):
            raise ValueError(f"BondSpec: coupon must be finite and >= 0, got {self.coupon}")


@lru_cache(maxsize=1024)
def coupon_schedule(spec: BondSpec) -> tuple[date, ...]:
    """Accrual dates ``(issue, d1, ..., maturity)`` generated backward from maturity."""
    step = 12 // spec.frequency
    dates = [spec.maturity]
    k = 1
    while True:
        d = add_months(spec.maturity, -k * step)
        if d < spec.issue:
            break
        dates.append(d)
        k += 1
    if dates[-1] != spec.issue:
        dates.append(spec.issue)
    return tuple(reversed(dates))


class Cashflows(NamedTuple):
    """Remaining cash flows per 100 face after ``settle``, with QuantLib's stepwise times."""

    amounts: np.ndarray  # coupon (plus redemption on the last one)
    steps: np.ndarray  # year fraction from the previous flow (first one: from settlement)
    accrued: float
    frequency: int


@lru_cache(maxsize=4096)
def bond_cashflows(spec: BondSpec, settle: date) -> Cashflows:
    """Cash flows of ``spec`` paid strictly after ``settle``; raises if it has matured."""
    if settle >= spec.maturity:
        raise ValueError(f"bond_cashflows: settlement {settle} is not before {spec.maturity}")
    dc = spec.day_count
    sched = coupon_schedule(spec)
    amounts: list[float] = []
    steps: list[float] = []
    accrued = 0.0
    last = settle
    for start, end in itertools.pairwise(sched):
        if end <= settle:
            continue
        amount = 100.0 * ((1.0 + spec.coupon * year_fraction(start, end, dc)) - 1.0)
        if last != start:  # first remaining coupon: QuantLib's getStepwiseDiscountTime
            step = year_fraction(start, end, dc) - year_fraction(start, last, dc)
            if settle > start:
                accrued = 100.0 * ((1.0 + spec.coupon * year_fraction(start, settle, dc)) - 1.0)
        else:
            step = year_fraction(last, end, dc)
        amounts.append(amount)
        steps.append(step)
        last = end
    amounts[-1] += 100.0  # redemption: same date, zero extra discounting step
    return Cashflows(np.array(amounts), np.array(steps), accrued, spec.frequency)


@njit(cache=True)
def bond_npv(amounts: np.ndarray, steps: np.ndarray, y: float, f: float) -> float:
    """Dirty price: discount factors ``(1 + y/f)**(-f * step)`` chained over the flows."""
    base = 1.0 + y / f
    npv = 0.0
    discount = 1.0
    for i in range(amounts.shape[0]):
        discount *= 1.0 / base ** (f * steps[i])
        npv += amounts[i] * discount
    return npv


@njit(cache=True)
def bond_risk_kernel(
    amounts: np.ndarray, steps: np.ndarray, y: float, f: float
) -> tuple[float, float, float]:
    """Dirty price, modified duration and convexity (QuantLib's formulas)."""
    base = 1.0 + y / f
    p = 0.0
    dpdy = 0.0
    d2pdy2 = 0.0
    t = 0.0
    for i in range(amounts.shape[0]):
        c = amounts[i]
        t += steps[i]
        b = 1.0 / base ** (f * t)
        p += c * b
        dpdy -= c * t * b / base
        d2pdy2 += c * b * t * (f * t + 1.0) / (f * base * base)
    return p, -dpdy / p, d2pdy2 / p


@njit(cache=True)
def bond_yield_kernel(
    amounts: np.ndarray, steps: np.ndarray, dirty: float, f: float, guess: float
) -> float:
    """Yield with ``npv(y) = dirty``: Newton steps kept inside a shrinking bracket (bisection)."""
    lo = -0.999999 * f  # 1 + y/f must stay positive
    hi = 1.0
    while bond_npv(amounts, steps, hi, f) > dirty and hi < 1e6:
        lo = hi
        hi *= 2.0
    y = min(max(guess, lo), hi)
    for _ in range(200):
        base = 1.0 + y / f
        p = 0.0
        dpdy = 0.0
        t = 0.0
        for i in range(amounts.shape[0]):
            t += steps[i]
            b = 1.0 / base ** (f * t)
            p += amounts[i] * b
            dpdy -= amounts[i] * t * b / base
        diff = p - dirty
        if diff == 0.0:
            return y
        if diff > 0.0:  # price too high -> yield too low
            lo = y
        else:
            hi = y
        y_new = y - diff / dpdy if dpdy != 0.0 else 0.5 * (lo + hi)
        if not (lo < y_new < hi):
            y_new = 0.5 * (lo + hi)
        if abs(y_new - y) <= 1e-15 * max(1.0, abs(y)):
            return y_new
        y = y_new
    return y


class BondPrice(NamedTuple):
    """Clean and dirty price and accrued interest, per 100 face."""

    clean: float
    dirty: float
    accrued: float


class BondRisk(NamedTuple):
    """Prices per 100 face and yield sensitivities at a given yield."""

    yld: float
    clean: float
    dirty: float
    accrued: float
    macaulay: float
    modified: float
    convexity: float
    dv01: float


def price_from_yield(spec: BondSpec, settle: date, yld: float) -> BondPrice:
    """Clean / dirty price per 100 face at yield ``yld`` for settlement on ``settle``."""
    cf = bond_cashflows(spec, settle)
    dirty = float(bond_npv(cf.amounts, cf.steps, yld, float(cf.frequency)))
    return BondPrice(dirty - cf.accrued, dirty, cf.accrued)


def yield_from_price(spec: BondSpec, settle: date, clean: float, guess: float = 0.05) -> float:
    """Yield to maturity from a clean price per 100 face (safeguarded Newton)."""
    if not (math.isfinite(clean) and clean > 0.0):
        raise ValueError(f"yield_from_price: clean price must be > 0, got {clean}")
    cf = bond_cashflows(spec, settle)
    f = float(cf.frequency)
    return float(bond_yield_kernel(cf.amounts, cf.steps, clean + cf.accrued, f, guess))


def bond_risk(spec: BondSpec, settle: date, yld: float) -> BondRisk:
    """Prices, Macaulay and modified duration, convexity and DV01 at yield ``yld``."""
    cf = bond_cashflows(spec, settle)
    f = float(cf.frequency)
    dirty, modified, convexity = bond_risk_kernel(cf.amounts, cf.steps, yld, f)
    return BondRisk(
        yld=yld,
        clean=dirty - cf.accrued,
        dirty=dirty,
        accrued=cf.accrued,
        macaulay=(1.0 + yld / f) * modified,
        modified=modified,
        convexity=convexity,
        dv01=modified * dirty * 1e-4,
    )


@dataclass(frozen=True, slots=True)
class YieldCurve:
    """Reference yields at tenors in years; linear interpolation, flat beyond the ends."""

    tenors: tuple[float, ...]
    yields: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.tenors) == 0 or len(self.tenors) != len(self.yields):
            raise ValueError("YieldCurve: tenors and yields must be non-empty and equally long")
        if any(b <= a for a, b in zip(self.tenors, self.tenors[1:], strict=False)):
            raise ValueError("YieldCurve: tenors must be strictly increasing")
        if not all(math.isfinite(v) for v in (*self.tenors, *self.yields)):
            raise ValueError("YieldCurve: tenors and yields must be finite")

    def __call__(self, t: float) -> float:
        """Interpolated yield at ``t`` years."""
        ts, ys = self.tenors, self.yields
        if t <= ts[0]:
            return ys[0]
        if t >= ts[-1]:
            return ys[-1]
        i = bisect.bisect_right(ts, t)
        w = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
        return ys[i - 1] + w * (ys[i] - ys[i - 1])


def time_to_maturity(spec: BondSpec, settle: date) -> float:
    """ACT/365F years from settlement to maturity."""
    return (spec.maturity - settle).days / 365.0


def yield_spread(spec: BondSpec, settle: date, yld: float, curve: YieldCurve) -> float:
    """Bond yield minus the reference curve's yield at the bond's time to maturity (decimal)."""
    return yld - curve(time_to_maturity(spec, settle))
