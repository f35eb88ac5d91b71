"""Signed control commands: canonical text, HMAC-SHA256 signing and verification."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from operators.config import ControlKeys
from operators.errors import InvalidRecord

SIGNED_FIELDS = (
    "command_id",
    "action",
    "scope",
    "target",
    "limit_name",
    "limit_value",
    "issuer",
    "reason",
    "nonce",
    "key_id",
    "ts_event",
)


def canonical_text(command: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: a JSON array of the signed fields in a fixed order.

    JSON quotes and escapes every string, so text cannot move from one field to another
    without changing the bytes.
    """
    values = [command.get(name) for name in SIGNED_FIELDS]
    limit = command.get("limit_value")
    if limit is not None:  # 1000000 and 1000000.0 are the same limit after Avro
        values[SIGNED_FIELDS.index("limit_value")] = float(limit)
    return json.dumps(values, ensure_ascii=True, separators=(",", ":")).encode()


def sign(command: Mapping[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 of the command's canonical text."""
    return hmac.new(key, canonical_text(command), hashlib.sha256).hexdigest()


def verify(command: Mapping[str, Any], kafka_ts_ns: int, keys: ControlKeys) -> None:
    """Raise InvalidRecord unless the command is signed by a known key and fresh.

    Freshness compares the command's ``ts_event`` with the Kafka record timestamp, so the
    check gives the same answer on every replay of the same topic.
    """
    signature = command.get("signature") or ""
    if not signature:
        raise InvalidRecord(
            "UNSIGNED_CONTROL", f"command {command.get('command_id')!r} is unsigned"
        )
    key = keys.keys.get(command.get("key_id", ""))
    if key is None:
        raise InvalidRecord(
            "UNKNOWN_KEY",
            f"command {command.get('command_id')!r} uses unknown key id {command.get('key_id')!r}",
        )
    if not hmac.compare_digest(sign(command, key), signature):
        raise InvalidRecord(
            "BAD_SIGNATURE", f"command {command.get('command_id')!r}: bad signature"
        )
    if not kafka_ts_ns:
        raise InvalidRecord(
            "EXPIRED_CONTROL",
            f"command {command.get('command_id')!r}: no Kafka timestamp to check freshness",
        )
    if abs(kafka_ts_ns - command["ts_event"]) > keys.max_age_ns:
        raise InvalidRecord(
            "EXPIRED_CONTROL",
            f"command {command.get('command_id')!r}: ts_event is"
            f" {abs(kafka_ts_ns - command['ts_event']) / 1e9:.1f}s from its Kafka timestamp",
        )
