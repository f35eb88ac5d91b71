"""Risk model against closed forms and independent NumPy / pandas / empyrical references."""

from __future__ import annotations

import math
import pickle

import empyrical
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.checks import round_to_lot
from operators.records import Mark
from operators.risk_model import (
    BarReturns,
    EwmaCovariance,
    OrderRate,
    check_gross_notional,
    check_net_notional,
    check_order_rate,
    check_var_budget,
    component_var,
    historical_cvar,
    historical_var,
    marginal_var,
    max_qty_gross,
    max_qty_net,
    max_qty_var_budget,
    monotone_search,
    parametric_cvar,
    parametric_var,
    regime_vol_multiplier,
    trade_risk,
    var_gradient,
)

LAM = 0.94
Z95 = scipy.stats.norm.ppf(0.95)
ES95 = scipy.stats.norm.pdf(Z95) / 0.05
BUY, SELL = 1, -1


def cov2(s1: float, s2: float, rho: float) -> np.ndarray:
    return np.array([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])


def random_cov(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.normal(size=(n, n + 3))
    c = a @ a.T / (n + 3)
    s = rng.uniform(0.005, 0.04, n)
    d = np.sqrt(np.diagonal(c))
    return c / np.outer(d, d) * np.outer(s, s)


def var_of(w: np.ndarray, c: np.ndarray, z: float = Z95) -> float:
    return z * math.sqrt(max(float(w @ c @ w), 0.0))


# ---------------------------------------------------------------------------------------
# EWMA covariance
# ---------------------------------------------------------------------------------------


def brute_force_ewma(
    bars: list[dict[str, float]], ids: list[str], priors: dict[str, float], lam: float
) -> list[np.ndarray]:
    """S_t = sum_k (1-lam) lam^(t-k) r_k r_k' + lam^(t-j+1) diag(prior at join bar j)."""
    r = np.array([[b.get(k, 0.0) for k in ids] for b in bars])  # zero-filled
    first = {k: next(t for t, b in enumerate(bars) if k in b) for k in ids}
    out = []
    for t in range(len(bars)):
        wts = (1.0 - lam) * lam ** (t - np.arange(t + 1))
        s = np.einsum("k,ki,kj->ij", wts, r[: t + 1], r[: t + 1])
        for j, k in enumerate(ids):
            if k in priors and first[k] <= t:
                s[j, j] += lam ** (t - first[k] + 1) * priors[k]
        out.append(s)
    return out


def sample_bars(seed: int, n_bars: int = 120) -> tuple[list[dict[str, float]], list[str]]:
    """Four instruments, one joining late, returns missing at random."""
    rng = np.random.default_rng(seed)
    ids = ["A", "B", "C", "D"]
    chol = np.linalg.cholesky(random_cov(rng, 4))
    bars = []
    for t in range(n_bars):
        r = chol @ rng.normal(size=4)
        bar = {k: float(x) for k, x in zip(ids, r, strict=True) if rng.random() > 0.2}
        if t < 30:
            bar.pop("D", None)  # D joins late
        bars.append(bar)
    bars[0]["A"] = 0.01  # A, B and C join in bar 0
    bars[0]["B"] = -0.02
    bars[0]["C"] = 0.005
    return bars, ids


@pytest.mark.parametrize("seed", [1, 2])
def test_ewma_covariance_when_updated_per_bar_equals_brute_force_weighted_sum_every_step(seed):
    bars, ids = sample_bars(seed)
    priors = {"B": 4e-4, "D": 1e-4}  # B and D seeded at their join bar, A and C not
    model = EwmaCovariance(LAM, min_obs=5, capacity=1)  # grows 1 -> 2 -> 4
    expected = brute_force_ewma(bars, ids, priors, LAM)

    for t, bar in enumerate(bars):
        model.update(t * 1_000, bar, priors)
        known = [k for k in ids if k in model.index]
        cols = [ids.index(k) for k in known]

        np.testing.assert_allclose(
            model.raw(known), expected[t][np.ix_(cols, cols)], rtol=1e-12, atol=1e-300
        )


def test_ewma_covariance_when_scale_is_renormalised_still_equals_brute_force():
    rng = np.random.default_rng(5)
    bars = [{"A": float(a), "B": float(b)} for a, b in rng.normal(0, 0.01, (600, 2))]
    model = EwmaCovariance(0.5, min_obs=1)  # g = 0.5**t drops below 1e-100 at t = 333
    expected = brute_force_ewma(bars, ["A", "B"], {}, 0.5)

    for t, bar in enumerate(bars):
        model.update(t, bar)
        np.testing.assert_allclose(model.raw(["A", "B"]), expected[t], rtol=1e-12)
    assert model._g > 1e-100  # renormalised at least once


def test_ewma_variance_when_seeded_matches_pandas_ewm_adjust_false():
    r = np.random.default_rng(7).normal(0, 0.01, 300)
    s0 = 2.5e-4
    model = EwmaCovariance(LAM, min_obs=1)
    ref = pd.Series(np.r_[s0, r**2]).ewm(alpha=1 - LAM, adjust=False).mean().to_numpy()[1:]

    ours = [model.update(t, {"X": float(x)}, {"X": s0}).raw(["X"])[0, 0] for t, x in enumerate(r)]

    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_ewma_variance_when_not_seeded_is_bias_corrected_like_pandas_adjust_true():
    r = np.random.default_rng(8).normal(0, 0.01, 300)
    model = EwmaCovariance(LAM, min_obs=1, periods_per_day=390.0)
    ref = pd.Series(r**2).ewm(alpha=1 - LAM, adjust=True).mean().to_numpy()

    ours = [model.update(t, {"X": float(x)}).vol("X") ** 2 / 390.0 for t, x in enumerate(r)]

    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_ewma_covariance_when_returns_are_missing_decays_only_their_rows():
    model = EwmaCovariance(LAM, min_obs=1)
    model.update(1, {"A": 0.01, "B": 0.02})
    before = model.raw(["A", "B"])

    model.update(2, {"A": 0.03})

    after = model.raw(["A", "B"])
    assert after[1, 1] == pytest.approx(LAM * before[1, 1], rel=1e-14)
    assert after[0, 1] == pytest.approx(LAM * before[0, 1], rel=1e-14)
    assert after[0, 0] == pytest.approx(LAM * before[0, 0] + (1 - LAM) * 0.03**2, rel=1e-14)


def test_ewma_covariance_when_bars_arrive_in_any_dict_order_is_bit_identical():
    bars, _ = sample_bars(3)
    a, b = EwmaCovariance(min_obs=3), EwmaCovariance(min_obs=3)
    for t, bar in enumerate(bars):
        a.update(t, bar)
        b.update(t, dict(reversed(list(bar.items()))))
    assert a.ids == b.ids
    assert np.array_equal(a.raw(a.ids), b.raw(b.ids))


def test_ewma_covariance_when_bar_end_does_not_advance_raises():
    model = EwmaCovariance().update(10, {"A": 0.01})
    with pytest.raises(ValueError, match="not after"):
        model.update(10, {"A": 0.01})


def test_ewma_covariance_when_simulated_from_known_covariance_recovers_it():
    rng = np.random.default_rng(11)
    true = random_cov(rng, 3) / 390.0  # per bar
    chol = np.linalg.cholesky(true)
    model = EwmaCovariance(0.999, min_obs=20, periods_per_day=390.0)
    for t in range(20_000):
        model.update(t, dict(zip("XYZ", (chol @ rng.normal(size=3)).tolist(), strict=True)))

    np.testing.assert_allclose(model.cov(list("XYZ")), true * 390.0, rtol=0.15, atol=2e-6)
    d = np.sqrt(np.diagonal(true))
    assert model.corr("X", "Y") == pytest.approx(true[0, 1] / d[0] / d[1], abs=0.08)


def test_ewma_readiness_when_below_min_obs_gives_nan_vol_and_zero_correlation():
    model = EwmaCovariance(min_obs=3)
    model.update(1, {"A": 0.01, "B": 0.01})
    model.update(2, {"A": -0.01, "B": -0.01}, {"C": 1e-4})
    model.update(3, {"A": 0.02, "C": 0.01}, {"C": 1e-4})

    assert math.isfinite(model.vol("A"))
    assert math.isnan(model.vol("B"))  # 2 returns < min_obs
    assert math.isfinite(model.vol("C"))  # seeded with a prior
    assert math.isnan(model.corr("A", "B"))
    cov = model.cov(["A", "B", "C"])
    assert cov[0, 2] == 0.0  # C has 1 real return: no correlation yet
    assert np.isnan(cov[1]).all()  # an unknown volatility poisons its row: fail safe


def test_scaled_when_given_vol_forecasts_rescales_the_correlation():
    bars, ids = sample_bars(4)
    model = EwmaCovariance(min_obs=5)
    for t, bar in enumerate(bars):
        model.update(t, bar)
    fc = {"A": 0.02, "C": 0.05}  # forecasts for A and C; B and D keep their EWMA vols
    s = np.array([0.02, model.vol("B"), 0.05, model.vol("D")])
    rho = model.correlation(ids)

    got = model.scaled(ids, fc, vol_mult=1.5)

    np.testing.assert_allclose(got, 2.25 * rho * np.outer(s, s), rtol=1e-14)
    assert rho[0, 1] == pytest.approx(model.corr("A", "B"), rel=1e-14)
    assert np.all(np.linalg.eigvalsh(rho) > -1e-12)  # PSD


def test_regime_vol_multiplier_when_mixture_combines_in_squares():
    policy = {"CALM": 1.0, "LIQUIDITY_CRISIS": 2.0}
    assert regime_vol_multiplier({"LIQUIDITY_CRISIS": 1.0}, policy) == pytest.approx(2.0)
    assert regime_vol_multiplier({"CALM": 0.5, "LIQUIDITY_CRISIS": 0.5}, policy) == pytest.approx(
        math.sqrt(0.5 * 1.0 + 0.5 * 4.0)
    )
    assert regime_vol_multiplier({}, policy) == 1.0


# ---------------------------------------------------------------------------------------
# Bar returns from marks
# ---------------------------------------------------------------------------------------


def test_bar_returns_when_marks_arrive_out_of_order_flush_per_bar_in_event_time():
    marks = [
        Mark("A", 2, 101.0, 0.02),
        Mark("B", 1, 50.0, 0.01),
        Mark("A", 1, 100.0, 0.02),
        Mark("B", 3, 49.0, 0.01),
        Mark("A", 3, 99.0, 0.02),
    ]
    ours = BarReturns(periods_per_day=4.0)
    for m in marks:
        ours.add(m)

    out = ours.flush(3)

    assert [end for end, _, _ in out] == [1, 2, 3]
    assert out[0][1] == {}  # first marks only set prices
    assert out[1][1] == {"A": pytest.approx(math.log(101 / 100))}
    assert out[2][1] == {  # B missed bar 2: its return spans bars 2 and 3
        "A": pytest.approx(math.log(99 / 101)),
        "B": pytest.approx(math.log(49 / 50)),
    }
    assert out[2][2]["B"] == pytest.approx(0.01**2 / 4.0)


def test_bar_returns_when_mark_is_for_a_flushed_bar_counts_it_late_and_keeps_its_move():
    br = BarReturns()
    br.add(Mark("A", 1, 100.0, 0.0))
    br.flush(2)

    assert br.add(Mark("A", 2, 120.0, 0.0)) is False
    assert br.late == 1
    br.add(Mark("A", 3, 110.0, 0.0))
    assert br.flush(3)[0][1] == {"A": pytest.approx(math.log(110 / 100))}


# ---------------------------------------------------------------------------------------
# Parametric VaR, CVaR, marginal VaR
# ---------------------------------------------------------------------------------------


def test_parametric_var_when_two_asset_book_equals_hand_formula():
    s1, s2, rho, w1, w2 = 0.02, 0.03, 0.4, 1_000_000.0, -500_000.0
    sigma = math.sqrt(s1**2 * w1**2 + s2**2 * w2**2 + 2 * rho * s1 * s2 * w1 * w2)
    c = cov2(s1, s2, rho)

    assert parametric_var([w1, w2], c) == pytest.approx(Z95 * sigma, rel=1e-14)
    assert parametric_var([w1, w2], c, 0.99, 10) == pytest.approx(
        scipy.stats.norm.ppf(0.99) * sigma * math.sqrt(10), rel=1e-14
    )
    assert parametric_cvar([w1, w2], c) == pytest.approx(ES95 * sigma, rel=1e-12)
    # 0.02^2 1e12 + 0.03^2 2.5e11 - 2 0.4 0.02 0.03 5e11 = 4e8 + 2.25e8 - 2.4e8 = 3.85e8
    assert parametric_var([w1, w2], c) == pytest.approx(1.6448536269514722 * math.sqrt(3.85e8))


def test_marginal_var_when_adding_positively_correlated_risk_is_positive_and_hedge_negative():
    c = cov2(0.02, 0.03, 0.6)
    w = np.array([1_000_000.0, 0.0])

    assert marginal_var(w, c, [0.0, 200_000.0]) > 0  # buy B, correlated with the long A
    assert marginal_var(w, c, [0.0, -200_000.0]) < 0  # sell B: a hedge
    g = var_gradient(w, c)
    assert g[1] == pytest.approx(Z95 * 0.6 * 0.02 * 0.03 * 1e6 / (0.02 * 1e6), rel=1e-12)
    assert g[1] > 0


def test_component_var_when_summed_equals_var():
    rng = np.random.default_rng(3)
    c = random_cov(rng, 6)
    w = rng.normal(0, 1e6, 6)

    assert component_var(w, c).sum() == pytest.approx(parametric_var(w, c), rel=1e-12)


def fed_model(seed: int = 0, n: int = 30, history: int = 100) -> tuple[EwmaCovariance, list[str]]:
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(random_cov(rng, n) / 100.0)
    ids = [f"I{i:02d}" for i in range(n)]
    model = EwmaCovariance(min_obs=10, periods_per_day=100.0, history=history)
    for t in range(250):
        r = chol @ rng.normal(size=n)
        model.update(t, {k: float(x) for k, x in zip(ids, r, strict=True) if rng.random() > 0.05})
    return model, ids


@pytest.mark.parametrize("side", [BUY, SELL])
def test_trade_risk_when_compared_with_dense_formulas_agrees(side):
    model, ids = fed_model()
    rng = np.random.default_rng(1)
    book = {k: float(rng.normal(0, 1e6)) for k in ids[:20]}
    fc = {ids[3]: 0.03, ids[25]: 0.015}
    for inst in (ids[5], ids[25]):  # held / not held
        keys = list(dict.fromkeys([*book, inst]))
        c = model.scaled(keys, fc, vol_mult=1.2)
        w = np.array([book.get(k, 0.0) for k in keys])
        dw = np.zeros_like(w)
        dw[keys.index(inst)] = side * 700 * 80.0

        risk = trade_risk(
            model, book, inst, 80.0, side, 700, var_budget=5_000.0, vols=fc, vol_mult=1.2
        )

        assert risk.var_before == pytest.approx(var_of(w, c), rel=1e-12)
        assert risk.var_after == pytest.approx(var_of(w + dw, c), rel=1e-12)
        assert risk.cvar_after == pytest.approx(
            ES95 * math.sqrt(dw @ c @ dw + 2 * dw @ c @ w + w @ c @ w), rel=1e-12
        )
        assert risk.marginal_var == pytest.approx(marginal_var(w, c, dw), rel=1e-9)
        g = var_gradient(w, c)[keys.index(inst)] * side * 80.0
        assert risk.var_gradient == pytest.approx(g, rel=1e-12)
        q = max_qty_var_budget(w, c, keys.index(inst), 80.0, side, var_of(w, c) + 5_000.0)
        assert risk.max_quantity == pytest.approx(q, rel=1e-12)


def test_trade_risk_when_history_is_kept_matches_historical_var_on_scenarios():
    model, ids = fed_model(2)
    book = {k: 1e5 * (i + 1) * (-1) ** i for i, k in enumerate(ids[:8])}
    keys = [*book, ids[9]]
    w = np.array([*book.values(), 0.0])
    dw = np.zeros(len(keys))
    dw[-1] = -3e5
    r = model.scenarios(keys)
    assert r.shape == (100, 9)

    risk = trade_risk(model, book, ids[9], 100.0, SELL, 3_000)

    assert risk.hist_var_before == pytest.approx(historical_var(w, r, 0.95, 100.0), rel=1e-12)
    assert risk.hist_var_after == pytest.approx(historical_var(w + dw, r, 0.95, 100.0), rel=1e-12)
    assert risk.hist_cvar_after == pytest.approx(historical_cvar(w + dw, r, 0.95, 100.0), rel=1e-12)


def test_trade_risk_when_a_volatility_is_unknown_fails_safe():
    model, ids = fed_model()
    risk = trade_risk(model, {ids[0]: 1e6, "NEW": 5e5}, ids[1], 10.0, BUY, 100)

    cap = check_var_budget(100, risk, 1_000.0)

    assert not risk.ok
    assert cap.max_quantity == 0.0 and cap.reason is not None
    assert cap.reason.code == "NO_RISK_MODEL"
    fb = trade_risk(
        model, {ids[0]: 1e6, "NEW": 5e5}, ids[1], 10.0, BUY, 100, fallback_vols={"NEW": 0.02}
    )
    assert fb.ok


# ---------------------------------------------------------------------------------------
# Historical VaR
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("t", "conf"), [(250, 0.95), (101, 0.99), (37, 0.9)])
def test_historical_var_cvar_when_compared_with_numpy_percentile_and_empyrical(t, conf):
    rng = np.random.default_rng(t)
    r = rng.standard_t(4, size=(t, 5)) * 0.01
    w = rng.normal(0, 1e6, 5)
    pnl = r @ w
    cut = round(1 - conf, 12)
    k = int((t - 1) * cut)

    assert historical_var(w, r, conf) == pytest.approx(-np.percentile(pnl, 100 * cut), rel=1e-12)
    assert historical_cvar(w, r, conf) == pytest.approx(-np.sort(pnl)[: k + 1].mean(), rel=1e-12)
    assert historical_var(w, r, conf) == pytest.approx(
        -empyrical.value_at_risk(pnl, cut), rel=1e-12
    )
    assert historical_cvar(w, r, conf) == pytest.approx(
        -empyrical.conditional_value_at_risk(pnl, cut), rel=1e-12
    )
    assert historical_var(w, r, conf, 4.0) == pytest.approx(2 * historical_var(w, r, conf))


