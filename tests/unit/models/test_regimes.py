from __future__ import annotations

import json

import pytest

from models.regimes import REGIMES, Coarse, Regime, coarse_view
from tests.unit.models.avro import SCHEMAS


def test_regimes_when_listed_keep_model_order_and_schema_names() -> None:
    assert [r.value for r in REGIMES] == [
        "CALM", "VOL_RISK_OFF", "LIQUIDITY_CRISIS", "CREDIT_SELLOFF", "RATE_SELLOFF",
        "RALLY", "TECHNICAL_DISLOCATION",
    ]  # fmt: skip
    assert [r.code for r in REGIMES] == list(range(7))
    assert Regime("RALLY") is Regime.RALLY
    assert Regime.CALM == "CALM"


@pytest.mark.parametrize(
    ("regime", "display", "coarse"),
    [
        (Regime.CALM, "Calm/Normal", Coarse.SIDEWAYS),
        (Regime.VOL_RISK_OFF, "Volatility-Driven Risk-Off", Coarse.BEAR),
        (Regime.LIQUIDITY_CRISIS, "Liquidity Crisis", Coarse.BEAR),
        (Regime.CREDIT_SELLOFF, "Credit-Driven Selloff", Coarse.BEAR),
        (Regime.RATE_SELLOFF, "Rate-Driven Selloff", Coarse.BEAR),
        (Regime.RALLY, "Strong Inflow/Rally", Coarse.BULL),
        (Regime.TECHNICAL_DISLOCATION, "Technical Positioning/Dislocation", Coarse.SIDEWAYS),
    ],
)
def test_regime_when_described_has_display_name_and_coarse_view(
    regime: Regime, display: str, coarse: Coarse
) -> None:
    assert regime.display_name == display
    assert regime.coarse is coarse


def test_coarse_when_compared_with_schema_matches_enum_symbols() -> None:
    with open(SCHEMAS / "RegimeEvent.avsc") as f:
        fields = {fld["name"]: fld for fld in json.load(f)["fields"]}
    assert [c.value for c in Coarse] == fields["coarse"]["type"]["symbols"]


def test_from_code_when_out_of_range_raises_value_error() -> None:
    assert Regime.from_code(5) is Regime.RALLY
    with pytest.raises(ValueError, match=r"0\.\.6"):
        Regime.from_code(7)


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.1, 0.2, 0.1, 0.1, 0.1, 0.3, 0.1], Coarse.BEAR),
        ([0.1, 0.0, 0.0, 0.0, 0.0, 0.8, 0.1], Coarse.BULL),
        ([0.6, 0.1, 0.0, 0.0, 0.0, 0.2, 0.1], Coarse.SIDEWAYS),
    ],
)
def test_coarse_view_when_group_dominates_returns_that_group(
    probabilities: list[float], expected: Coarse
) -> None:
    assert coarse_view(probabilities) is expected


def test_coarse_view_when_length_wrong_raises_value_error() -> None:
    with pytest.raises(ValueError, match="7 probabilities"):
        coarse_view([1.0])
