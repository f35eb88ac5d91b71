"""Validation fuzzing: hostile field values either pass or raise InvalidRecord with a code.

An independent predicate (written from the schema docs and the README, not from
``operators/validate.py``) says which records are valid; ``validate`` must agree with it
both ways, and every rejection must carry one of the documented codes for its kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.errors import InvalidRecord
from operators.validate import MAX_ID_LEN, MAX_TS_NS, MAX_VALUE, MIN_TS_NS, MIN_VALUE, validate
from tests.fuzz.strategies import HOSTILE_DOUBLE, corpus, fuzz, record_strategy

Record = dict[str, Any]
INPUT_KINDS = ("MarketTick", "Instrument", "TradeProposal", "Execution", "ControlCommand")
COMMON = {"INVALID_TIMESTAMP", "INVALID_ID"}
CODES = {
    "MarketTick": COMMON | {"INVALID_PRICE", "CROSSED_QUOTE", "INVALID_QUANTITY", "INVALID_YIELD"},
    "Instrument": COMMON
    | {"INVALID_LOT_SIZE", "INVALID_FACE_VALUE", "INVALID_ADV", "INVALID_COUPON"}
    | {"INVALID_COUPON_FREQUENCY"},
    "TradeProposal": COMMON | {"INVALID_QUANTITY", "INVALID_PRICE"},
    "Execution": COMMON | {"INVALID_QUANTITY", "INVALID_PRICE"},
    "ControlCommand": COMMON | {"INVALID_CONTROL"},
}
LIMIT_RANGE = (1e-9, 1e18)
"""SET_LIMIT values the flow can act on (finite, and neither vanishing nor astronomic)."""


def _pos(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and MIN_VALUE <= x <= MAX_VALUE


def _id(x: str | None) -> bool:
    return x is not None and 0 < len(x) <= MAX_ID_LEN


def _finite_or_none(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def _tick_ok(r: Record) -> bool:
    return (
        _id(r["instrument_id"])
        and all(_pos(r[k]) for k in ("bid", "ask", "last"))
        and r["bid"] <= r["ask"]
        and math.isfinite(r["size"])
        and 0 <= r["size"] <= MAX_VALUE
        and _finite_or_none(r["yield"])
    )


def _instrument_ok(r: Record) -> bool:
    coupon, freq = r["coupon"], r["coupon_frequency"]
    return (
        _id(r["instrument_id"])
        and _id(r["symbol"])
        and _pos(r["lot_size"])
        and _pos(r["face_value"])
        and math.isfinite(r["adv"])
        and 0 <= r["adv"] <= MAX_VALUE
        and (coupon is None or (math.isfinite(coupon) and coupon >= 0))
        and (freq is None or freq in (1, 2, 4, 12))
    )


def _proposal_ok(r: Record) -> bool:
    ids = all(_id(r[k]) for k in ("proposal_id", "portfolio_id", "instrument_id"))
    return ids and _pos(r["quantity"]) and (r["limit_price"] is None or _pos(r["limit_price"]))


def _execution_ok(r: Record) -> bool:
    ids = all(_id(r[k]) for k in ("execution_id", "portfolio_id", "instrument_id"))
    return ids and _pos(r["quantity"]) and _pos(r["price"])


def _control_ok(r: Record) -> bool:
    if not (_id(r["command_id"]) and _id(r["nonce"])):
        return False
    if r["scope"] != "GLOBAL" and not r["target"]:
        return False
    if r["action"] != "SET_LIMIT":
        return True
    value = r["limit_value"]
    return (
        r["limit_name"] is not None
        and value is not None
        and math.isfinite(value)
        and LIMIT_RANGE[0] <= value <= LIMIT_RANGE[1]
    )


VALID: dict[str, Callable[[Record], bool]] = {
    "MarketTick": _tick_ok,
    "Instrument": _instrument_ok,
    "TradeProposal": _proposal_ok,
    "Execution": _execution_ok,
    "ControlCommand": _control_ok,
}


def expected_valid(kind: str, record: Record) -> bool:
    """The independent verdict: is ``record`` a usable ``kind``?"""
    return MIN_TS_NS <= record["ts_event"] < MAX_TS_NS and VALID[kind](record)


def verdict(kind: str, record: Record) -> str | None:
    """None when ``validate`` passes, else its code; any other exception fails the test."""
    try:
        validate(kind, record)
    except InvalidRecord as exc:
        assert exc.code in CODES[kind], f"{kind}: undocumented code {exc.code!r}: {exc}"
        assert str(exc)
        return str(exc.code)
    return None


@st.composite
def near_valid(draw: st.DrawFn, kind: str) -> Record:
    """A valid record with one to three fields replaced by hostile values of their type."""
    base = dict(corpus()[kind])
    hostile = draw(record_strategy(kind, hostile=True))
    for name in draw(st.lists(st.sampled_from(sorted(base)), min_size=1, max_size=3)):
        base[name] = hostile[name]
    if kind == "MarketTick" and draw(st.booleans()):  # reach the bid <= ask comparison
        base["bid"], base["ask"] = draw(HOSTILE_DOUBLE), draw(HOSTILE_DOUBLE)
    return base


@pytest.mark.parametrize("kind", INPUT_KINDS)
@fuzz(640)
@given(data=st.data())
def test_validate_when_given_hostile_field_values_agrees_with_independent_rules(kind, data):
    record = data.draw(near_valid(kind) | record_strategy(kind, hostile=True))

    code = verdict(kind, record)

    assert (code is None) == expected_valid(kind, record), f"{kind} {record!r}: got {code}"


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_validate_when_given_corpus_record_passes(kind):
    assert verdict(kind, corpus()[kind]) is None