# ---------------------------------------------------------------------------------------
# Allowed quantity: closed forms
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("side", [BUY, SELL])
def test_var_budget_quantity_when_solved_puts_var_exactly_at_budget_and_one_lot_over(seed, side):
    rng = np.random.default_rng(seed)
    c = random_cov(rng, 4)
    w = rng.normal(0, 1e6, 4)
    unit, lot = 37.5, 10.0
    budget = var_of(w, c) * 1.3 + 10_000.0
    e = np.eye(4)[2] * side * unit

    q = max_qty_var_budget(w, c, 2, unit, side, budget)
    q_lot = round_to_lot(q, lot)

    assert var_of(w + q * e, c) == pytest.approx(budget, rel=1e-9)
    assert var_of(w + q_lot * e, c) <= budget
    assert var_of(w + (q_lot + lot) * e, c) > budget


def test_var_budget_quantity_when_over_budget_allows_only_risk_reducing_trades():
    c = cov2(0.02, 0.03, 0.5)
    w = np.array([1e6, 0.0])
    before = var_of(w, c)
    budget = before / 2

    assert max_qty_var_budget(w, c, 1, 1.0, BUY, budget) == 0.0  # adds risk
    q = max_qty_var_budget(w, c, 1, 1.0, SELL, budget)  # hedge: back to VaR before
    assert var_of(w - q * np.eye(2)[1], c) == pytest.approx(before, rel=1e-12)
    q_min = max_qty_var_budget(w, c, 1, 1.0, SELL, budget, cap_at_min_var=True)
    assert q_min == pytest.approx(0.5 * 0.02 * 1e6 / 0.03, rel=1e-12)  # beta hedge: min var
    q_own = max_qty_var_budget(w, c, 0, 1.0, SELL, budget)  # selling A: allowed to -1e6
    assert q_own == pytest.approx(2e6, rel=1e-12)


