"""Hypothesis strategies for hostile input: records built from the ``.avsc`` schemas.

``record_strategy(name)`` draws any record the schema admits (well-formed Avro, any
values); ``hostile=True`` biases doubles, longs and strings towards the values that break
things (NaN, infinities, zero, negatives, subnormals, huge; boundary timestamps; empty,
oversized and non-ASCII strings).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from operators.validate import MAX_ID_LEN, MAX_TS_NS, MIN_TS_NS
from schemas.codec import RECORD_NAMES

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

HOSTILE_DOUBLES = (
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    5e-324,
    1e-300,
    1e-9,
    9.999999999999999e-10,
    1e15,
    1.0000000000000002e15,
    1e300,
    1.7976931348623157e308,
    -1e300,
)
HOSTILE_LONGS = (
    INT64[0],
    INT64[1],
    0,
    -1,
    MIN_TS_NS - 1,
    MIN_TS_NS,
    MAX_TS_NS - 1,
    MAX_TS_NS,
)
HOSTILE_STRINGS = ("", " ", "x" * MAX_ID_LEN, "x" * (MAX_ID_LEN + 1), "é" * 300, "\x00", "🚀💥")

_doubles_any = st.floats(allow_nan=True, allow_infinity=True)
HOSTILE_DOUBLE = st.sampled_from(HOSTILE_DOUBLES) | _doubles_any | st.floats(-1e6, 1e6)
HOSTILE_LONG = (
    st.sampled_from(HOSTILE_LONGS) | st.integers(*INT64) | st.integers(MIN_TS_NS, MAX_TS_NS)
)
HOSTILE_STRING = (
    st.sampled_from(HOSTILE_STRINGS)
    | st.text(max_size=20)
    | st.text(max_size=3).map(lambda t: t * 100)  # 0-300 characters, cheap to draw
    | st.sampled_from(["AAPL", "PF-1", "GLOBAL", "default"])
)


def raw_schema(name: str) -> dict[str, Any]:
    """The JSON of ``schemas/<name>.avsc``."""
    return dict(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def _strategy(schema: Any, named: dict[str, Any], hostile: bool) -> st.SearchStrategy[Any]:
    """A strategy for values of one Avro schema (named types resolved through ``named``)."""
    if isinstance(schema, list):
        return st.one_of([_strategy(s, named, hostile) for s in schema])
    if isinstance(schema, str):
        if schema in named:
            return st.deferred(lambda: named[schema])
        return _primitive(schema, hostile)
    kind = schema["type"]
    if kind == "record":
        fields = {f["name"]: _strategy(f["type"], named, hostile) for f in schema["fields"]}
        strategy: st.SearchStrategy[Any] = st.fixed_dictionaries(fields)
    elif kind == "enum":
        strategy = st.sampled_from(schema["symbols"])
    elif kind == "array":
        return st.lists(_strategy(schema["items"], named, hostile), max_size=3)
    elif kind == "map":
        values = _strategy(schema["values"], named, hostile)
        return st.dictionaries(st.text(max_size=12), values, max_size=3)
    else:
        return _primitive(kind, hostile)
    named[schema["name"]] = strategy
    return strategy


def _primitive(kind: str, hostile: bool) -> st.SearchStrategy[Any]:
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return st.integers(*INT32)
    if kind == "long":
        return HOSTILE_LONG if hostile else st.integers(*INT64)
    if kind in ("double", "float"):
        return HOSTILE_DOUBLE if hostile else _doubles_any
    if kind == "bytes":
        return st.binary(max_size=40)
    if kind == "string":
        return HOSTILE_STRING if hostile else st.text(max_size=40)
    raise AssertionError(f"unexpected Avro type {kind!r}")


@cache
def record_strategy(name: str, hostile: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Any record of ``name`` that its current schema admits."""
    return _strategy(raw_schema(name), {}, hostile)


ALL_RECORDS = RECORD_NAMES


def same(a: Any, b: Any) -> bool:
    """Structural equality where NaN equals NaN (and -0.0 is told apart from 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)


def fuzz(max_examples: int) -> settings:
    """Reproducible settings: derandomized, no example database, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@cache
def corpus() -> dict[str, dict[str, Any]]:
    """One valid, fully populated record of every type (seeds for mutation fuzzing)."""
    from tests.factories import T0, control, execution, instrument, proposal, tick

    reason = {"code": "CONCENTRATION", "message": "m", "value": 0.3, "limit": 0.25, "hard": True}
    score = {
        **{k: v for k, v in proposal(proposal_id="P-1").items() if k not in ("quantity",)},
        "requested_quantity": 100.0,
        "decision": "REDUCE",
        "allowed_quantity": 50.0,
        "score": 61.5,
        "band": "HIGH",
        "reasons": [reason],
        "factors": [{"name": "concentration", "value": 1.2, "contribution": 35.0}],
        "suggestions": [{"kind": "REDUCE", "message": "to 50", "quantity": 50.0}],
        "trading_state": "ACTIVE",
        "features": {"mid": 100.0, "daily_vol": 0.02},
        "model_versions": {"regime_tft": "1"},
        "source_topic": "trade.proposals",
        "source_partition": 3,
        "source_offset": 42,
        "ts_decided": T0 + 5,
    }
    regime = {
        "scope": "market",
        "ts_event": T0,
        "probabilities": [{"regime": "calm", "probability": 0.9}],
        "most_likely": "calm",
        "entropy": 0.3,
        "coarse": "BULL",
        "model_version": "1",
        "ts_decided": T0 + 1,
    }
    letter = {
        "source_topic": "trade.proposals",
        "source_partition": 0,
        "source_offset": 7,
        "source_key": b"PF-1",
        "payload": b"\xc3\x01garbage",
        "error_code": "DECODE_ERROR",
        "error_message": "bad",
        "step": "parse",
        "ts_event": None,
        "ts_failed": T0,
    }
    bond = instrument(
        instrument_id="UST", symbol="UST", asset_class="BOND", coupon=0.05,
        coupon_frequency=2, day_count="30/360", maturity=T0 + 10 * 365 * 86_400 * 10**9,
        face_value=10.0, issuer="US", rating="AAA", sector="Govt",
    )  # fmt: skip
    return {
        "MarketTick": tick(**{"yield": 0.04, "venue": "XNYS"}),
        "Instrument": bond,
        "TradeProposal": proposal(limit_price=101.0, strategy="s"),
        "Execution": execution(proposal_id="P-1"),
        "ControlCommand": control(),
        "RiskScore": score,
        "RegimeEvent": regime,
        "DeadLetter": letter,
    }
