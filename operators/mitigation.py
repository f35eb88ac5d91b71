"""Mitigation suggestions for a proposal that does not pass whole: reduce, split, hedge.

* ``REDUCE``: trade the allowed quantity instead (when it is above 0 and below the request).
* ``SPLIT``: the share-of-ADV limit binds: trade ``per_day = lot-rounded adv_share * adv``
  a day over ``N = ceil(requested / per_day)`` days.
* ``HEDGE``: the instrument ``h`` of the universe whose return is most correlated, in
  absolute value, with the proposal's instrument ``i`` (largest ``|rho_ih|``: the single
  instrument that removes the most variance of the trade, ``rho^2`` of it). The
  minimum-variance hedge of a trade of signed cash ``x`` is ``-beta x`` in ``h``, with
  ``beta = cov(i, h) / var(h) = rho s_i / s_h``: the opposite side when ``rho > 0``, the same
  side when ``rho < 0``. It is suggested only when it lowers the VaR of the book after the
  trade (a book already short ``h`` may not want more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from operators.checks import round_to_lot
from operators.records import Record
from operators.risk_model import EwmaCovariance, book_moments_for, z_score


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One way to get the trade through: what to do and the numbers behind it."""

    kind: str
    """REDUCE, SPLIT or HEDGE."""
    message: str
    quantity: float | None = None
    """REDUCE: the quantity to trade; SPLIT: per day; HEDGE: units of the hedge (or None)."""
    instrument_id: str | None = None
    side: str | None = None
    days: int | None = None
    correlation: float | None = None
    hedge_ratio: float | None = None
    notional: float | None = None
    """HEDGE: signed cash of the hedge."""
    var_after: float | None = None
    """HEDGE: VaR of the book after the trade and the hedge."""

    def record(self) -> Record:
        """As a plain record (fields that do not apply are None)."""
        return {
            "kind": self.kind,
            "message": self.message,
            "quantity": self.quantity,
            "instrument_id": self.instrument_id,
            "side": self.side,
            "days": self.days,
            "correlation": self.correlation,
            "hedge_ratio": self.hedge_ratio,
            "notional": self.notional,
            "var_after": self.var_after,
        }


def reduce_to(requested: float, allowed: float) -> Suggestion | None:
    """``REDUCE`` to the allowed quantity when it is above 0 and below the request."""
    if not 0.0 < allowed < requested:
        return None
    return Suggestion("REDUCE", f"reduce to {allowed:g}", quantity=allowed)


def split_over_days(
    quantity: float, adv: float, adv_share: float, lot: float = 1.0
) -> Suggestion | None:
    """``SPLIT`` a quantity above the daily ADV limit into ``ceil(quantity / per_day)`` days."""
    if adv <= 0 or adv_share <= 0:
        return None
    per_day = round_to_lot(adv_share * adv, lot)
    if per_day <= 0 or quantity <= per_day:
        return None
    days = math.ceil(quantity / per_day - 1e-9)
    why = f"split over {days} days at {per_day:g} a day ({adv_share:.0%} of ADV {adv:g})"
    return Suggestion("SPLIT", why, quantity=per_day, days=days)


@dataclass(frozen=True, slots=True)
class Hedge:
    """The minimum-variance single-instrument hedge of a trade."""

    instrument_id: str
    correlation: float
    """``rho(i, h)``."""
    ratio: float
    """``beta = cov(i, h) / var(h)``: hedge cash per unit of trade cash, opposite sign."""
    notional: float
    """Signed cash of the hedge, ``-beta x``."""


def _pick(rho: npt.NDArray[np.float64], min_abs_corr: float) -> int | None:
    """Position of the largest ``|rho|`` (ties: the first), or None at or below the floor."""
    a = [abs(x) if math.isfinite(x) else 0.0 for x in rho.tolist()]
    if not a:
        return None
    j = max(range(len(a)), key=a.__getitem__)
    return j if a[j] > min_abs_corr else None


def best_hedge(
    ids: Sequence[str],
    cov: npt.ArrayLike,
    i: int,
    trade_cash: float,
    exclude: Iterable[str] = (),
    min_abs_corr: float = 0.0,
) -> Hedge | None:
    """Most correlated hedge of a trade of signed cash ``trade_cash`` in ``ids[i]``.

    ``cov``: covariance over ``ids``; candidates are every other instrument (not in
    ``exclude``) with a positive variance; None when no ``|rho|`` exceeds ``min_abs_corr``;
    ties go to the first in ``ids`` order.
    """
    c = np.asarray(cov, dtype=np.float64)
    skip = set(exclude) | {ids[i]}
    var = np.diagonal(c)
    if not (math.isfinite(var[i]) and var[i] > 0):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = c[i] / np.sqrt(var[i] * var)
    skipped = np.array([k in skip for k in ids], dtype=np.bool_) | ~(var > 0)
    rho = np.where(skipped, np.nan, rho)
    j = _pick(rho, min_abs_corr)
    if j is None:
        return None
    beta = float(c[i, j] / var[j])
    return Hedge(ids[j], float(rho[j]), beta, -beta * trade_cash)