def test_var_budget_quantity_when_instrument_has_no_risk_never_binds():
    c = np.array([[4e-4, 0.0], [0.0, 0.0]])
    assert max_qty_var_budget([1e6, 0.0], c, 1, 1.0, BUY, 1.0) == math.inf


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b1=st.floats(1_000.0, 1e6),
    b2=st.floats(1_000.0, 1e6),
    side=st.sampled_from([BUY, SELL]),
)
def test_var_budget_quantity_is_monotone_in_the_budget(seed, b1, b2, side):
    rng = np.random.default_rng(seed)
    c = random_cov(rng, 3)
    w = rng.normal(0, 1e6, 3)
    lo, hi = sorted((b1, b2))

    q_lo = max_qty_var_budget(w, c, 1, 25.0, side, lo)
    q_hi = max_qty_var_budget(w, c, 1, 25.0, side, hi)

    assert q_lo <= q_hi * (1 + 1e-12) + 1e-9


@pytest.mark.parametrize(
    ("w", "i", "side"),
    [([1e6, -2e6, 5e5], 0, BUY), ([1e6, -2e6, 5e5], 1, BUY), ([1e6, -2e6, 5e5], 1, SELL)],
)
def test_gross_quantity_when_solved_puts_gross_exactly_at_limit(w, i, side):
    w = np.array(w)
    unit, limit = 50.0, 5e6

    q = max_qty_gross(w, i, unit, side, limit)
    after = w.copy()
    after[i] += side * q * unit

    assert np.abs(after).sum() == pytest.approx(limit, rel=1e-12)
    after[i] += side * unit
    assert np.abs(after).sum() > limit


