"""Pre-trade checks. Each returns a Reason (and the quantity cap it implies) or None."""

from __future__ import annotations

import math
from dataclasses import dataclass

from operators.records import Record


@dataclass(frozen=True, slots=True)
class Reason:
    """A check that fired: code, message, the measured value and the limit."""

    code: str
    message: str
    value: float | None = None
    limit: float | None = None
    hard: bool = True

    def record(self) -> Record:
        """As a RiskScore ``Reason`` record."""
        return {
            "code": self.code,
            "message": self.message,
            "value": self.value,
            "limit": self.limit,
            "hard": self.hard,
        }


@dataclass(frozen=True, slots=True)
class Cap:
    """A check's verdict: the largest quantity it allows, and its reason when it binds."""

    max_quantity: float
    reason: Reason | None


STATE_ORDER = {"ACTIVE": 0, "REDUCE_ONLY": 1, "HALTED": 2}


def check_trading_state(qty: float, state: str, side_sign: int, position: float) -> Cap | None:
    """HALTED allows nothing; REDUCE_ONLY allows only what shrinks the position."""
    if state == "HALTED":
        return Cap(0.0, Reason("TRADING_HALTED", "trading is halted in scope"))
    if state == "REDUCE_ONLY":
        cap = max(0.0, -side_sign * position)  # > 0 when the trade shrinks the position
        if qty <= cap:
            return Cap(cap, None)
        why = (
            f"reduce-only: at most {cap:g} reduces the position"
            if cap
            else "reduce-only: the trade would increase the position"
        )
        return Cap(cap, Reason("REDUCE_ONLY", why, qty, cap))
    return None


def check_order_notional(qty: float, unit_notional: float, limit: float) -> Cap:
    """Order notional (quantity x price x unit value) must not exceed ``limit``."""
    notional = qty * unit_notional
    cap = limit / unit_notional if unit_notional > 0 else math.inf  # a price x face underflow
    if notional <= limit:
        return Cap(cap, None)
    return Cap(
        cap,
        Reason(
            "MAX_ORDER_NOTIONAL",
            f"order notional {notional:,.0f} exceeds {limit:,.0f}",
            notional,
            limit,
        ),
    )


def check_concentration(
    qty: float, side_sign: int, position: float, unit_notional: float, value: float, limit: float
) -> Cap:
    """|position after| x price must stay within ``limit`` x portfolio value.

    Closed form: with cap = limit x value / unit notional, the allowed quantity on this
    side is ``cap - side_sign * position``.
    """
    if value <= 0:
        return Cap(
            0.0,
            Reason(
                "NON_POSITIVE_PORTFOLIO_VALUE",
                f"portfolio value {value:,.0f} is not > 0",
                value,
                0.0,
            ),
        )
    cap_units = limit * value / unit_notional if unit_notional > 0 else math.inf
    allowed = max(0.0, cap_units - side_sign * position)
    weight = abs(position + side_sign * qty) * unit_notional / value
    if qty <= allowed:
        return Cap(allowed, None)
    return Cap(
        allowed,
        Reason(
            "CONCENTRATION",
            f"position would be {weight:.1%} of portfolio value, limit {limit:.0%}",
            weight,
            limit,
        ),
    )


def check_adv(qty: float, adv: float, share: float) -> Cap | None:
    """The order must not exceed ``share`` of average daily volume (skipped when ADV unknown)."""
    if adv <= 0:  # unknown ADV: nothing to check against
        return None
    cap = share * adv
    if qty <= cap:
        return Cap(cap, None)
    return Cap(
        cap,
        Reason(
            "ADV_SHARE", f"order is {qty / adv:.1%} of ADV, limit {share:.0%}", qty / adv, share
        ),
    )


def check_price_collar(limit_price: float | None, last: float, collar: float) -> Cap | None:
    """A limit price more than ``collar`` away from the last trade is a fat finger."""
    if limit_price is None:
        return None
    distance = abs(limit_price - last) / last
    if distance <= collar * (1.0 + 1e-12):  # exactly at the collar is allowed
        return None
    return Cap(
        0.0,
        Reason(
            "PRICE_COLLAR",
            f"limit price {limit_price:g} is {distance:.1%} from last {last:g}",
            distance,
            collar,
        ),
    )


def round_to_lot(qty: float, lot: float) -> float:
    """Largest whole number of lots not above ``qty`` (tolerant of float noise)."""
    if qty <= 0 or not math.isfinite(qty):
        return 0.0
    ratio = qty / lot
    if not math.isfinite(ratio):  # a lot so small next to qty that qty is whole lots
        return qty
    lots = math.floor(ratio + 1e-9)
    return min(lots * lot, qty)  # lots x lot may land one float step above a whole request
