"""VaR backtests, pure functions of an exception sequence.

Kupiec proportion of failures, Christoffersen independence and conditional coverage, and
the Basel traffic light.

An *exception* is a day whose loss exceeded the VaR forecast made the day before. With a
VaR at confidence ``c`` the expected exception rate is ``p = 1 - c``.

* Kupiec (1995) POF: ``LR_pof = -2 ln[(1-p)^(n-x) p^x] + 2 ln[(1-x/n)^(n-x) (x/n)^x]``,
  chi-squared with 1 degree of freedom under H0 "the rate is p".
* Christoffersen (1998) independence: from the transition counts ``n_ij`` (day t-1 in
  state i, day t in state j; 1 = exception), ``LR_ind = -2 ln[(1-pi)^(n00+n10)
  pi^(n01+n11)] + 2 ln[(1-pi01)^n00 pi01^n01 (1-pi11)^n10 pi11^n11]``, chi-squared(1)
  under H0 "exceptions do not cluster". Conditional coverage ``LR_cc = LR_pof + LR_ind``,
  chi-squared(2) (the usual textbook sum; Jorion, *Value at Risk*, ch. 6).
* Basel traffic light (BCBS 1996): the zone of ``x`` exceptions in ``n`` days is green
  while the binomial probability of at most ``x`` is below 95%, yellow below 99.99%, red
  from there. For 250 days at 99% this is the Basel table (green 0-4, yellow 5-9, red
  10+), whose plus factors are returned too.

``0 * ln 0`` is taken as 0 throughout (the limit), so samples without exceptions, or
without exceptions after exceptions, have finite statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GREEN_BELOW = 0.95
"""Cumulative binomial probability below which the zone is green."""
YELLOW_BELOW = 0.9999
"""... below which it is yellow; red from here on."""
BASEL_PLUS_FACTORS = {5: 0.40, 6: 0.50, 7: 0.65, 8: 0.75, 9: 0.85}
"""Basel multiplier add-ons of the yellow zone for 250 days at 99% (0 when green, 1 red)."""


def _xlogy(x: float, y: float) -> float:
    """``x * ln(y)`` with ``0 * ln(0) = 0``."""
    if x == 0:
        return 0.0
    return x * math.log(y)


def chi2_sf(stat: float, df: int) -> float:
    """Survival function of the chi-squared distribution with 1 or 2 degrees of freedom."""
    if stat <= 0 or math.isnan(stat):
        return 1.0
    if df == 1:
        return math.erfc(math.sqrt(stat / 2.0))
    if df == 2:
        return math.exp(-stat / 2.0)
    raise ValueError(f"chi2_sf supports 1 or 2 degrees of freedom, got {df}")


def _check_rate(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"the expected exception rate must be in (0, 1), got {p}")


@dataclass(frozen=True)
class TestResult:
    """A likelihood-ratio statistic, its degrees of freedom and p-value."""

    name: str
    statistic: float
    df: int
    p_value: float

    def rejects(self, level: float = 0.05) -> bool:
        """True when H0 is rejected at significance ``level``."""
        return self.p_value < level


def kupiec_pof(n: int, x: int, p: float) -> TestResult:
    """Kupiec's proportion-of-failures test of ``x`` exceptions in ``n`` days at rate ``p``."""
    _check_rate(p)
    if n <= 0 or not 0 <= x <= n:
        raise ValueError(f"need n > 0 and 0 <= x <= n, got n={n}, x={x}")
    rate = x / n
    log_h0 = _xlogy(n - x, 1.0 - p) + _xlogy(x, p)
    log_h1 = _xlogy(n - x, 1.0 - rate) + _xlogy(x, rate)
    stat = max(0.0, -2.0 * (log_h0 - log_h1))
    return TestResult("kupiec_pof", stat, 1, chi2_sf(stat, 1))


@dataclass(frozen=True)
class Transitions:
    """Counts of day-to-day transitions of the exception indicator (0: none, 1: exception)."""

    n00: int
    n01: int
    n10: int
    n11: int

    @classmethod
    def of(cls, hits: Iterable[bool | int]) -> Transitions:
        """Transition counts of an exception sequence."""
        counts = [[0, 0], [0, 0]]
        prev: int | None = None
        for h in hits:
            cur = 1 if h else 0
            if prev is not None:
                counts[prev][cur] += 1
            prev = cur
        return cls(counts[0][0], counts[0][1], counts[1][0], counts[1][1])

    @property
    def total(self) -> int:
        """Number of transitions (observations - 1)."""
        return self.n00 + self.n01 + self.n10 + self.n11