def test_gross_quantity_when_over_limit_allows_shrinking_to_the_mirror_position():
    w = np.array([3e6, 1e6])
    assert max_qty_gross(w, 0, 1.0, BUY, 2e6) == 0.0
    assert max_qty_gross(w, 0, 1.0, SELL, 2e6) == pytest.approx(6e6)  # 3e6 -> -3e6


@pytest.mark.parametrize("side", [BUY, SELL])
def test_net_quantity_when_solved_puts_net_exactly_at_limit(side):
    w = np.array([1e6, -2.5e6, 4e5])
    q = max_qty_net(w, 20.0, side, 3e6)
    assert abs(w.sum() + side * q * 20.0) == pytest.approx(3e6, rel=1e-12)
    assert abs(w.sum() + side * (q + 1) * 20.0) > 3e6


def test_notional_checks_when_over_return_the_cap_and_a_reason():
    book = {"A": 1e6, "B": -2e6}
    gross = check_gross_notional(1_000, BUY, book, "C", 2_000.0, 4e6)
    net = check_net_notional(1_000, SELL, book, "C", 2_000.0, 2e6)

    assert gross.max_quantity == pytest.approx(500.0)
    assert gross.reason is not None and gross.reason.code == "GROSS_NOTIONAL"
    assert gross.reason.value == pytest.approx(5e6)
    assert net.max_quantity == pytest.approx(500.0)
    assert net.reason is not None and net.reason.code == "NET_NOTIONAL"
    assert check_gross_notional(500, BUY, book, "C", 2_000.0, 4e6).reason is None


