"""Record factories for tests: valid by default, any field overridable."""

from __future__ import annotations

import itertools
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage

from operators.config import ControlKeys
from operators.control import sign
from schemas.codec import Codec, SingleObjectCodec

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
SECOND = 1_000_000_000
KEY = b"test-control-key"
KEYS = ControlKeys({"default": KEY})
_offsets = itertools.count()


def instrument(**kw: Any) -> dict[str, Any]:
    rec = {
        "instrument_id": "AAPL",
        "symbol": "AAPL",
        "asset_class": "EQUITY",
        "currency": "USD",
        "sector": "Tech",
        "issuer": None,
        "rating": None,
        "coupon": None,
        "coupon_frequency": None,
        "day_count": None,
        "maturity": None,
        "face_value": 1.0,
        "lot_size": 1.0,
        "adv": 1_000_000.0,
        "ts_event": T0 - 60 * SECOND,
    }
    return rec | kw


def tick(**kw: Any) -> dict[str, Any]:
    rec = {
        "instrument_id": "AAPL",
        "ts_event": T0,
        "bid": 99.99,
        "ask": 100.01,
        "last": 100.0,
        "size": 100.0,
        "yield": None,
        "venue": None,
    }
    return rec | kw


def proposal(**kw: Any) -> dict[str, Any]:
    rec = {
        "proposal_id": f"P-{next(_offsets)}",
        "portfolio_id": "PF-1",
        "instrument_id": "AAPL",
        "side": "BUY",
        "quantity": 100.0,
        "limit_price": None,
        "strategy": None,
        "ts_event": T0 + SECOND,
    }
    return rec | kw


def execution(**kw: Any) -> dict[str, Any]:
    rec = {
        "execution_id": f"E-{next(_offsets)}",
        "portfolio_id": "PF-1",
        "instrument_id": "AAPL",
        "side": "BUY",
        "quantity": 100.0,
        "price": 100.0,
        "proposal_id": None,
        "ts_event": T0 + SECOND,
    }
    return rec | kw


def control(key: bytes | None = KEY, **kw: Any) -> dict[str, Any]:
    rec = {
        "command_id": f"C-{next(_offsets)}",
        "action": "HALT",
        "scope": "GLOBAL",
        "target": "",
        "limit_name": None,
        "limit_value": None,
        "issuer": "risk-officer",
        "reason": "test",
        "nonce": f"n-{next(_offsets)}",
        "key_id": "default",
        "signature": "",
        "ts_event": T0 + SECOND,
    }
    rec |= kw
    if key is not None and not kw.get("signature"):
        rec["signature"] = sign(rec, key)
    return rec


TOPIC_OF = {
    "MarketTick": "market.ticks",
    "Instrument": "reference.instruments",
    "TradeProposal": "trade.proposals",
    "Execution": "trades.executed",
    "ControlCommand": "risk.control",
}
INPUT_KINDS = {topic: kind for kind, topic in TOPIC_OF.items()}


def message(
    kind: str,
    record: dict[str, Any] | None = None,
    *,
    raw: bytes | None = None,
    codec: Codec | None = None,
    kafka_ts_ns: int | None = None,
) -> KafkaSourceMessage:
    """A Kafka-like source message carrying the encoded record (or raw bytes)."""
    value = raw if raw is not None else (codec or SingleObjectCodec()).encode(kind, record or {})
    ts_ns = kafka_ts_ns if kafka_ts_ns is not None else (record or {}).get("ts_event", T0)
    return KafkaSourceMessage(
        key=None,
        value=value,
        topic=TOPIC_OF[kind],
        partition=0,
        offset=next(_offsets),
        timestamp=(1, ts_ns // 1_000_000),
    )