def model_hedge(
    model: EwmaCovariance,
    instrument_id: str,
    trade_cash: float,
    *,
    candidates: Iterable[str] | None = None,
    vols: Mapping[str, float] | None = None,
    fallback_vols: Mapping[str, float] | None = None,
    min_abs_corr: float = 0.0,
) -> Hedge | None:
    """:func:`best_hedge` over the model's universe (or ``candidates``), O(N).

    Correlations are the model's (pairs not ready are skipped), volatilities follow
    :meth:`EwmaCovariance.vols_for`; a regime multiplier cancels out of ``beta``.
    """
    if instrument_id not in model.index:
        return None
    if candidates is None:  # the whole universe, vectorised
        ids = model.ids
        rho = model.corr_row(instrument_id)
        rho[model.index[instrument_id]] = np.nan
    else:
        ids = [k for k in candidates if k != instrument_id and k in model.index]
        rho = model.corr_row(instrument_id, ids)
    j = _pick(rho, min_abs_corr)
    if j is None:
        return None
    s_i, s_h = model.vols_for([instrument_id, ids[j]], vols, fallback_vols).tolist()
    if not (math.isfinite(s_i) and math.isfinite(s_h) and s_h > 0):
        return None
    corr = float(rho[j])
    beta = corr * s_i / s_h
    return Hedge(ids[j], corr, beta, -beta * trade_cash)


def hedge_suggestion(
    model: EwmaCovariance,
    exposures_after: Mapping[str, float],
    instrument_id: str,
    trade_cash: float,
    *,
    unit_cash: Mapping[str, float] | None = None,
    lot_sizes: Mapping[str, float] | None = None,
    candidates: Iterable[str] | None = None,
    vols: Mapping[str, float] | None = None,
    fallback_vols: Mapping[str, float] | None = None,
    vol_mult: float = 1.0,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
    min_abs_corr: float = 0.3,
) -> Suggestion | None:
    """``HEDGE`` suggestion for a trade of ``trade_cash`` that leaves ``exposures_after``.

    None when no candidate reaches ``min_abs_corr`` or the hedge would not lower the VaR
    of the book after the trade. Units need the hedge's ``unit_cash`` (lot-rounded with
    ``lot_sizes``); without it only the notional is given.
    """
    hedge = model_hedge(
        model,
        instrument_id,
        trade_cash,
        candidates=candidates,
        vols=vols,
        fallback_vols=fallback_vols,
        min_abs_corr=min_abs_corr,
    )
    if hedge is None:
        return None
    mom = book_moments_for(
        model, exposures_after, hedge.instrument_id, vols, fallback_vols, vol_mult
    )
    x = hedge.notional
    s2_hedged = max(mom.s2 + 2.0 * x * mom.c + x * x * mom.v, 0.0)
    zh = z_score(confidence) * math.sqrt(horizon_days)
    var_before, var_hedged = zh * math.sqrt(mom.s2), zh * math.sqrt(s2_hedged)
    if not (math.isfinite(var_hedged) and var_hedged < var_before):
        return None
    side = "BUY" if x > 0 else "SELL"
    price = (unit_cash or {}).get(hedge.instrument_id)
    qty = None
    amount = f"{abs(x):,.0f} notional of"
    if price is not None and price > 0:
        qty = round_to_lot(abs(x) / price, (lot_sizes or {}).get(hedge.instrument_id, 1.0))
        amount = f"{qty:g}"
    why = (
        f"hedge: {side} {amount} {hedge.instrument_id} (corr {hedge.correlation:+.2f}, "
        f"hedge ratio {hedge.ratio:.2f}): VaR {var_before:,.0f} -> {var_hedged:,.0f}"
    )
    return Suggestion(
        "HEDGE",
        why,
        quantity=qty,
        instrument_id=hedge.instrument_id,
        side=side,
        correlation=hedge.correlation,
        hedge_ratio=hedge.ratio,
        notional=x,
        var_after=var_hedged,
    )


def suggestions(
    requested: float,
    allowed: float,
    *,
    adv: float,
    adv_share: float,
    lot: float = 1.0,
    hedge: Suggestion | None = None,
) -> list[Suggestion]:
    """Every suggestion that applies, in order REDUCE, SPLIT, HEDGE (empty when approved)."""
    if allowed >= requested:
        return []
    found = [reduce_to(requested, allowed), split_over_days(requested, adv, adv_share, lot), hedge]
    return [s for s in found if s is not None]