def test_var_budget_check_when_within_has_no_reason_and_when_over_names_the_marginal_var():
    model, ids = fed_model()
    risk = trade_risk(model, {ids[0]: 1e6}, ids[1], 100.0, BUY, 50_000, var_budget=1_000.0)

    over = check_var_budget(50_000, risk, 1_000.0)
    within = check_var_budget(risk.max_quantity, risk, 1_000.0)

    assert over.reason is not None and over.reason.code == "VAR_BUDGET"
    assert over.reason.value == pytest.approx(risk.marginal_var)
    assert within.reason is None


@pytest.mark.parametrize("hi", [1_000.0, 1234.5, math.inf])
def test_monotone_search_when_predicate_is_monotone_finds_the_largest_lot(hi):
    lot = 2.5
    truth = 777.7

    got = monotone_search(lambda q: q <= truth, hi, lot)

    assert got == math.floor(min(truth, hi) / lot) * lot
    assert monotone_search(lambda q: False, hi, lot) == 0.0


# ---------------------------------------------------------------------------------------
# Order rate
# ---------------------------------------------------------------------------------------


def test_order_rate_when_exactly_window_old_drops_out():
    rate = OrderRate(window_ns=1_000)

    assert rate.admit(0, "a") == 1
    assert rate.admit(500, "b") == 2
    assert rate.admit(999, "c") == 3
    assert rate.admit(1_000, "d") == 3  # the one at 0 is exactly 1,000 old: out
    assert rate.admit(1_500, "e") == 3  # 500 out, 999 / 1000 / 1500 in
    assert check_order_rate(3, 3, 1_000) is None
    cap = check_order_rate(4, 3, 1_000)
    assert cap is not None and cap.max_quantity == 0.0 and cap.reason.code == "ORDER_RATE"


