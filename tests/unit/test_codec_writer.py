"""The compiled Avro writers write exactly fastavro's bytes, and leave it what they do not take."""

from __future__ import annotations

import io
import math
from enum import StrEnum
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.errors import CodecError
from schemas.codec import RECORD_NAMES, SingleObjectCodec, compiled_writer, load_schema
from tests.factories import T0, control, execution, instrument, proposal, tick


def fastavro_body(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(name), record)
    return buf.getvalue()


def compiled_body(name: str, record: dict[str, Any]) -> bytes:
    write = compiled_writer(name)
    assert write is not None
    out = bytearray()
    write(out, record)
    return bytes(out)


def reason(code: str, value: float | None = None, hard: bool = True) -> dict[str, Any]:
    return {"code": code, "message": f"{code} fired", "value": value, "limit": None, "hard": hard}


def score(**kw: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "proposal_id": "PRP-1",
        "portfolio_id": "PF-001",
        "instrument_id": "SIM-EQ01",
        "side": "SELL",
        "requested_quantity": 1200.0,
        "decision": "REDUCE",
        "allowed_quantity": 800.0,
        "score": 61.25,
        "band": "HIGH",
        "reasons": [reason("ADV_SHARE", 0.31), reason("RISK_MODEL_WARMING", 2.0, hard=False)],
        "factors": [
            {"name": "concentration", "value": 0.5, "contribution": 17.5},
            {"name": "order_size", "value": -0.0, "contribution": 0.0},
        ],
        "suggestions": [
            {
                "kind": "HEDGE",
                "message": "hedge: BUY 1,234 notional of SIM-EQ02 " + "x" * 80,
                "quantity": None,
                "instrument_id": "SIM-EQ02",
                "side": "BUY",
                "days": None,
                "correlation": -0.73,
                "hedge_ratio": 1.5,
                "notional": 1234.5,
                "var_after": 99.0,
            },
            {
                "kind": "SPLIT",
                "message": "split über 3 Tage",
                "quantity": 400.0,
                "instrument_id": None,
                "side": None,
                "days": 2**31 - 1,
                "correlation": None,
                "hedge_ratio": None,
                "notional": None,
                "var_after": None,
            },
        ],
        "trading_state": "REDUCE_ONLY",
        "regime": "calm",
        "var_before": 1e-300,
        "var_after": math.inf,
        "cvar_before": -math.inf,
        "cvar_after": math.nan,
        "marginal_var": 5e300,
        "hist_var_before": None,
        "hist_var_after": None,
        "hist_cvar_before": None,
        "hist_cvar_after": None,
        "price": 101.25,
        "features": {"last": 101.25, "bar_volume": 5919211.0, "y" * 70: -1.5},
        "model_versions": {"regime_tft": "1.0.0", "vol_nbeats": "2.1"},
        "stale": True,
        "source_topic": "risk.trade.proposals",
        "source_partition": 3,
        "source_offset": 2**40,
        "ts_event": T0,
        "ts_decided": T0 + 5,
        "latency_us": 12.5,
    }
    return record | kw


RECORDS = [
    pytest.param("RiskScore", score(), id="score"),
    pytest.param("RiskScore", score(reasons=[], suggestions=[], features={}), id="score-empty"),
    pytest.param("RiskScore", score(regime=None, price=None, model_versions={}), id="score-nulls"),
    pytest.param("RiskScore", score(source_offset=-(2**63), ts_event=2**63 - 1), id="score-longs"),
    pytest.param("MarketTick", tick(venue="TW", **{"yield": 0.04}), id="tick"),
    pytest.param("TradeProposal", proposal(limit_price=None), id="proposal"),
    pytest.param("Execution", execution(), id="execution"),
    pytest.param("ControlCommand", control(), id="control"),
    pytest.param("Instrument", instrument(), id="instrument"),
]


def test_compiled_writer_when_built_covers_every_schema():
    assert all(compiled_writer(name) is not None for name in RECORD_NAMES)


@pytest.mark.parametrize(("name", "record"), RECORDS)
def test_compiled_writer_when_given_plain_record_writes_fastavros_bytes(name, record):
    assert compiled_body(name, record) == fastavro_body(name, record)


class Side(StrEnum):
    BUY = "BUY"


NOT_PLAIN = [
    pytest.param(score(requested_quantity=1200), id="int-for-double"),
    pytest.param(score(score=np.float64(61.25)), id="numpy-double"),
    pytest.param(score(features={"last": np.float64(2.5), "n": 3}), id="numpy-and-int-in-map"),
    pytest.param(score(stale=1), id="int-for-boolean"),
    pytest.param(score(source_partition=True), id="bool-for-int"),
    pytest.param(score(portfolio_id=Side.BUY, side=Side.BUY), id="str-subclass"),
    pytest.param(score(reasons=(reason("X"),)), id="tuple-for-array"),
    pytest.param({k: v for k, v in score().items() if k != "regime"}, id="missing-with-default"),
]


@pytest.mark.parametrize("record", NOT_PLAIN)
def test_encode_when_record_is_not_plain_data_writes_what_fastavro_writes(record):
    codec = SingleObjectCodec()
    header = codec.single_object_header("RiskScore")
    assert header is not None
    assert codec.encode("RiskScore", record) == header + fastavro_body("RiskScore", record)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(score(source_offset=2**63), id="long-out-of-range"),
        pytest.param(score(decision="MAYBE"), id="unknown-enum-symbol"),
        pytest.param({k: v for k, v in score().items() if k != "score"}, id="missing-field"),
    ],
)
def test_encode_when_record_breaks_schema_raises_encode_error(record):
    with pytest.raises(CodecError) as err:
        SingleObjectCodec().encode("RiskScore", record)
    assert err.value.code == "ENCODE_ERROR"


@given(
    quantity=st.floats(allow_nan=True, allow_infinity=True),
    offset=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    text=st.text(max_size=200),
    features=st.dictionaries(st.text(max_size=80), st.floats(), max_size=20),
)
def test_compiled_writer_when_given_any_values_writes_fastavros_bytes(
    quantity, offset, text, features
):
    record = score(
        allowed_quantity=quantity,
        source_offset=offset,
        regime=text,
        reasons=[reason(text, quantity)],
        features=features,
    )
    assert compiled_body("RiskScore", record) == fastavro_body("RiskScore", record)
