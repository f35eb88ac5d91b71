"""Signing and sending control commands (``riskstream control ...``)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from dataflows.settings import Settings
from operators.control import sign
from operators.errors import ConfigError

ACTIONS = {
    "halt": "HALT",
    "reduce-only": "REDUCE_ONLY",
    "resume": "RESUME",
    "set-limit": "SET_LIMIT",
}


def signed_command(
    settings: Settings,
    action: str,
    scope: str = "GLOBAL",
    target: str = "",
    *,
    issuer: str = "riskstream-cli",
    reason: str = "",
    limit_name: str | None = None,
    limit_value: float | None = None,
    ts_event: int | None = None,
    key_id: str | None = None,
) -> dict[str, Any]:
    """A ControlCommand record signed with key ``key_id`` (default: ``control_key_id``).

    During a key rotation both ids are in ``control_keys``; ``key_id`` picks the one to
    sign with (``RISKSTREAM_CONTROL_KEY_ID`` on the command line).
    """
    key_id = settings.control_key_id if key_id is None else key_id
    key = settings.control_keys.get(key_id)
    if key is None:
        known = ", ".join(repr(k) for k in sorted(settings.control_keys)) or "none"
        raise ConfigError(
            f"no control key {key_id!r} (known key ids: {known}): set RISKSTREAM_CONTROL_KEYS"
            ' to a JSON object of key id -> secret, e.g. {"default": "..."}, and'
            " RISKSTREAM_CONTROL_KEY_ID to the id to sign with"
        )
    if scope != "GLOBAL" and not target:
        raise ConfigError(f"scope {scope} needs --target")
    command: dict[str, Any] = {
        "command_id": f"cmd-{secrets.token_hex(8)}",
        "action": action,
        "scope": scope,
        "target": "" if scope == "GLOBAL" else target,
        "limit_name": limit_name,
        "limit_value": limit_value,
        "issuer": issuer,
        "reason": reason,
        "nonce": secrets.token_hex(16),
        "key_id": key_id,
        "signature": "",
        "ts_event": ts_event if ts_event is not None else int(datetime.now(UTC).timestamp() * 1e9),
    }
    command["signature"] = sign(command, key.get_secret_value().encode())
    return command