def test_order_rate_when_same_timestamp_counts_by_key_not_arrival():
    a, b = OrderRate(1_000), OrderRate(1_000)
    got_a = {k: a.admit(7, k) for k in ("x", "y", "z")}  # event-time (key) order
    for k in ("z", "x", "y"):  # another arrival order
        b.admit(7, k)

    assert got_a == {"x": 1, "y": 2, "z": 3}
    assert {k: b.count(7, k) for k in "xyz"} == {k: a.count(7, k) for k in "xyz"} == got_a


def test_order_rate_when_far_ahead_prunes_old_entries():
    rate = OrderRate(1_000, keep_ns=0)
    for t in range(0, 10_000, 100):
        rate.admit(t)
    assert len(rate.times) <= 11


# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------


def test_state_classes_when_pickled_and_snapshotted_behave_the_same():
    bars, ids = sample_bars(9, 40)
    model = EwmaCovariance(min_obs=5, history=10)
    rate, br = OrderRate(1_000), BarReturns()
    for t, bar in enumerate(bars[:30]):
        model.update(t, bar)
        rate.admit(t * 100)
        br.add(Mark("A", t, 100.0 + t, 0.01))
    copies = [pickle.loads(pickle.dumps(x)) for x in (model, rate, br)]
    snaps = [x.snapshot() for x in (model, rate)]

    for t, bar in enumerate(bars[30:], start=30):
        for m in (model, copies[0], snaps[0]):
            m.update(t, bar)
    for r in (rate, copies[1], snaps[1]):
        r.admit(3_500)

    for m in (copies[0], snaps[0]):
        assert np.array_equal(m.raw(ids), model.raw(ids))
        assert np.array_equal(m.scenarios(ids), model.scenarios(ids))
    assert copies[1].times == snaps[1].times == rate.times
    assert copies[2].flush(40) == br.flush(40)
    assert model.name == "ewm_cov_0.94"


