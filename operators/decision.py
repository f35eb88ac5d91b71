"""The answer to one proposal: every check, the allowed quantity, the score."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from operators.checks import (
    Cap,
    Reason,
    check_adv,
    check_concentration,
    check_order_notional,
    check_price_collar,
    check_trading_state,
    round_to_lot,
)
from operators.config import EngineConfig, Limits
from operators.records import MarketView, Record

# Score weights (points at full utilisation); they sum to 100.
WEIGHTS = {"concentration": 35.0, "order_size": 25.0, "volatility": 20.0, "liquidity": 20.0}
VOL_FULL_SCALE = 0.05
"""Daily volatility that earns the full volatility weight."""
BANDS = ((75.0, "CRITICAL"), (50.0, "HIGH"), (25.0, "MEDIUM"), (0.0, "LOW"))


@dataclass(frozen=True)
class BookView:
    """A portfolio as of the proposal's ts_event."""

    position: float
    """Position in the proposal's instrument, in units."""
    value: float
    """Portfolio value: cash plus marked positions."""
    exposures: dict[str, tuple[float, float]] = field(default_factory=dict)
    """instrument_id -> (signed notional, daily volatility) of every position."""


def band(score: float) -> str:
    """Score band: LOW < 25 <= MEDIUM < 50 <= HIGH < 75 <= CRITICAL."""
    return next(name for floor, name in BANDS if score >= floor)


def undiversified_var(exposures: dict[str, tuple[float, float]], z: float) -> float:
    """1-day parametric VaR summing each position's stand-alone VaR (an upper bound)."""
    return z * math.fsum(abs(notional) * vol for notional, vol in exposures.values())


def _factor(name: str, utilisation: float) -> Record:
    u = min(1.0, max(0.0, utilisation))
    return {
        "name": name,
        "value": round(utilisation, 6),
        "contribution": round(WEIGHTS[name] * u, 4),
    }


def _ratio(value: float, limit: float) -> float:
    """Utilisation of a limit (a vanishing limit counts as fully used)."""
    return value / limit if limit > 0 else 1.0


def _data_problem(proposal: Record, market: MarketView, config: EngineConfig) -> Reason | None:
    """Why the proposal cannot be assessed (fail safe), or None."""
    if market.instrument is None:
        return Reason("UNKNOWN_INSTRUMENT", f"no reference data for {proposal['instrument_id']!r}")
    if market.last is None or market.ts_last is None:
        return Reason("NO_MARKET_DATA", "no tick at or before the proposal")
    age = proposal["ts_event"] - market.ts_last
    if age > config.stale_after_ns:
        return Reason(
            "STALE_MARKET_DATA",
            f"last tick is {age / 1e9:.1f}s old",
            age / 1e9,
            config.stale_after_ns / 1e9,
        )
    return None


def _assess(
    proposal: Record,
    market: MarketView,
    book: BookView,
    state: str,
    limits: Limits,
    config: EngineConfig,
) -> tuple[list[Cap], list[Record], float | None, float | None, float | None]:
    """Caps of every check, score factors, price and VaR before/after."""
    qty = proposal["quantity"]
    sign = 1 if proposal["side"] == "BUY" else -1
    state_cap = check_trading_state(qty, state, sign, book.position)
    caps = [state_cap] if state_cap is not None else []
    problem = _data_problem(proposal, market, config)
    if problem is not None:
        caps.append(Cap(0.0, problem))
        factors = [{"name": "data_quality", "value": 1.0, "contribution": 100.0}]
        return caps, factors, market.last, None, None

    inst = market.instrument
    assert inst is not None and market.last is not None
    price = proposal["limit_price"] or market.last
    unit_notional = price * inst["face_value"]
    caps.append(check_order_notional(qty, unit_notional, limits.max_order_notional))
    caps.append(
        check_concentration(
            qty, sign, book.position, unit_notional, book.value, limits.concentration
        )
    )
    for cap in (
        check_adv(qty, inst["adv"], limits.max_adv_share),
        check_price_collar(proposal["limit_price"], market.last, limits.price_collar),
    ):
        if cap is not None:
            caps.append(cap)

    vol = market.features.get("daily_vol", math.nan)
    vol = 0.0 if math.isnan(vol) else vol
    exposures = dict(book.exposures)
    notional_before = exposures.get(proposal["instrument_id"], (0.0, vol))[0]
    var_before = undiversified_var(exposures, config.var_confidence_z)
    exposures[proposal["instrument_id"]] = (notional_before + sign * qty * unit_notional, vol)
    var_after = undiversified_var(exposures, config.var_confidence_z)

    weight_after = _ratio(abs(book.position + sign * qty) * unit_notional, book.value)
    adv_cap = inst["adv"] * limits.max_adv_share
    factors = [
        _factor("concentration", _ratio(weight_after, limits.concentration)),
        _factor("order_size", _ratio(qty * unit_notional, limits.max_order_notional)),
        _factor("volatility", vol / VOL_FULL_SCALE),
        _factor("liquidity", _ratio(qty, adv_cap) if inst["adv"] > 0 else 0.5),
    ]
    return caps, factors, price, var_before, var_after


def decide(
    proposal: Record,
    market: MarketView,
    book: BookView,
    state: str,
    limits: Limits,
    config: EngineConfig,
) -> Record:
    """The RiskScore fields that depend on data only (no wall-clock fields, no source)."""
    caps, factors, price, var_before, var_after = _assess(
        proposal, market, book, state, limits, config
    )
    requested = proposal["quantity"]
    lot = market.instrument["lot_size"] if market.instrument else 1.0
    allowed = round_to_lot(min([requested, *(c.max_quantity for c in caps)]), lot)
    reasons = [c.reason for c in caps if c.reason is not None]
    if allowed < requested and not any(r.hard for r in reasons):
        reasons.append(
            Reason("LOT_SIZE", f"quantity rounded down to lots of {lot:g}", requested, allowed)
        )
    decision = "APPROVE" if allowed >= requested else "REDUCE" if allowed > 0 else "REJECT"
    score = round(sum(f["contribution"] for f in factors), 4)
    features = {k: v for k, v in market.features.items() if math.isfinite(v)}
    if market.last is not None:
        features["last"] = market.last
    return {
        "proposal_id": proposal["proposal_id"],
        "portfolio_id": proposal["portfolio_id"],
        "instrument_id": proposal["instrument_id"],
        "side": proposal["side"],
        "requested_quantity": requested,
        "decision": decision,
        "allowed_quantity": allowed,
        "score": score,
        "band": band(score),
        "reasons": [r.record() for r in reasons],
        "factors": factors,
        "trading_state": state,
        "regime": None,
        "var_before": var_before,
        "var_after": var_after,
        "price": price,
        "features": features,
        "model_versions": {},
        "ts_event": proposal["ts_event"],
    }
