"""The answer to one proposal: every check, the allowed quantity, the score."""

from __future__ import annotations

import math
from collections.abc import Mapping
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
from operators.config import NS, EngineConfig, Limits
from operators.mitigation import hedge_suggestion, suggestions
from operators.records import MarketView, Record
from operators.risk_model import (
    EwmaCovariance,
    TradeRisk,
    check_gross_notional,
    check_net_notional,
    check_order_rate,
    check_var_budget,
    trade_risk,
)

# Score weights (points at full utilisation); they sum to 100.
WEIGHTS = {"concentration": 35.0, "order_size": 25.0, "volatility": 20.0, "liquidity": 20.0}
VOL_FULL_SCALE = 0.05
"""Daily volatility that earns the full volatility weight."""
BANDS = ((75.0, "CRITICAL"), (50.0, "HIGH"), (25.0, "MEDIUM"), (0.0, "LOW"))
MAX_VAR_BUDGET = 1e150
"""VaR budgets above this count as unlimited (squaring them in the closed form overflows)."""
MAX_SPLIT_DAYS = 2**31 - 1
"""Largest ``days`` of a SPLIT suggestion (RiskScore's Avro int)."""


@dataclass(frozen=True)
class RiskContext:
    """The shard's risk state for one decision: covariance model and order count."""

    model: EwmaCovariance | None = None
    orders_in_window: int = 0
    vols: Mapping[str, float] | None = None
    """Forecast daily volatilities by instrument (from the volatility model), when known."""
    regime: str | None = None
    model_versions: Mapping[str, str] = field(default_factory=dict)
    model_status: str = ""
    """Status of the regime model at the proposal's time (``unavailable``, ... ; "" unknown)."""


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


@dataclass
class Assessment:
    """What the checks found: caps, score factors, the price used, and the book's risk."""

    caps: list[Cap]
    factors: list[Record]
    price: float | None = None
    unit_notional: float = 0.0
    risk: TradeRisk | None = None
    exposures: dict[str, float] = field(default_factory=dict)
    vols: dict[str, float] = field(default_factory=dict)


def _book_risk(
    proposal: Record, book: BookView, unit_notional: float, vol: float, limits: Limits,
    context: RiskContext, config: EngineConfig,
) -> tuple[TradeRisk, dict[str, float], dict[str, float], Reason | None]:  # fmt: skip
    """Portfolio VaR/CVaR before and after, marginal VaR and the VaR-budget cap.

    Instruments without a volatility yet (warm-up) get a conservative proxy, and the
    decision says so with a soft reason.
    """
    own = proposal["instrument_id"]
    exposures = {k: notional for k, (notional, _) in book.exposures.items()}
    vols = {k: v for k, (_, v) in book.exposures.items() if v > 0}
    if vol > 0:
        vols[own] = vol
    proxied = sorted({*exposures, own} - set(vols))
    for inst in proxied:
        vols[inst] = config.proxy_daily_vol
    model = context.model or EwmaCovariance(lam=config.ewma_lambda)
    sign = 1 if proposal["side"] == "BUY" else -1
    risk = trade_risk(
        model, exposures, own, unit_notional, sign, proposal["quantity"],
        var_budget=limits.var_budget if limits.var_budget <= MAX_VAR_BUDGET else math.inf,
        fallback_vols=vols, vols=context.vols, historical=True,
    )  # fmt: skip
    warning = None
    if proxied:
        warning = Reason(
            "RISK_MODEL_WARMING",
            f"no volatility yet for {', '.join(proxied)}: {config.proxy_daily_vol:.0%} daily used",
            len(proxied),
            None,
            hard=False,
        )
    return risk, exposures, vols, warning