# ---------------------------------------------------------------------------------------
# Per-decision risk through the model
# ---------------------------------------------------------------------------------------


def correlated_model(rho: float = 0.7) -> EwmaCovariance:
    """A, B correlated ``rho``; C independent; 1% daily vols (per-bar data, 100 bars a day)."""
    rng = np.random.default_rng(21)
    c = np.array([[1.0, rho, 0.0], [rho, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 1e-4 / 100.0
    chol = np.linalg.cholesky(c)
    model = EwmaCovariance(min_obs=10, periods_per_day=100.0, history=50)
    for t in range(400):
        model.update(t, dict(zip("ABC", (chol @ rng.normal(size=3)).tolist(), strict=True)))
    return model


def test_trade_risk_when_adding_correlated_risk_marginal_var_is_positive_and_hedge_negative():
    model = correlated_model()
    book = {"A": 1e6}

    buy_b = trade_risk(model, book, "B", 50.0, BUY, 2_000)
    sell_b = trade_risk(model, book, "B", 50.0, SELL, 2_000)

    assert model.corr("A", "B") > 0.5
    assert buy_b.marginal_var > 0 and buy_b.var_gradient > 0
    assert sell_b.marginal_var < 0 and sell_b.var_gradient < 0
    assert buy_b.var_before == sell_b.var_before


def test_trade_risk_when_book_is_empty_budget_quantity_is_budget_over_unit_var():
    model = correlated_model()
    budget, unit = 10_000.0, 25.0

    risk = trade_risk(model, {}, "C", unit, SELL, 1, var_budget=budget)

    assert risk.var_before == 0.0
    assert risk.max_quantity == pytest.approx(budget / (Z95 * model.vol("C") * unit), rel=1e-12)


def test_trade_risk_when_portfolio_limit_is_exceeded_cap_reason_is_var_limit():
    model = correlated_model()
    book = {"A": 5e6}
    before = trade_risk(model, book, "B", 50.0, BUY, 1).var_before
    limit = before * 0.8  # already over

    buy = trade_risk(model, book, "B", 50.0, BUY, 100, var_budget=limit, budget_kind="portfolio")
    sell = trade_risk(model, book, "B", 50.0, SELL, 100, var_budget=limit, budget_kind="portfolio")

    cap = check_var_budget(100, buy, limit, "portfolio")
    assert buy.max_quantity == 0.0
    assert cap.reason is not None and cap.reason.code == "VAR_LIMIT"
    assert (
        sell.max_quantity > 100 and check_var_budget(100, sell, limit, "portfolio").reason is None
    )


@pytest.mark.parametrize("side", [BUY, SELL])
def test_var_budget_closed_form_when_lot_rounded_equals_monotone_search(side):
    model = correlated_model(-0.4)
    book = {"A": 2e6, "C": -1e6}
    lot = 100.0
    risk = trade_risk(model, book, "B", 40.0, side, 1, var_budget=15_000.0)
    keys = ["A", "C", "B"]
    c = model.cov(keys)
    w = np.array([2e6, -1e6, 0.0])

    def within(q: float) -> bool:
        dw = np.array([0.0, 0.0, side * q * 40.0])
        return var_of(w + dw, c) - var_of(w, c) <= 15_000.0

    assert round_to_lot(risk.max_quantity, lot) == monotone_search(within, math.inf, lot)


def test_historical_figures_when_an_instrument_joined_inside_the_window_are_nan():
    model = correlated_model()
    model.update(400, {"A": 0.001, "NEW": 0.002})

    risk = trade_risk(model, {"A": 1e6}, "NEW", 10.0, BUY, 100, fallback_vols={"NEW": 0.02})
    old = trade_risk(model, {"A": 1e6}, "B", 10.0, BUY, 100)

    assert risk.ok and math.isnan(risk.hist_var_before)
    assert math.isfinite(old.hist_var_before) and math.isfinite(old.hist_cvar_after)


def test_corr_row_when_no_ids_given_covers_the_universe_in_order():
    model = correlated_model()
    row = model.corr_row("A")
    assert row[0] == pytest.approx(1.0)
    assert row[1] == pytest.approx(model.corr("A", "B"), rel=1e-14)
    assert row[2] == pytest.approx(model.corr("A", "C"), rel=1e-14)
    assert np.isnan(model.corr_row("A", ["B", "ZZZ"])[1])
