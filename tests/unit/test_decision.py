"""decide(): closed-form limits, lot rounding, score and bands, reasons, VaR, and properties."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from operators.config import EngineConfig, Limits
from operators.decision import BookView, band, decide
from operators.records import MarketView
from tests.factories import SECOND, T0, instrument, proposal

CONFIG = EngineConfig()
Z95 = NormalDist().inv_cdf(0.95)
# Book-level limits (VaR budget, gross/net notional) out of the way of single-check tests.
ISOLATED = Limits(var_budget=1e18, max_gross_notional=1e18, max_net_notional=1e18)
BIG = 1e12  # a limit or value large enough never to bind


def market(
    *,
    last: float = 100.0,
    ts_last: int | None = T0,
    features: dict[str, float] | None = None,
    **inst: Any,
) -> MarketView:
    return MarketView(
        instrument(**inst),
        ts_last,
        last,
        last - 0.01,
        last + 0.01,
        features if features is not None else {"daily_vol": 0.02},
    )


def run(
    *,
    mkt: MarketView | None = None,
    position: float = 0.0,
    value: float = 1_000_000.0,
    exposures: dict[str, tuple[float, float]] | None = None,
    state: str = "ACTIVE",
    limits: Limits | None = None,
    config: EngineConfig = CONFIG,
    **proposal_kw: Any,
) -> dict[str, Any]:
    return decide(
        proposal(**proposal_kw),
        mkt or market(),
        BookView(position, value, exposures or {}),
        state,
        limits or ISOLATED,
        config,
    )


def codes(result: dict[str, Any]) -> list[str]:
    return [r["code"] for r in result["reasons"]]


def contributions(result: dict[str, Any]) -> dict[str, float]:
    return {f["name"]: f["contribution"] for f in result["factors"]}


# --- concentration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "position", "quantity", "decision", "allowed"),
    [
        # 25% of 1,000,000 at 100 = 2,500 units.
        ("BUY", 0.0, 2500.0, "APPROVE", 2500.0),
        ("BUY", 0.0, 2501.0, "REDUCE", 2500.0),
        ("BUY", 1000.0, 1500.0, "APPROVE", 1500.0),
        ("BUY", 1000.0, 1501.0, "REDUCE", 1500.0),
        ("SELL", 1000.0, 3500.0, "APPROVE", 3500.0),
        ("SELL", 1000.0, 3501.0, "REDUCE", 3500.0),
        ("SELL", -1000.0, 1500.0, "APPROVE", 1500.0),
        ("SELL", -1000.0, 1600.0, "REDUCE", 1500.0),
        ("BUY", 3000.0, 1.0, "REJECT", 0.0),
        ("SELL", 3000.0, 100.0, "APPROVE", 100.0),
    ],
)
def test_decide_when_at_concentration_boundary_allows_up_to_the_boundary(
    side, position, quantity, decision, allowed
):
    result = run(side=side, position=position, quantity=quantity)

    assert result["decision"] == decision
    assert result["allowed_quantity"] == allowed
    assert result["requested_quantity"] == quantity
    assert ("CONCENTRATION" in codes(result)) == (decision != "APPROVE")


def test_decide_when_concentration_binds_reports_weight_and_limit():
    result = run(quantity=3000.0)

    [reason] = result["reasons"]
    assert reason["code"] == "CONCENTRATION"
    assert reason["value"] == pytest.approx(0.30)
    assert reason["limit"] == 0.25
    assert reason["hard"] is True


def test_decide_when_concentration_limit_overridden_uses_the_override():
    result = run(quantity=2000.0, limits=Limits(concentration=0.1))

    assert (result["decision"], result["allowed_quantity"]) == ("REDUCE", 1000.0)


# --- lot rounding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lot", "value", "quantity", "allowed"),
    [
        (100.0, 1_020_000.0, 3000.0, 2500.0),  # cap 2550 -> 25 lots
        (1.0, 1_000_050.0, 3000.0, 2500.0),  # cap 2500.125
        (25.0, 1_000_000.0, 2600.0, 2500.0),
        (7.0, 1_000_000.0, 3003.0, 2499.0),  # cap 2500 -> 357 lots of 7
        (0.5, 999_990.0, 3000.0, 2499.5),  # cap 2499.975 -> 4999 half-lots
        (1000.0, 1_000_000.0, 3000.0, 2000.0),
        (5000.0, 1_000_000.0, 5000.0, 0.0),  # less than one lot fits
    ],
)
def test_decide_when_cap_is_not_whole_lots_floors_to_whole_lots(lot, value, quantity, allowed):
    result = run(mkt=market(lot_size=lot), value=value, quantity=quantity)

    assert result["allowed_quantity"] == pytest.approx(allowed, abs=1e-9)
    assert abs(result["allowed_quantity"] / lot - round(result["allowed_quantity"] / lot)) < 1e-9
    assert result["decision"] == ("REDUCE" if allowed else "REJECT")


@pytest.mark.parametrize(("quantity", "lot"), [(1.9, 0.01), (0.7, 0.1), (0.3, 0.1), (2.5, 0.5)])
def test_decide_when_request_is_whole_decimal_lots_approves_exactly_the_request(quantity, lot):
    result = run(mkt=market(lot_size=lot), quantity=quantity)

    assert result["decision"] == "APPROVE"
    assert result["allowed_quantity"] == quantity  # never a float ulp above the request


def test_decide_when_only_lot_rounding_reduces_reports_lot_size():
    result = run(mkt=market(lot_size=100.0), quantity=150.0)

    assert (result["decision"], result["allowed_quantity"]) == ("REDUCE", 100.0)
    assert codes(result) == ["LOT_SIZE"]


# --- max order notional ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit_price", "face", "max_notional", "quantity", "allowed"),
    [
        (None, 1.0, 5_000_000.0, 50_000.0, 50_000.0),  # exactly at the limit
        (None, 1.0, 5_000_000.0, 60_000.0, 50_000.0),  # 5e6 / 100
        (104.0, 1.0, 5_000_000.0, 60_000.0, 48_076.0),  # 5e6 / 104 = 48076.9
        (None, 10.0, 5_000_000.0, 6_000.0, 5_000.0),  # 5e6 / (100 x 10)
        (None, 0.01, 1_000.0, 5_000.0, 1_000.0),  # bond-like unit: 1e3 / (100 x 0.01)
        (None, 1.0, 1_000_000.0, 10_001.0, 10_000.0),
    ],
)
def test_decide_when_order_notional_exceeds_limit_caps_at_limit_over_price(
    limit_price, face, max_notional, quantity, allowed
):
    result = run(
        mkt=market(face_value=face, adv=BIG),
        value=BIG,
        quantity=quantity,
        limit_price=limit_price,
        limits=Limits(max_order_notional=max_notional),
    )

    assert result["allowed_quantity"] == allowed
    price = limit_price or 100.0
    assert result["price"] == price
    if quantity > allowed:
        assert result["decision"] == "REDUCE"
        [reason] = result["reasons"]
        assert reason["code"] == "MAX_ORDER_NOTIONAL"
        assert reason["value"] == pytest.approx(quantity * price * face)
        assert reason["limit"] == max_notional
    else:
        assert result["decision"] == "APPROVE"
        assert result["reasons"] == []


# --- ADV share ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adv", "share", "quantity", "decision", "allowed"),
    [
        (1_000_000.0, 0.10, 100_000.0, "APPROVE", 100_000.0),
        (1_000_000.0, 0.10, 150_000.0, "REDUCE", 100_000.0),
        (40_000.0, 0.25, 20_000.0, "REDUCE", 10_000.0),
        (0.0, 0.10, 150_000.0, "APPROVE", 150_000.0),  # ADV unknown: no cap
    ],
)
def test_decide_when_order_exceeds_adv_share_caps_at_share_of_adv(
    adv, share, quantity, decision, allowed
):
    result = run(
        mkt=market(adv=adv),
        value=BIG,
        quantity=quantity,
        limits=replace(ISOLATED, max_order_notional=BIG, max_adv_share=share),
    )

    assert (result["decision"], result["allowed_quantity"]) == (decision, allowed)
    assert ("ADV_SHARE" in codes(result)) == (decision == "REDUCE")


# --- price collar -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit_price", [150.0, 1000.0, 10.0, 88.0])
def test_decide_when_limit_price_is_a_fat_finger_rejects_with_price_collar(limit_price):
    result = run(quantity=10.0, limit_price=limit_price, value=BIG)

    assert result["decision"] == "REJECT"
    assert result["allowed_quantity"] == 0.0
    [reason] = [r for r in result["reasons"] if r["code"] == "PRICE_COLLAR"]
    assert reason["value"] == pytest.approx(abs(limit_price / 100.0 - 1.0))
    assert reason["limit"] == 0.10


@pytest.mark.parametrize("limit_price", [90.0, 95.0, 100.0, 105.0, 110.0])
def test_decide_when_limit_price_within_collar_approves(limit_price):
    result = run(quantity=10.0, limit_price=limit_price)

    assert result["decision"] == "APPROVE"
    assert result["reasons"] == []


# --- trading state ------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "position"), [("BUY", 0.0), ("SELL", 500.0), ("BUY", -500.0)])
def test_decide_when_halted_rejects_with_trading_halted(side, position):
    result = run(state="HALTED", side=side, position=position, quantity=10.0)

    assert result["decision"] == "REJECT"
    assert result["allowed_quantity"] == 0.0
    assert "TRADING_HALTED" in codes(result)
    assert result["trading_state"] == "HALTED"


@pytest.mark.parametrize(
    ("side", "position", "quantity", "decision", "allowed"),
    [
        ("SELL", 500.0, 300.0, "APPROVE", 300.0),
        ("SELL", 500.0, 500.0, "APPROVE", 500.0),
        ("SELL", 500.0, 800.0, "REDUCE", 500.0),
        ("BUY", -500.0, 300.0, "APPROVE", 300.0),
        ("BUY", -500.0, 800.0, "REDUCE", 500.0),
        ("BUY", 500.0, 1.0, "REJECT", 0.0),
        ("SELL", -500.0, 1.0, "REJECT", 0.0),
        ("BUY", 0.0, 1.0, "REJECT", 0.0),
    ],
)
def test_decide_when_reduce_only_allows_only_reducing_quantity(
    side, position, quantity, decision, allowed
):
    result = run(state="REDUCE_ONLY", side=side, position=position, quantity=quantity)

    assert (result["decision"], result["allowed_quantity"]) == (decision, allowed)
    if decision != "APPROVE":
        assert "REDUCE_ONLY" in codes(result)


def test_decide_when_reduce_only_and_trade_reduces_reports_no_binding_hard_reason():
    # RiskScore.avsc: Reason.hard is "True when the check limits the allowed quantity".
    result = run(state="REDUCE_ONLY", side="SELL", position=500.0, quantity=300.0)

    assert result["decision"] == "APPROVE"
    assert [r for r in result["reasons"] if r["hard"]] == []


# --- unassessable proposals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mkt", "code"),
    [
        (MarketView(None), "UNKNOWN_INSTRUMENT"),
        (MarketView(instrument()), "NO_MARKET_DATA"),
        (market(ts_last=T0 + SECOND - 30 * SECOND - 1), "STALE_MARKET_DATA"),
        (market(ts_last=T0 - 3600 * SECOND), "STALE_MARKET_DATA"),
    ],
)
def test_decide_when_market_state_unusable_rejects_with_score_100(mkt, code):
    result = run(mkt=mkt, quantity=10.0)

    assert result["decision"] == "REJECT"
    assert result["allowed_quantity"] == 0.0
    assert result["score"] == 100.0
    assert result["band"] == "CRITICAL"
    assert codes(result) == [code]
    assert sum(f["contribution"] for f in result["factors"]) == pytest.approx(100.0)


def test_decide_when_last_tick_exactly_stale_after_old_is_not_stale():
    result = run(mkt=market(ts_last=T0 + SECOND - 30 * SECOND), quantity=10.0)

    assert result["decision"] == "APPROVE"


def test_decide_when_halted_and_no_market_data_reports_both_reasons():
    result = run(mkt=MarketView(instrument()), state="HALTED", quantity=10.0)

    assert result["decision"] == "REJECT"
    assert set(codes(result)) == {"NO_MARKET_DATA", "TRADING_HALTED"}


# --- every reason -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("REDUCE_ONLY", {"REDUCE_ONLY"}),
        ("HALTED", {"TRADING_HALTED"}),
        ("ACTIVE", set()),
    ],
)
def test_decide_when_many_checks_fire_reports_every_reason_once(state, expected):
    # 200,000 @ 130 vs last 100: 30% collar, 26m notional, 2.6x the 1m value, 20% of ADV.
    result = run(state=state, quantity=200_000.0, limit_price=130.0)

    expected |= {"PRICE_COLLAR", "MAX_ORDER_NOTIONAL", "CONCENTRATION", "ADV_SHARE"}
    assert sorted(codes(result)) == sorted(expected)
    assert result["decision"] == "REJECT"


# --- score and bands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "mkt_kw", "expected"),
    [
        (
            # weight 0.1/0.25, notional 1e5/5e6, vol 0.02/0.05, 1000/(0.1 x 1e6)
            {"quantity": 1000.0},
            {},
            {"concentration": 14.0, "order_size": 0.5, "volatility": 8.0, "liquidity": 0.2},
        ),
        (
            # weight 0.3/0.25 -> capped, 3e5/5e6, vol 0.1/0.05 -> capped, 3000/1e5
            {"quantity": 3000.0},
            {"features": {"daily_vol": 0.1}},
            {"concentration": 35.0, "order_size": 1.5, "volatility": 20.0, "liquidity": 0.6},
        ),
        (
            # ADV unknown: half the liquidity weight; NaN vol counts as 0
            {"quantity": 500.0},
            {"adv": 0.0, "features": {"daily_vol": math.nan}},
            {"concentration": 7.0, "order_size": 0.25, "volatility": 0.0, "liquidity": 10.0},
        ),
        (
            # existing 1000 long, sell 3000 -> 2000 short: weight 0.2/0.25
            {"quantity": 3000.0, "side": "SELL", "position": 1000.0},
            {"features": {}},
            {"concentration": 28.0, "order_size": 1.5, "volatility": 0.0, "liquidity": 0.6},
        ),
    ],
)
def test_decide_when_scored_contributions_match_closed_form_and_sum_to_score(kw, mkt_kw, expected):
    result = run(mkt=market(**mkt_kw), **kw)

    assert contributions(result) == pytest.approx(expected)
    assert result["score"] == pytest.approx(sum(expected.values()))
    assert result["score"] == pytest.approx(sum(contributions(result).values()), abs=1e-9)
    assert 0.0 <= result["score"] <= 100.0
    assert result["band"] == band(result["score"])


def test_decide_when_factor_saturates_reports_raw_utilisation_value():
    result = run(quantity=3000.0)

    [conc] = [f for f in result["factors"] if f["name"] == "concentration"]
    assert conc["value"] == pytest.approx(1.2)
    assert conc["contribution"] == pytest.approx(35.0)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, "LOW"),
        (24.99, "LOW"),
        (25.0, "MEDIUM"),
        (49.99, "MEDIUM"),
        (50.0, "HIGH"),
        (74.99, "HIGH"),
        (75.0, "CRITICAL"),
        (100.0, "CRITICAL"),
    ],
)
def test_band_when_given_score_uses_documented_thresholds(score, expected):
    assert band(score) == expected


# --- VaR ----------------------------------------------------------------------------------------


def test_config_var_z_when_default_is_the_95_percent_quantile():
    assert pytest.approx(Z95, rel=1e-12) == CONFIG.var_confidence_z


# Before the covariance model has history, correlations are 0 (not yet estimated), so the
# parametric VaR is z * sqrt(sum((notional_i * vol_i)^2)), with the instrument's current
# daily vol (0.02 in these books) for the proposal's own instrument.


def test_decide_when_new_instrument_adds_its_standalone_risk_in_quadrature():
    exposures = {"MSFT": (100_000.0, 0.02), "TSY": (-50_000.0, 0.03)}

    result = run(exposures=exposures, quantity=1000.0, value=BIG)

    assert result["var_before"] == pytest.approx(Z95 * math.hypot(2_000.0, 1_500.0))
    assert result["var_after"] == pytest.approx(Z95 * math.hypot(2_000.0, 1_500.0, 2_000.0))
    assert result["marginal_var"] == pytest.approx(result["var_after"] - result["var_before"])


def test_decide_when_trade_shrinks_an_exposure_var_falls():
    exposures = {"AAPL": (200_000.0, 0.05), "TSY": (-50_000.0, 0.03)}

    result = run(exposures=exposures, side="SELL", position=2000.0, quantity=1000.0, value=BIG)

    assert result["var_before"] == pytest.approx(Z95 * math.hypot(200_000.0 * 0.02, 1_500.0))
    assert result["var_after"] == pytest.approx(Z95 * math.hypot(100_000.0 * 0.02, 1_500.0))
    assert result["marginal_var"] < 0


# --- degenerate but valid inputs never crash the decision ------------------------------------


@pytest.mark.parametrize("name", ["concentration", "max_order_notional", "max_adv_share"])
def test_decide_when_limit_set_to_zero_rejects_without_raising(name):
    # SET_LIMIT commands can set any limit to 0 (operators/ingest.py only checks the name).
    result = run(quantity=10.0, limits=Limits().with_value(name, 0.0))

    assert result["decision"] == "REJECT"
    assert result["allowed_quantity"] == 0.0


def test_decide_when_adv_is_tiny_but_positive_does_not_raise():
    # validate() accepts any finite adv >= 0; adv x max_adv_share underflows to 0.0 here.
    result = run(mkt=market(adv=5e-324), quantity=1.0)

    assert result["decision"] == "REJECT"
    assert "ADV_SHARE" in codes(result)


# --- echo of the proposal -------------------------------------------------------------------------


def test_decide_when_answering_echoes_the_proposal_identity():
    p = proposal(proposal_id="P-echo", portfolio_id="PF-7", side="SELL", quantity=5.0)

    result = decide(p, market(), BookView(10.0, 1e6), "ACTIVE", Limits(), CONFIG)

    assert {k: result[k] for k in ("proposal_id", "portfolio_id", "instrument_id", "side")} == {
        "proposal_id": "P-echo",
        "portfolio_id": "PF-7",
        "instrument_id": "AAPL",
        "side": "SELL",
    }
    assert result["ts_event"] == p["ts_event"]
    assert result["features"]["last"] == 100.0


# --- properties ---------------------------------------------------------------------------------

_lots = st.sampled_from([1.0, 10.0, 100.0, 0.5, 0.01, 25.0])


@st.composite
def scenarios(draw):
    lot = draw(_lots)
    last = draw(st.floats(0.01, 50_000.0))
    face = draw(st.sampled_from([1.0, 0.01, 10.0, 50.0]))
    lots = draw(st.integers(1, 200_000))
    qty = lots * lot if draw(st.booleans()) else draw(st.floats(0.001, 1e7))
    limit_price = draw(st.none() | st.floats(0.5, 1.5).map(lambda r: round(last * r, 4)))
    mkt = MarketView(
        instrument(lot_size=lot, face_value=face, adv=draw(st.just(0.0) | st.floats(1.0, 1e8))),
        T0 + draw(st.integers(-40, 1)) * SECOND,
        last,
        last,
        last,
        {"daily_vol": draw(st.sampled_from([math.nan, 0.0]) | st.floats(0.0, 0.5))},
    )
    book = BookView(
        draw(st.floats(-1e6, 1e6)),
        draw(st.floats(-1e6, 1e10)),
        draw(
            st.dictionaries(
                st.sampled_from(["AAPL", "MSFT", "TSY"]),
                st.tuples(st.floats(-1e8, 1e8), st.floats(0.0, 0.5)),
                max_size=3,
            )
        ),
    )
    limits = Limits(
        concentration=draw(st.floats(0.01, 1.0)),
        max_order_notional=draw(st.floats(1.0, 1e9)),
        max_adv_share=draw(st.floats(0.001, 1.0)),
        price_collar=draw(st.floats(0.001, 1.0)),
    )
    p = proposal(
        side=draw(st.sampled_from(["BUY", "SELL"])),
        quantity=qty,
        limit_price=limit_price,
        ts_event=T0 + SECOND,
    )
    state = draw(st.sampled_from(["ACTIVE", "REDUCE_ONLY", "HALTED"]))
    return p, mkt, book, state, limits, lot


_DECIMAL_LOT = (
    proposal(quantity=1.9, ts_event=T0 + SECOND),
    market(lot_size=0.01),
    BookView(0.0, 1e6),
    "ACTIVE",
    Limits(),
    0.01,
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
@example(scenario=_DECIMAL_LOT)
def test_decide_when_given_any_valid_scenario_keeps_its_invariants(scenario):
    p, mkt, book, state, limits, lot = scenario

    result = decide(p, mkt, book, state, limits, CONFIG)

    requested, allowed = p["quantity"], result["allowed_quantity"]
    assert 0.0 <= allowed <= requested
    assert abs(allowed / lot - round(allowed / lot)) < 1e-6
    expected = "APPROVE" if allowed == requested else "REDUCE" if allowed > 0 else "REJECT"
    assert result["decision"] == expected
    assert result["score"] == pytest.approx(sum(f["contribution"] for f in result["factors"]))
    assert 0.0 <= result["score"] <= 100.0
    assert result["band"] == band(result["score"])
    if allowed < requested:
        assert result["reasons"], "a reduced or rejected proposal must say why"
    if state == "HALTED":
        assert result["decision"] == "REJECT"


# --- book-level limits and mitigation -----------------------------------------------------------


def test_decide_when_var_budget_binds_reduces_to_the_closed_form():
    # empty book, price 100, daily vol 0.02: marginal VaR of q units = z * q * 100 * 0.02
    budget = 10_000.0
    result = run(quantity=5_000.0, value=1e12, limits=replace(ISOLATED, var_budget=budget))

    expected = math.floor(budget / (Z95 * 100.0 * 0.02))
    assert result["decision"] == "REDUCE"
    assert result["allowed_quantity"] == expected
    assert "VAR_BUDGET" in codes(result)


def test_decide_when_gross_notional_binds_caps_at_the_limit():
    exposures = {"MSFT": (900_000.0, 0.02)}
    limits = replace(ISOLATED, max_gross_notional=1_000_000.0)

    result = run(exposures=exposures, quantity=5_000.0, value=1e12, limits=limits)

    assert result["allowed_quantity"] == 1_000.0  # (1,000,000 - 900,000) / 100
    assert "GROSS_NOTIONAL" in codes(result)


def test_decide_when_cut_suggests_reduce_and_split_over_days():
    result = run(quantity=150_000.0, limits=replace(ISOLATED, max_order_notional=BIG), value=1e12)

    kinds = [s["kind"] for s in result["suggestions"]]
    assert kinds[:2] == ["REDUCE", "SPLIT"]
    assert result["suggestions"][0]["quantity"] == result["allowed_quantity"]
    assert result["suggestions"][1]["days"] == 2  # 150,000 at 10% of a 1,000,000 ADV


def test_decide_when_approved_has_no_suggestions():
    assert run(quantity=10.0)["suggestions"] == []


def test_decide_when_record_built_encodes_with_the_risk_score_schema():
    from schemas.codec import SingleObjectCodec

    result = run(quantity=150_000.0, value=1e12) | {
        "stale": False, "source_topic": "t", "source_partition": 0, "source_offset": 0,
        "ts_decided": 0, "latency_us": 0.0,
    }  # fmt: skip
    codec = SingleObjectCodec()
    assert codec.decode("RiskScore", codec.encode("RiskScore", result)) == result
