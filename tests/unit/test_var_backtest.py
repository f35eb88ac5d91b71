"""VaR backtests against textbook values, closed forms and scipy's chi-squared."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, chi2

from operators.var_backtest import (
    Transitions,
    backtest,
    basel_traffic_light,
    binomial_cdf,
    chi2_sf,
    christoffersen_independence,
    conditional_coverage,
    exceptions,
    kupiec_pof,
    zone_bounds,
)

# Jorion, "Value at Risk" (3rd ed.), Table 6-3 after Kupiec (1995): exception counts N that
# a 5% Kupiec test does not reject, as (lowest, highest), for T = 252, 510, 1000 days.
JORION_NONREJECTION = {
    0.01: {510: (2, 10), 1000: (5, 16)},  # "1 < N < 11", "4 < N < 17"
    0.025: {252: (3, 11), 510: (7, 20), 1000: (16, 35)},
    0.05: {252: (7, 19), 510: (17, 35), 1000: (38, 64)},
    0.075: {252: (12, 27), 510: (28, 50), 1000: (60, 91)},
    0.10: {252: (17, 35), 510: (39, 64), 1000: (82, 119)},
}


@pytest.mark.parametrize(
    "p,days,bounds",
    [(p, t, b) for p, row in JORION_NONREJECTION.items() for t, b in row.items()],
)
def test_kupiec_when_scanning_counts_reproduces_the_textbook_nonrejection_regions(p, days, bounds):
    accepted = [x for x in range(days + 1) if not kupiec_pof(days, x, p).rejects(0.05)]

    assert (min(accepted), max(accepted)) == bounds


def test_kupiec_when_250_days_8_exceptions_at_99_matches_the_closed_form_and_scipy():
    n, x, p = 250, 8, 0.01
    closed = -2 * (242 * math.log(0.99) + 8 * math.log(0.01)) + 2 * (
        242 * math.log(1 - 8 / 250) + 8 * math.log(8 / 250)
    )

    result = kupiec_pof(n, x, p)

    assert result.statistic == pytest.approx(7.7335507, abs=1e-6)
    assert result.statistic == pytest.approx(closed, rel=1e-12)
    assert result.p_value == pytest.approx(chi2.sf(closed, 1), rel=1e-10)
    assert result.rejects(0.05)


def test_kupiec_when_no_exceptions_is_finite():
    result = kupiec_pof(252, 0, 0.01)

    assert result.statistic == pytest.approx(-2 * 252 * math.log(0.99))
    assert result.p_value == pytest.approx(chi2.sf(result.statistic, 1))


def test_kupiec_when_exactly_the_expected_rate_is_zero():
    assert kupiec_pof(1000, 50, 0.05).statistic == pytest.approx(0.0, abs=1e-9)
    assert kupiec_pof(1000, 50, 0.05).p_value == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [(0, 0, 0.01), (10, 11, 0.01), (10, 1, 0.0), (10, 1, 1.0)])
def test_kupiec_when_arguments_are_impossible_raises(bad):
    with pytest.raises(ValueError):
        kupiec_pof(*bad)


def sequence_log_likelihood(hits: list[int], markov: bool) -> float:
    """Log-likelihood of a 0/1 sequence (after its first value), computed term by term."""
    pairs = list(itertools.pairwise(hits))
    if not markov:
        pi = sum(b for _, b in pairs) / len(pairs)
        return sum(math.log(pi if b else 1 - pi) for _, b in pairs if (pi if b else 1 - pi) > 0)
    total = 0.0
    for state in (0, 1):
        nxt = [b for a, b in pairs if a == state]
        if not nxt:
            continue
        q = sum(nxt) / len(nxt)
        total += sum(math.log(q if b else 1 - q) for b in nxt if (q if b else 1 - q) > 0)
    return total


def test_christoffersen_when_given_a_hand_made_table_matches_the_formula():
    # n00=240, n01=5, n10=4, n11=1 (a cluster of two exceptions once)
    t = Transitions(n00=240, n01=5, n10=4, n11=1)
    pi01, pi11, pi = 5 / 245, 1 / 5, 6 / 250
    expected = -2 * (244 * math.log(1 - pi) + 6 * math.log(pi)) + 2 * (
        240 * math.log(1 - pi01) + 5 * math.log(pi01) + 4 * math.log(1 - pi11) + math.log(pi11)
    )

    result = christoffersen_independence(t)

    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.statistic == pytest.approx(2.79177, abs=1e-4)  # by hand: 2(28.30563 - 26.90974)
    assert result.p_value == pytest.approx(chi2.sf(expected, 1), rel=1e-10)
    assert not result.rejects(0.05)


def test_christoffersen_when_given_a_sequence_equals_its_term_by_term_likelihood_ratio():
    rng = np.random.default_rng(5)
    hits = [int(h) for h in rng.random(500) < 0.04]
    hits[100:104] = [1, 1, 1, 1]  # a cluster

    t = Transitions.of(hits)
    result = christoffersen_independence(t)

    lr = -2 * (sequence_log_likelihood(hits, False) - sequence_log_likelihood(hits, True))
    assert t.total == 499
    assert (t.n00 + t.n01 + t.n10 + t.n11) == len(hits) - 1
    assert result.statistic == pytest.approx(lr, rel=1e-10)
    assert result.rejects(0.05)  # the cluster is caught


def test_christoffersen_when_no_exception_follows_an_exception_is_finite():
    t = Transitions.of([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    assert t.n11 == 0

    result = christoffersen_independence(t)

    assert math.isfinite(result.statistic)
    assert 0.0 <= result.p_value <= 1.0


def test_conditional_coverage_when_combined_adds_statistics_with_two_degrees_of_freedom():
    pof = kupiec_pof(250, 8, 0.01)
    ind = christoffersen_independence(Transitions(240, 5, 4, 1))

    cc = conditional_coverage(pof, ind)

    assert cc.statistic == pytest.approx(pof.statistic + ind.statistic)
    assert cc.df == 2
    assert cc.p_value == pytest.approx(chi2.sf(cc.statistic, 2), rel=1e-10)


@pytest.mark.parametrize("stat", [0.0, 0.5, 3.841458820694124, 7.7, 25.0])
@pytest.mark.parametrize("df", [1, 2])
def test_chi2_sf_when_compared_with_scipy_agrees(stat, df):
    assert chi2_sf(stat, df) == pytest.approx(chi2.sf(stat, df), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    "exceptions_,zone,plus",
    [(0, "GREEN", 0.0), (4, "GREEN", 0.0), (5, "YELLOW", 0.40), (6, "YELLOW", 0.50),
     (7, "YELLOW", 0.65), (8, "YELLOW", 0.75), (9, "YELLOW", 0.85), (10, "RED", 1.0),
     (14, "RED", 1.0)],
)  # fmt: skip
def test_traffic_light_when_250_days_at_99_is_the_basel_table(exceptions_, zone, plus):
    light = basel_traffic_light(250, exceptions_, 0.01)

    assert light.zone == zone
    assert light.plus_factor == plus
    assert light.cumulative_probability == pytest.approx(binom.cdf(exceptions_, 250, 0.01))


def test_traffic_light_when_basel_cumulative_probabilities_match_the_1996_table():
    # BCBS (1996), Table 2: cumulative probability of 4, 5, 9, 10 exceptions in 250 days.
    table = {4: 0.8922, 5: 0.9588, 9: 0.9997, 10: 0.9999}
    for x, cum in table.items():
        assert basel_traffic_light(250, x).cumulative_probability == pytest.approx(cum, abs=5e-5)


def test_zone_bounds_when_other_sample_sizes_follow_the_binomial():
    assert zone_bounds(250, 0.01) == (5, 10)
    yellow, red = zone_bounds(1000, 0.05)
    assert binom.cdf(yellow - 1, 1000, 0.05) < 0.95 <= binom.cdf(yellow, 1000, 0.05)
    assert binom.cdf(red - 1, 1000, 0.05) < 0.9999 <= binom.cdf(red, 1000, 0.05)
    assert basel_traffic_light(1000, 10, 0.05).plus_factor is None


@pytest.mark.parametrize(
    "x,n,p", [(0, 10, 0.3), (3, 5000, 0.01), (60, 5000, 0.01), (250, 5000, 0.05)]
)
def test_binomial_cdf_when_n_is_large_matches_scipy(x, n, p):
    assert binomial_cdf(x, n, p) == pytest.approx(binom.cdf(x, n, p), rel=1e-9)


def test_exceptions_when_loss_exceeds_var_counts_strictly_greater_losses():
    assert exceptions([10.0, 10.0, 10.0], [-11.0, -10.0, 5.0]) == [True, False, False]
    with pytest.raises(ValueError):
        exceptions([1.0], [])


def test_backtest_when_given_hits_bundles_every_test():
    hits = [False] * 242 + [True] * 8

    result = backtest(hits, 0.99)

    assert (result.observations, result.exceptions) == (250, 8)
    assert result.expected_exceptions == pytest.approx(2.5)
    assert result.kupiec.statistic == pytest.approx(7.7335507, abs=1e-6)
    assert result.transitions == Transitions(241, 1, 0, 7)
    assert result.independence.rejects()
    assert result.traffic_light.zone == "YELLOW"
    assert result.to_dict()["traffic_light"]["zone"] == "YELLOW"
