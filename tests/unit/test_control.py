"""Signed control commands: signing, verification, freshness, key rotation and the gate."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from pathlib import Path
from typing import Any

import pytest
from bytewax.operators import StatefulBatchLogic

from operators.config import ControlKeys, EngineConfig
from operators.control import canonical_text, sign, verify
from operators.control_gate import ControlGateLogic
from operators.errors import InvalidRecord
from operators.records import DeadLetterItem, Inbound, Source
from operators.validate import validate
from tests.factories import KEY, KEYS, SECOND, T0, control

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "ControlCommand.avsc").read_text()
)
MAX_AGE = 60 * SECOND


def verify_code(command: dict[str, Any], kafka_ts: int | None = None, keys=KEYS) -> str | None:
    try:
        verify(command, command["ts_event"] if kafka_ts is None else kafka_ts, keys)
    except InvalidRecord as exc:
        return exc.code
    return None


# --- canonical text and signing ----------------------------------------------------------------


HALT_TEXT = f'["C-1","HALT","GLOBAL","",null,null,"risk-officer","test","n-1","default",{T0}]'


def test_canonical_text_when_halt_is_the_json_array_of_signed_fields():
    cmd = control(command_id="C-1", nonce="n-1", ts_event=T0)

    assert canonical_text(cmd) == HALT_TEXT.encode()


def test_canonical_text_when_set_limit_writes_limit_value_as_float_repr():
    cmd = control(
        command_id="C-2",
        action="SET_LIMIT",
        scope="PORTFOLIO",
        target="PF-1",
        limit_name="max_order_notional",
        limit_value=1_000_000,
        nonce="n-2",
        ts_event=T0,
    )

    assert (
        canonical_text(cmd)
        == (
            f'["C-2","SET_LIMIT","PORTFOLIO","PF-1","max_order_notional",1000000.0,'
            f'"risk-officer","test","n-2","default",{T0}]'
        ).encode()
    )


def test_sign_when_given_command_is_hex_hmac_sha256_of_canonical_text():
    cmd = control(command_id="C-1", nonce="n-1", ts_event=T0)
    assert sign(cmd, KEY) == hmac.new(KEY, HALT_TEXT.encode(), hashlib.sha256).hexdigest()


def test_verify_when_signed_with_known_key_and_fresh_passes():
    assert verify_code(control()) is None


def test_verify_when_signature_ignores_the_signature_field_itself():
    cmd = control()

    assert sign(cmd | {"signature": "anything"}, KEY) == cmd["signature"]


# --- tampering ------------------------------------------------------------------------------------

TAMPER = {
    "command_id": "C-forged",
    "action": "RESUME",
    "scope": "PORTFOLIO",
    "target": "PF-9",
    "limit_name": "concentration",
    "limit_value": 0.99,
    "issuer": "mallory",
    "reason": "because",
    "nonce": "n-forged",
    "key_id": "other",
    "ts_event": T0 + 2 * SECOND,
}
TWO_KEYS = ControlKeys({"default": KEY, "other": b"another-valid-key"})


def test_tamper_table_when_compared_with_schema_covers_every_field_but_the_signature():
    fields = {f["name"] for f in SCHEMA["fields"]} - {"signature"}

    assert set(TAMPER) == fields


@pytest.mark.parametrize(("name", "value"), sorted(TAMPER.items()))
def test_verify_when_a_signed_field_changes_raises_bad_signature(name, value):
    cmd = control() | {name: value}

    assert verify_code(cmd, keys=TWO_KEYS) == "BAD_SIGNATURE"


def test_verify_when_signed_with_wrong_key_raises_bad_signature():
    assert verify_code(control(key=b"not-the-key")) == "BAD_SIGNATURE"


def test_verify_when_signature_truncated_raises_bad_signature():
    cmd = control()

    assert verify_code(cmd | {"signature": cmd["signature"][:-2]}) == "BAD_SIGNATURE"


def test_verify_when_key_id_unknown_raises_unknown_key():
    assert verify_code(control(key_id="retired")) == "UNKNOWN_KEY"


@pytest.mark.parametrize("signature", ["", None])
def test_verify_when_signature_empty_raises_unsigned_control(signature):
    cmd = control(key=None) | {"signature": signature}

    assert verify_code(cmd) == "UNSIGNED_CONTROL"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"issuer": "ops|desk", "reason": "r"}, {"issuer": "ops", "reason": "desk|r"}),
        ({"reason": "r|n-1", "nonce": "k"}, {"reason": "r", "nonce": "n-1|k"}),
    ],
)
def test_canonical_text_when_field_boundaries_move_differs(left, right):
    base = control(command_id="C-1", nonce="n-1")

    assert canonical_text(base | left) != canonical_text(base | right)


def test_gate_when_nonce_is_rebuilt_from_the_reason_field_rejects_the_replay():
    # A signed command whose free-text reason contains "|" ...
    logic = gate()
    genuine = control(reason="halt|all desks", nonce="n-77")
    # ... replayed with part of the reason moved into the nonce: same canonical text.
    replay = genuine | {"reason": "halt", "nonce": "all desks|n-77"}

    out = through(logic, inbound(genuine), inbound(replay))

    assert dlq_code(out[0]) is None
    assert dlq_code(out[1]) in {"BAD_SIGNATURE", "REPLAYED_CONTROL"}


def test_verify_when_text_is_moved_across_a_field_boundary_raises_bad_signature():
    signed = control(issuer="ops|desk", reason="r")
    forged = signed | {"issuer": "ops", "reason": "desk|r"}

    assert verify_code(forged) == "BAD_SIGNATURE"


# --- freshness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kafka_offset", "code"),
    [
        (0, None),
        (MAX_AGE, None),  # exactly max_age: still fresh
        (-MAX_AGE, None),
        (MAX_AGE + 1, "EXPIRED_CONTROL"),
        (-MAX_AGE - 1, "EXPIRED_CONTROL"),  # ts_event too far in the future
        (3600 * SECOND, "EXPIRED_CONTROL"),
    ],
)
def test_verify_when_kafka_timestamp_far_from_ts_event_raises_expired(kafka_offset, code):
    cmd = control(ts_event=T0)

    assert verify_code(cmd, T0 + kafka_offset) == code


def test_verify_when_max_age_configured_uses_it():
    keys = ControlKeys({"default": KEY}, max_age_ns=5 * SECOND)

    assert verify_code(control(ts_event=T0), T0 + 6 * SECOND, keys) == "EXPIRED_CONTROL"
    assert verify_code(control(ts_event=T0), T0 + 5 * SECOND, keys) is None


def test_verify_when_expired_and_forged_reports_the_signature_first():
    assert verify_code(control(key=b"bad", ts_event=T0), T0 + 3600 * SECOND) == "BAD_SIGNATURE"


# --- key rotation ---------------------------------------------------------------------------------


def test_verify_when_two_keys_valid_accepts_either():
    keys = ControlKeys({"2025": b"old-key", "2026": b"new-key"})

    assert verify_code(control(key=b"old-key", key_id="2025"), keys=keys) is None
    assert verify_code(control(key=b"new-key", key_id="2026"), keys=keys) is None


def test_verify_when_key_id_names_the_other_valid_key_raises_bad_signature():
    keys = ControlKeys({"2025": b"old-key", "2026": b"new-key"})

    assert verify_code(control(key=b"old-key", key_id="2026"), keys=keys) == "BAD_SIGNATURE"


def test_control_keys_when_printed_hide_key_bytes():
    keys = ControlKeys({"2026": b"super-secret-hmac"})

    assert "super-secret-hmac" not in repr(keys)
    assert "super-secret-hmac" not in str(EngineConfig(control=keys))


# --- the gate -------------------------------------------------------------------------------------

_offset = iter(range(10**9))


def inbound(cmd: dict[str, Any], kafka_ts: int | None = None) -> Inbound:
    ts = cmd["ts_event"] if kafka_ts is None else kafka_ts
    source = Source("risk.control", 0, next(_offset), ts)
    return Inbound("ControlCommand", cmd, source, 0, b"key", b"raw:" + cmd["command_id"].encode())


def gate(state=None) -> ControlGateLogic:
    return ControlGateLogic(EngineConfig(control=KEYS), state)


def through(logic: ControlGateLogic, *items: Inbound) -> list[Any]:
    out, retain = logic.on_batch(list(items))
    assert retain == StatefulBatchLogic.RETAIN
    return list(out)


def dlq_code(item: Any) -> str | None:
    return item.record["error_code"] if isinstance(item, DeadLetterItem) else None


def test_gate_when_command_valid_passes_it_through_unchanged():
    item = inbound(control())

    assert through(gate(), item) == [item]


def test_gate_when_nonce_replayed_dead_letters_replayed_control():
    logic = gate()
    first = control(nonce="n-once")
    replay = control(nonce="n-once")  # a new command id, properly signed, same nonce

    out = through(logic, inbound(first), inbound(replay), inbound(first))

    assert [dlq_code(o) for o in out] == [None, "REPLAYED_CONTROL", "REPLAYED_CONTROL"]
    letter = out[1].record
    assert letter["payload"] == b"raw:" + replay["command_id"].encode()
    assert letter["source_key"] == b"key"
    assert letter["step"] == "control_gate"
    assert letter["ts_event"] == replay["ts_event"]


def test_gate_when_nonce_replayed_in_a_later_batch_dead_letters():
    logic = gate()
    cmd = control()
    through(logic, inbound(cmd))

    assert [dlq_code(o) for o in through(logic, inbound(cmd))] == ["REPLAYED_CONTROL"]


def test_gate_when_restored_from_snapshot_remembers_nonces():
    logic = gate()
    cmd = control()
    through(logic, inbound(cmd))

    restored = gate(logic.snapshot())

    assert [dlq_code(o) for o in through(restored, inbound(cmd))] == ["REPLAYED_CONTROL"]


def test_gate_when_forged_command_rejected_does_not_burn_its_nonce():
    logic = gate()
    forged = control(key=b"attacker", nonce="n-shared")
    genuine = control(nonce="n-shared")

    out = through(logic, inbound(forged), inbound(genuine))

    assert [dlq_code(o) for o in out] == ["BAD_SIGNATURE", None]


def test_gate_when_many_commands_within_max_age_still_detects_replay():
    logic = gate()
    first = control(nonce="n-first", ts_event=T0)
    through(logic, inbound(first))
    through(logic, *(inbound(control(ts_event=T0 + i)) for i in range(1, 1200)))

    assert [dlq_code(o) for o in through(logic, inbound(first))] == ["REPLAYED_CONTROL"]


@pytest.mark.parametrize(
    ("cmd", "kafka_ts", "code"),
    [
        (control(key=b"x"), None, "BAD_SIGNATURE"),
        (control(key_id="nope"), None, "UNKNOWN_KEY"),
        (control(key=None), None, "UNSIGNED_CONTROL"),
        (control(ts_event=T0), T0 + 61 * SECOND, "EXPIRED_CONTROL"),
        (
            control(action="SET_LIMIT", limit_name="max_leverage", limit_value=2.0),
            None,
            "INVALID_CONTROL",
        ),
        (
            control(
                action="SET_LIMIT",
                scope="INSTRUMENT",
                target="AAPL",
                limit_name="concentration",
                limit_value=0.1,
            ),
            None,
            "INVALID_CONTROL",
        ),
    ],
    ids=[
        "bad-signature",
        "unknown-key",
        "unsigned",
        "expired",
        "unknown-limit",
        "instrument-limit",
    ],
)
def test_gate_when_command_unusable_dead_letters_with_code(cmd, kafka_ts, code):
    assert [dlq_code(o) for o in through(gate(), inbound(cmd, kafka_ts))] == [code]


@pytest.mark.parametrize(
    "name", ["concentration", "max_order_notional", "max_adv_share", "price_collar"]
)
def test_gate_when_set_limit_names_a_known_limit_passes(name):
    cmd = control(action="SET_LIMIT", scope="GLOBAL", limit_name=name, limit_value=0.2)

    assert [dlq_code(o) for o in through(gate(), inbound(cmd))] == [None]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_validate_or_gate_when_set_limit_value_is_not_a_usable_limit_rejects(value):
    cmd = control(
        action="SET_LIMIT", scope="PORTFOLIO", target="PF-1", limit_name="concentration"
    ) | {"limit_value": value}
    cmd["signature"] = sign(cmd, KEY)

    try:
        validate("ControlCommand", cmd)
    except InvalidRecord:
        return  # rejected at validation: fine
    assert [dlq_code(o) for o in through(gate(), inbound(cmd))] == ["INVALID_CONTROL"]