def christoffersen_independence(t: Transitions) -> TestResult:
    """Christoffersen's test that an exception does not make the next one more likely."""
    if min(t.n00, t.n01, t.n10, t.n11) < 0:
        raise ValueError(f"transition counts must be >= 0, got {t}")
    if t.total == 0:
        return TestResult("christoffersen_independence", 0.0, 1, 1.0)
    from_0, from_1 = t.n00 + t.n01, t.n10 + t.n11
    pi01 = t.n01 / from_0 if from_0 else 0.0
    pi11 = t.n11 / from_1 if from_1 else 0.0
    pi = (t.n01 + t.n11) / t.total
    log_h0 = _xlogy(t.n00 + t.n10, 1.0 - pi) + _xlogy(t.n01 + t.n11, pi)
    log_h1 = (
        _xlogy(t.n00, 1.0 - pi01)
        + _xlogy(t.n01, pi01)
        + _xlogy(t.n10, 1.0 - pi11)
        + _xlogy(t.n11, pi11)
    )
    stat = max(0.0, -2.0 * (log_h0 - log_h1))
    return TestResult("christoffersen_independence", stat, 1, chi2_sf(stat, 1))


def conditional_coverage(pof: TestResult, independence: TestResult) -> TestResult:
    """Christoffersen's conditional coverage: ``LR_cc = LR_pof + LR_ind``, chi-squared(2)."""
    stat = pof.statistic + independence.statistic
    return TestResult("christoffersen_conditional_coverage", stat, 2, chi2_sf(stat, 2))


def binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed in log space (n in the thousands is fine)."""
    _check_rate(p)
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq
             for k in range(x + 1)]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class TrafficLight:
    """Basel zone of an exception count."""

    zone: str
    """GREEN, YELLOW or RED."""
    exceptions: int
    observations: int
    expected_rate: float
    cumulative_probability: float
    """P(X <= exceptions) under the expected rate."""
    plus_factor: float | None
    """Basel capital multiplier add-on (250 days at 99% only; None otherwise)."""


def basel_traffic_light(n: int, x: int, p: float = 0.01) -> TrafficLight:
    """The traffic-light zone of ``x`` exceptions in ``n`` days at expected rate ``p``."""
    if n <= 0 or not 0 <= x <= n:
        raise ValueError(f"need n > 0 and 0 <= x <= n, got n={n}, x={x}")
    cum = binomial_cdf(x, n, p)
    zone = "GREEN" if cum < GREEN_BELOW else "YELLOW" if cum < YELLOW_BELOW else "RED"
    plus: float | None = None
    if n == 250 and math.isclose(p, 0.01):
        plus = {"GREEN": 0.0, "RED": 1.0}.get(zone, BASEL_PLUS_FACTORS.get(x, 0.0))
    return TrafficLight(zone, x, n, p, cum, plus)


def zone_bounds(n: int, p: float) -> tuple[int, int]:
    """Smallest exception counts that are yellow and red for ``n`` days at rate ``p``."""
    yellow = next(x for x in range(n + 2) if binomial_cdf(x, n, p) >= GREEN_BELOW)
    red = next(x for x in range(yellow, n + 2) if binomial_cdf(x, n, p) >= YELLOW_BELOW)
    return yellow, red


def exceptions(var: Sequence[float], pnl: Sequence[float]) -> list[bool]:
    """Exception indicators: the loss ``-pnl`` exceeded the (positive) VaR."""
    if len(var) != len(pnl):
        raise ValueError(f"var and pnl differ in length: {len(var)} != {len(pnl)}")
    return [-p > v for v, p in zip(var, pnl, strict=True)]


@dataclass(frozen=True)
class Backtest:
    """Every test of one VaR series against realized P&L."""

    confidence: float
    observations: int
    exceptions: int
    expected_exceptions: float
    kupiec: TestResult
    independence: TestResult
    conditional: TestResult
    transitions: Transitions
    traffic_light: TrafficLight

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready)."""
        return asdict(self)


def backtest(hits: Sequence[bool], confidence: float) -> Backtest:
    """Kupiec, Christoffersen and traffic light of an exception sequence at ``confidence``."""
    p = 1.0 - confidence
    _check_rate(p)
    n, x = len(hits), sum(1 for h in hits if h)
    if n == 0:
        raise ValueError("no observations to backtest")
    pof = kupiec_pof(n, x, p)
    trans = Transitions.of(hits)
    ind = christoffersen_independence(trans)
    return Backtest(
        confidence,
        n,
        x,
        n * p,
        pof,
        ind,
        conditional_coverage(pof, ind),
        trans,
        basel_traffic_light(n, x, p),
    )
