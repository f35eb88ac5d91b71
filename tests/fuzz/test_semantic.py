"""Semantic hostile input through the whole flow: each case expects one reason code or outcome."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from schemas.codec import SingleObjectCodec
from tests.factories import (
    SECOND,
    T0,
    control,
    execution,
    instrument,
    message,
    proposal,
    tick,
)
from tests.fuzz.flow import FlowResult, run_flow
from tests.fuzz.strategies import SCHEMA_DIR, raw_schema

NAN, INF = math.nan, math.inf
FAR_FUTURE = 7_258_118_400 * SECOND  # 2200-01-01
FAR_PAST = 0  # 1970-01-01


def market(*extra: Any, inst: dict[str, Any] | None = None) -> list[Any]:
    """AAPL reference data, ticks at T0 and T0 + 2 s, and ``extra`` messages in between."""
    return [
        message("Instrument", instrument(**(inst or {}))),
        message("MarketTick", tick()),
        *extra,
        message("MarketTick", tick(ts_event=T0 + 2 * SECOND)),
    ]


def only_letter(result: FlowResult, offset: int) -> dict[str, Any]:
    [letter] = result.letters_at(offset)
    assert not result.scores_at(offset)
    return letter


BAD_RECORDS = [
    ("TradeProposal", proposal(quantity=NAN), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(quantity=INF), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(quantity=-INF), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(quantity=0.0), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(quantity=-100.0), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(quantity=1e300), "INVALID_QUANTITY"),
    ("TradeProposal", proposal(limit_price=NAN), "INVALID_PRICE"),
    ("TradeProposal", proposal(limit_price=INF), "INVALID_PRICE"),
    ("TradeProposal", proposal(limit_price=0.0), "INVALID_PRICE"),
    ("TradeProposal", proposal(limit_price=-5.0), "INVALID_PRICE"),
    ("TradeProposal", proposal(ts_event=FAR_FUTURE), "INVALID_TIMESTAMP"),
    ("TradeProposal", proposal(ts_event=FAR_PAST), "INVALID_TIMESTAMP"),
    ("TradeProposal", proposal(ts_event=-(2**63)), "INVALID_TIMESTAMP"),
    ("TradeProposal", proposal(proposal_id="P" * 257), "INVALID_ID"),
    ("TradeProposal", proposal(portfolio_id=""), "INVALID_ID"),
    ("MarketTick", tick(bid=NAN), "INVALID_PRICE"),
    ("MarketTick", tick(ask=INF), "INVALID_PRICE"),
    ("MarketTick", tick(last=0.0), "INVALID_PRICE"),
    ("MarketTick", tick(last=-1.0), "INVALID_PRICE"),
    ("MarketTick", tick(last=5e-324), "INVALID_PRICE"),
    ("MarketTick", tick(last=1e300, ask=1e300), "INVALID_PRICE"),
    ("MarketTick", tick(bid=100.02), "CROSSED_QUOTE"),
    ("MarketTick", tick(size=-1.0), "INVALID_QUANTITY"),
    ("MarketTick", tick(size=NAN), "INVALID_QUANTITY"),
    ("MarketTick", tick(**{"yield": INF}), "INVALID_YIELD"),
    ("Execution", execution(price=0.0), "INVALID_PRICE"),
    ("Execution", execution(quantity=NAN), "INVALID_QUANTITY"),
    ("Instrument", instrument(lot_size=0.0), "INVALID_LOT_SIZE"),
    ("Instrument", instrument(lot_size=5e-324), "INVALID_LOT_SIZE"),
    ("Instrument", instrument(face_value=NAN), "INVALID_FACE_VALUE"),
    ("Instrument", instrument(adv=-1.0), "INVALID_ADV"),
    ("Instrument", instrument(coupon=-1.0), "INVALID_COUPON"),
    ("Instrument", instrument(coupon_frequency=3), "INVALID_COUPON_FREQUENCY"),
    ("ControlCommand", control(action="SET_LIMIT", limit_name="var_budget", limit_value=1e300),
     "INVALID_CONTROL"),
    ("ControlCommand", control(action="SET_LIMIT", limit_name="order_window_s",
                               limit_value=1e-10), "INVALID_CONTROL"),
    ("ControlCommand", control(action="SET_LIMIT", limit_name="var_budget", limit_value=NAN),
     "INVALID_CONTROL"),
    ("ControlCommand", control(signature="00" * 32), "BAD_SIGNATURE"),
    ("ControlCommand", control(key=None), "UNSIGNED_CONTROL"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "record", "code"), BAD_RECORDS, ids=lambda x: None)
def test_flow_when_record_is_hostile_dead_letters_it_and_answers_the_rest(kind, record, code):
    bad = message(kind, record)
    good = message("TradeProposal", proposal(proposal_id="P-good"))

    result = run_flow(market(bad, good))

    letter = only_letter(result, bad.offset)
    assert letter["error_code"] == code
    assert letter["payload"] == bad.value
    assert [s["proposal_id"] for s in result.scores] == ["P-good"]


def test_flow_when_proposal_instrument_is_unknown_rejects_fail_safe():
    result = run_flow(market(message("TradeProposal", proposal(instrument_id="NOPE"))))

    [score] = result.scores
    assert (score["decision"], score["allowed_quantity"], score["score"]) == ("REJECT", 0.0, 100.0)
    assert [r["code"] for r in score["reasons"]] == ["UNKNOWN_INSTRUMENT"]


def test_flow_when_execution_instrument_is_unknown_dead_letters_it_at_the_end():
    fill = message("Execution", execution(instrument_id="NOPE"))

    result = run_flow(market(fill))

    assert only_letter(result, fill.offset)["error_code"] == "UNKNOWN_INSTRUMENT"


def test_flow_when_proposal_id_repeats_answers_once_and_dead_letters_the_repeat():
    first = message("TradeProposal", proposal(proposal_id="P-dup", quantity=10.0))
    again = message("TradeProposal", proposal(proposal_id="P-dup", quantity=999_999.0))
    alone = run_flow(market(first)).scores

    result = run_flow(market(first, again))

    [score] = result.scores
    assert score["requested_quantity"] == 10.0 and score["source_offset"] == first.offset
    letter = only_letter(result, again.offset)
    assert letter["error_code"] == "DUPLICATE_PROPOSAL" and letter["payload"] == again.value
    ignore = {"ts_decided", "latency_us"}
    assert {k: v for k, v in score.items() if k not in ignore} == {
        k: v for k, v in alone[0].items() if k not in ignore
    }


def test_flow_when_optional_string_is_oversized_still_answers():
    p = message("TradeProposal", proposal(strategy="s" * 100_000))

    [score] = run_flow(market(p)).scores

    assert score["decision"] == "APPROVE"


def test_flow_when_lot_and_face_value_are_extreme_but_valid_answers_without_crashing():
    inst = {"lot_size": 1e-9, "face_value": 1e15, "adv": 1e15}
    p = message("TradeProposal", proposal(quantity=1e15, limit_price=100.0))

    [score] = run_flow(market(p, inst=inst)).scores

    assert score["decision"] == "REJECT"
    assert {"MAX_ORDER_NOTIONAL", "CONCENTRATION"} <= {r["code"] for r in score["reasons"]}


# --- schema evolution: newer and older writers -------------------------------------------------


def newer(name: str, field: dict[str, Any] | None = None, symbol: str | None = None) -> dict:
    """The current schema of ``name`` with an extra field, or an extra symbol in its enum."""
    schema = copy.deepcopy(raw_schema(name))
    if field is not None:
        schema["fields"].append(field)
    if symbol is not None:
        enum = next(f["type"] for f in schema["fields"] if isinstance(f["type"], dict))
        enum["symbols"].append(symbol)
    return schema


def encode_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Single-object bytes written by another producer's schema."""
    import io

    import fastavro

    from schemas.codec import SINGLE_OBJECT_MAGIC, fingerprint

    parsed = fastavro.parse_schema(schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return SINGLE_OBJECT_MAGIC + fingerprint(parsed) + buf.getvalue()


VENUE = {"name": "venue", "type": ["null", "string"], "default": None}


def test_flow_when_proposal_comes_from_newer_schema_with_extra_field_decodes_and_answers():
    schema = newer("TradeProposal", field=VENUE)
    raw = encode_with(schema, proposal(proposal_id="P-new") | {"venue": "XNAS"})

    result = run_flow(market(message("TradeProposal", raw=raw)), SingleObjectCodec([schema]))

    [score] = result.scores
    assert score["proposal_id"] == "P-new" and score["decision"] == "APPROVE"


def test_flow_when_writer_schema_is_unknown_dead_letters_unknown_schema():
    raw = encode_with(newer("TradeProposal", field=VENUE), proposal() | {"venue": "X"})
    msg = message("TradeProposal", raw=raw)

    result = run_flow(market(msg))  # this codec was not told about the newer schema

    assert only_letter(result, msg.offset)["error_code"] == "UNKNOWN_SCHEMA"


def test_flow_when_proposal_comes_from_older_schema_fills_the_default_and_answers():
    schema = copy.deepcopy(raw_schema("TradeProposal"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "strategy"]
    old = {k: v for k, v in proposal(proposal_id="P-old").items() if k != "strategy"}
    msg = message("TradeProposal", raw=encode_with(schema, old))

    [score] = run_flow(market(msg), SingleObjectCodec([schema])).scores

    assert score["proposal_id"] == "P-old" and score["decision"] == "APPROVE"


def test_flow_when_enum_symbol_is_unknown_and_enum_has_no_default_dead_letters_decode_error():
    schema = newer("TradeProposal", symbol="SHORT")
    msg = message("TradeProposal", raw=encode_with(schema, proposal(side="SHORT")))

    result = run_flow(market(msg), SingleObjectCodec([schema]))

    assert only_letter(result, msg.offset)["error_code"] == "DECODE_ERROR"


def test_flow_when_enum_symbol_is_unknown_and_enum_has_default_reads_it_and_answers():
    schema = newer("Instrument", symbol="CRYPTO")
    ref = message("Instrument", raw=encode_with(schema, instrument(asset_class="CRYPTO")))
    p = message("TradeProposal", proposal(proposal_id="P-crypto"))
    msgs = [
        ref,
        message("MarketTick", tick()),
        p,
        message("MarketTick", tick(ts_event=T0 + 2 * SECOND)),
    ]

    result = run_flow(msgs, SingleObjectCodec([schema]))

    assert not result.letters
    [score] = result.scores
    assert score["decision"] == "APPROVE"
    assert SingleObjectCodec([schema]).decode("Instrument", ref.value)["asset_class"] == "OTHER"


def test_codec_when_reading_risk_score_v1_from_history_fills_new_fields_with_defaults():
    v1 = json.loads((SCHEMA_DIR / "history" / "RiskScore.v1.avsc").read_text())
    from tests.fuzz.strategies import corpus

    record = {
        k: v for k, v in corpus()["RiskScore"].items() if k in {f["name"] for f in v1["fields"]}
    }

    decoded = SingleObjectCodec().decode("RiskScore", encode_with(v1, record))

    assert decoded["suggestions"] == [] and decoded["cvar_before"] is None
    assert decoded["decision"] == record["decision"]