def _assess(
    proposal: Record,
    market: MarketView,
    book: BookView,
    state: str,
    limits: Limits,
    config: EngineConfig,
    context: RiskContext,
) -> Assessment:
    """Every check's cap and reason, the score factors and the risk figures."""
    qty = proposal["quantity"]
    sign = 1 if proposal["side"] == "BUY" else -1
    state_cap = check_trading_state(qty, state, sign, book.position)
    caps = [state_cap] if state_cap is not None else []
    order_rate = check_order_rate(
        context.orders_in_window, int(limits.max_orders), int(limits.order_window_s * NS)
    )
    if order_rate is not None:
        caps.append(order_rate)
    problem = _data_problem(proposal, market, config)
    if problem is not None:
        caps.append(Cap(0.0, problem))
        factors = [{"name": "data_quality", "value": 1.0, "contribution": 100.0}]
        return Assessment(caps, factors, market.last)

    inst = market.instrument
    assert inst is not None and market.last is not None
    price = proposal["limit_price"] or market.last
    unit_notional = price * inst["face_value"]
    vol = market.features.get("daily_vol", math.nan)
    vol = 0.0 if math.isnan(vol) else vol
    risk, exposures, vols, warming = _book_risk(
        proposal, book, unit_notional, vol, limits, context, config
    )
    own = proposal["instrument_id"]
    caps += [
        check_order_notional(qty, unit_notional, limits.max_order_notional),
        check_concentration(
            qty, sign, book.position, unit_notional, book.value, limits.concentration
        ),
        check_var_budget(qty, risk, limits.var_budget),
        check_gross_notional(qty, sign, exposures, own, unit_notional, limits.max_gross_notional),
        check_net_notional(qty, sign, exposures, own, unit_notional, limits.max_net_notional),
    ]
    model_failed = None
    if context.model_status in ("unavailable", "inference_failed"):
        model_failed = Reason(
            "MODEL_UNAVAILABLE",
            f"regime/volatility model {context.model_status}: EWMA risk figures used",
            hard=False,
        )
    for cap in (
        check_adv(qty, inst["adv"], limits.max_adv_share),
        check_price_collar(proposal["limit_price"], market.last, limits.price_collar),
        Cap(math.inf, warming) if warming else None,
        Cap(math.inf, model_failed) if model_failed else None,
    ):
        if cap is not None:
            caps.append(cap)

    weight_after = _ratio(abs(book.position + sign * qty) * unit_notional, book.value)
    adv_cap = inst["adv"] * limits.max_adv_share
    factors = [
        _factor("concentration", _ratio(weight_after, limits.concentration)),
        _factor("order_size", _ratio(qty * unit_notional, limits.max_order_notional)),
        _factor("volatility", vol / VOL_FULL_SCALE),
        _factor("liquidity", _ratio(qty, adv_cap) if inst["adv"] > 0 else 0.5),
    ]
    return Assessment(caps, factors, price, unit_notional, risk, exposures, vols)


def _suggest(
    proposal: Record, market: MarketView, a: Assessment, allowed: float, limits: Limits,
    context: RiskContext,
) -> list[Record]:  # fmt: skip
    """Reduce to X, split over N days at the ADV limit, hedge with the most correlated."""
    requested = proposal["quantity"]
    if allowed >= requested or market.instrument is None:
        return []
    inst = market.instrument
    hedge = None
    if a.risk is not None and context.model is not None and a.unit_notional > 0:
        own = proposal["instrument_id"]
        sign = 1 if proposal["side"] == "BUY" else -1
        trade_cash = sign * requested * a.unit_notional
        after = dict(a.exposures)
        after[own] = after.get(own, 0.0) + trade_cash
        hedge = hedge_suggestion(
            context.model, after, own, trade_cash, fallback_vols=a.vols, vols=context.vols
        )
    found = suggestions(
        requested, allowed, adv=inst["adv"], adv_share=limits.max_adv_share,
        lot=inst["lot_size"], hedge=hedge,
    )  # fmt: skip
    records = [s.record() for s in found]
    # a split over more days than the schema's int holds (a tiny ADV) is no advice at all
    return [r for r in records if (r.get("days") or 0) <= MAX_SPLIT_DAYS]


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def decide(
    proposal: Record,
    market: MarketView,
    book: BookView,
    state: str,
    limits: Limits,
    config: EngineConfig,
    context: RiskContext | None = None,
) -> Record:
    """The RiskScore fields that depend on data only (no wall-clock fields, no source)."""
    context = context or RiskContext()
    a = _assess(proposal, market, book, state, limits, config, context)
    requested = proposal["quantity"]
    lot = market.instrument["lot_size"] if market.instrument else 1.0
    allowed = round_to_lot(min([requested, *(c.max_quantity for c in a.caps)]), lot)
    reasons = [c.reason for c in a.caps if c.reason is not None]
    if allowed < requested and not any(r.hard for r in reasons):
        reasons.append(
            Reason("LOT_SIZE", f"quantity rounded down to lots of {lot:g}", requested, allowed)
        )
    decision = "APPROVE" if allowed >= requested else "REDUCE" if allowed > 0 else "REJECT"
    score = round(sum(f["contribution"] for f in a.factors), 4)
    features = {k: v for k, v in market.features.items() if math.isfinite(v)}
    if market.last is not None:
        features["last"] = market.last
    risk = a.risk
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
        "suggestions": _suggest(proposal, market, a, allowed, limits, context),
        "factors": a.factors,
        "trading_state": state,
        "regime": context.regime,
        "var_before": _finite(risk.var_before) if risk else None,
        "var_after": _finite(risk.var_after) if risk else None,
        "cvar_before": _finite(risk.cvar_before) if risk else None,
        "cvar_after": _finite(risk.cvar_after) if risk else None,
        "marginal_var": _finite(risk.marginal_var) if risk else None,
        "hist_var_before": _finite(risk.hist_var_before) if risk else None,
        "hist_var_after": _finite(risk.hist_var_after) if risk else None,
        "hist_cvar_before": _finite(risk.hist_cvar_before) if risk else None,
        "hist_cvar_after": _finite(risk.hist_cvar_after) if risk else None,
        "price": a.price,
        "features": features,
        "model_versions": dict(context.model_versions),
        "ts_event": proposal["ts_event"],
    }
