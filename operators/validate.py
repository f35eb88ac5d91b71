"""Semantic checks on decoded input records: each returns a reason or None."""

from __future__ import annotations

import math
from collections.abc import Callable

from operators.errors import InvalidRecord
from operators.records import Record

MAX_ID_LEN = 256
INF = math.inf
# Event times outside [1980-01-01, 2100-01-01) are rejected as absurd.
MIN_TS_NS = 315_532_800 * 1_000_000_000
MAX_TS_NS = 4_102_444_800 * 1_000_000_000


def _positive(record: Record, name: str, code: str) -> None:
    value = record.get(name)
    if value is None or not math.isfinite(value) or value <= 0:
        raise InvalidRecord(code, f"{name} must be a finite number > 0, got {value!r}")


def _finite_or_none(record: Record, name: str, code: str) -> None:
    value = record.get(name)
    if value is not None and not math.isfinite(value):
        raise InvalidRecord(code, f"{name} must be finite, got {value!r}")


def _ids(record: Record, *names: str) -> None:
    for name in names:
        value = record.get(name)
        if not value or len(value) > MAX_ID_LEN:
            raise InvalidRecord(
                "INVALID_ID", f"{name} must be 1-{MAX_ID_LEN} characters, got {value!r:.80}"
            )


def _ts(record: Record) -> None:
    ts = record["ts_event"]
    if not MIN_TS_NS <= ts < MAX_TS_NS:
        raise InvalidRecord("INVALID_TIMESTAMP", f"ts_event {ts} is outside 1980-2100")


def _tick(r: Record) -> None:
    iid, bid, ask, last, size = r["instrument_id"], r["bid"], r["ask"], r["last"], r["size"]
    # Fast path for the common case: one chain of comparisons (NaN fails every one of them).
    if 0 < len(iid) <= MAX_ID_LEN and 0 < bid <= ask < INF and 0 < last < INF and 0 <= size < INF:
        yld = r.get("yield")
        if yld is None or -INF < yld < INF:
            return
    _tick_reason(r)


def _tick_reason(r: Record) -> None:
    """The detailed checks, run only to name what is wrong with a tick."""
    _ids(r, "instrument_id")
    for name in ("bid", "ask", "last"):
        _positive(r, name, "INVALID_PRICE")
    if r["bid"] > r["ask"]:
        raise InvalidRecord("CROSSED_QUOTE", f"bid {r['bid']} > ask {r['ask']}")
    size = r["size"]
    if not math.isfinite(size) or size < 0:
        raise InvalidRecord("INVALID_QUANTITY", f"size must be finite and >= 0, got {size!r}")
    _finite_or_none(r, "yield", "INVALID_YIELD")


def _instrument(r: Record) -> None:
    _ids(r, "instrument_id", "symbol")
    _positive(r, "lot_size", "INVALID_LOT_SIZE")
    _positive(r, "face_value", "INVALID_FACE_VALUE")
    adv = r["adv"]
    if not math.isfinite(adv) or adv < 0:
        raise InvalidRecord("INVALID_ADV", f"adv must be finite and >= 0, got {adv!r}")
    _finite_or_none(r, "coupon", "INVALID_COUPON")


def _proposal(r: Record) -> None:
    _ids(r, "proposal_id", "portfolio_id", "instrument_id")
    _positive(r, "quantity", "INVALID_QUANTITY")
    if r.get("limit_price") is not None:
        _positive(r, "limit_price", "INVALID_PRICE")


def _execution(r: Record) -> None:
    _ids(r, "execution_id", "portfolio_id", "instrument_id")
    _positive(r, "quantity", "INVALID_QUANTITY")
    _positive(r, "price", "INVALID_PRICE")


def _control(r: Record) -> None:
    _ids(r, "command_id", "nonce")
    if r["scope"] != "GLOBAL" and not r["target"]:
        raise InvalidRecord("INVALID_CONTROL", f"{r['scope']} scope needs a target")
    if r["action"] == "SET_LIMIT" and (r["limit_name"] is None or r["limit_value"] is None):
        raise InvalidRecord("INVALID_CONTROL", "SET_LIMIT needs limit_name and limit_value")


_RULES: dict[str, Callable[[Record], None]] = {
    "MarketTick": _tick,
    "Instrument": _instrument,
    "TradeProposal": _proposal,
    "Execution": _execution,
    "ControlCommand": _control,
}


def validate(kind: str, record: Record) -> None:
    """Raise InvalidRecord (with a reason code) when ``record`` breaks a rule of its kind."""
    _ts(record)
    _RULES[kind](record)
