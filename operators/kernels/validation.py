"""Input checks: each returns ``None`` when the value is usable, otherwise a reason code.

Rejected values never reach kernel state; the caller counts them and dead-letters the record.
"""

from __future__ import annotations

import math
import operator

INVALID_PRICE = "INVALID_PRICE"
INVALID_SIZE = "INVALID_SIZE"
CROSSED_QUOTE = "CROSSED_QUOTE"
INVALID_YIELD = "INVALID_YIELD"
INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
LATE = "LATE"

REASON_CODES = (INVALID_PRICE, INVALID_SIZE, CROSSED_QUOTE, INVALID_YIELD, INVALID_TIMESTAMP, LATE)


def check_price(x: float) -> str | None:
    """Return ``INVALID_PRICE`` unless ``x`` is a finite number greater than zero."""
    try:
        ok = math.isfinite(x) and x > 0.0
    except TypeError:
        return INVALID_PRICE
    return None if ok else INVALID_PRICE


def check_size(x: float) -> str | None:
    """Return ``INVALID_SIZE`` unless ``x`` is finite and not negative (zero is a quote update)."""
    try:
        ok = math.isfinite(x) and x >= 0.0
    except TypeError:
        return INVALID_SIZE
    return None if ok else INVALID_SIZE


def check_quote(bid: float, ask: float) -> str | None:
    """Return ``INVALID_PRICE`` for a bad bid or ask, ``CROSSED_QUOTE`` when ``bid > ask``."""
    reason = check_price(bid) or check_price(ask)
    if reason is not None:
        return reason
    return CROSSED_QUOTE if bid > ask else None


def check_yield(y: float, frequency: int = 1) -> str | None:
    """Return ``INVALID_YIELD`` unless ``y`` is finite and ``1 + y / frequency > 0``."""
    try:
        ok = math.isfinite(y) and 1.0 + y / frequency > 0.0
    except (TypeError, ZeroDivisionError):
        return INVALID_YIELD
    return None if ok else INVALID_YIELD


def check_tick(
    ts_ns: int, bid: float, ask: float, last: float, size: float, yld: float | None = None
) -> str | None:
    """Run every tick check; return the first reason code found, or ``None``."""
    try:
        operator.index(ts_ns)
    except TypeError:
        return INVALID_TIMESTAMP
    return (
        check_price(last)
        or check_quote(bid, ask)
        or check_size(size)
        or (check_yield(yld) if yld is not None else None)
    )
