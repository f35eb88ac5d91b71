"""Semantic checks on decoded input records: each returns a reason or None."""

from __future__ import annotations

import math
from collections.abc import Callable

from operators.errors import InvalidRecord
from operators.records import Record

MAX_ID_LEN = 256
INF = math.inf
MIN_VALUE = 1e-9
"""Smallest price, quantity, lot or face value accepted (a ratio of two prices must not
underflow to 0 before its logarithm is taken)."""
MAX_VALUE = 1e15
"""Largest price, quantity, lot, face value or ADV accepted: products such as quantity x
price x face value, and their squares in VaR, then stay finite (an overflow to inf turns a
book's cash into inf - inf)."""
# Event times outside [1980-01-01, 2100-01-01) are rejected as absurd.
MIN_TS_NS = 315_532_800 * 1_000_000_000
MAX_TS_NS = 4_102_444_800 * 1_000_000_000
COUPON_FREQUENCIES = (1, 2, 4, 12)
"""Coupons per year the bond analytics support (operators/kernels/fixed_income.BondSpec)."""
LIMIT_RANGE = (1e-9, 1e18)
"""SET_LIMIT values the decision can act on: smaller ones truncate to a zero order window,
larger ones overflow the VaR-budget arithmetic."""


def _positive(record: Record, name: str, code: str) -> None:
    value = record.get(name)
    if value is None or not MIN_VALUE <= value <= MAX_VALUE:  # NaN fails too
        raise InvalidRecord(
            code, f"{name} must be a number in [{MIN_VALUE:g}, {MAX_VALUE:g}], got {value!r}"
        )


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
    m = MAX_VALUE
    lo = MIN_VALUE
    if 0 < len(iid) <= MAX_ID_LEN and lo <= bid <= ask <= m and lo <= last <= m and 0 <= size <= m:
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
    if not 0 <= size <= MAX_VALUE:
        raise InvalidRecord("INVALID_QUANTITY", f"size must be in [0, {MAX_VALUE:g}], got {size!r}")
    _finite_or_none(r, "yield", "INVALID_YIELD")


def _instrument(r: Record) -> None:
    _ids(r, "instrument_id", "symbol")
    _positive(r, "lot_size", "INVALID_LOT_SIZE")
    _positive(r, "face_value", "INVALID_FACE_VALUE")
    adv = r["adv"]
    if not 0 <= adv <= MAX_VALUE:
        raise InvalidRecord("INVALID_ADV", f"adv must be in [0, {MAX_VALUE:g}], got {adv!r}")
    coupon = r.get("coupon")
    if coupon is not None and not (math.isfinite(coupon) and coupon >= 0):
        raise InvalidRecord("INVALID_COUPON", f"coupon must be finite and >= 0, got {coupon!r}")
    freq = r.get("coupon_frequency")
    if freq is not None and freq not in COUPON_FREQUENCIES:
        raise InvalidRecord(
            "INVALID_COUPON_FREQUENCY",
            f"coupon_frequency must be one of {COUPON_FREQUENCIES}, got {freq!r}",
        )


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
    if r["action"] != "SET_LIMIT":
        return
    value = r["limit_value"]
    if r["limit_name"] is None or value is None:
        raise InvalidRecord("INVALID_CONTROL", "SET_LIMIT needs limit_name and limit_value")
    if not LIMIT_RANGE[0] <= value <= LIMIT_RANGE[1]:  # NaN fails too
        raise InvalidRecord(
            "INVALID_CONTROL", f"SET_LIMIT value must be within {LIMIT_RANGE}, got {value!r}"
        )


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
