"""The seven market regimes, in model order, with display names and a coarse view.

Member values are the names written to Avro (``RegimeEvent.probabilities[].regime``,
``RiskScore.regime``); :class:`Coarse` values are the ``CoarseRegime`` enum symbols.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Coarse(enum.StrEnum):
    """Coarse bull / bear / sideways market view (Avro ``CoarseRegime``)."""

    BULL = "BULL"
    BEAR = "BEAR"
    SIDEWAYS = "SIDEWAYS"


class Regime(enum.StrEnum):
    """Market regime; the definition order is the model's class order."""

    CALM = "CALM"
    VOL_RISK_OFF = "VOL_RISK_OFF"
    LIQUIDITY_CRISIS = "LIQUIDITY_CRISIS"
    CREDIT_SELLOFF = "CREDIT_SELLOFF"
    RATE_SELLOFF = "RATE_SELLOFF"
    RALLY = "RALLY"
    TECHNICAL_DISLOCATION = "TECHNICAL_DISLOCATION"

    @property
    def display_name(self) -> str:
        """Human-readable name, e.g. ``"Calm/Normal"``."""
        return _DISPLAY_NAMES[self]

    @property
    def coarse(self) -> Coarse:
        """Coarse view this regime belongs to."""
        return _COARSE[self]

    @property
    def code(self) -> int:
        """Position in model order (0-6): the class index of a classifier."""
        return REGIMES.index(self)

    @classmethod
    def from_code(cls, code: int) -> Regime:
        """Regime at position ``code`` in model order."""
        if not 0 <= code < len(REGIMES):
            raise ValueError(f"regime code must be in 0..{len(REGIMES) - 1}, got {code}")
        return REGIMES[code]


_DISPLAY_NAMES: dict[Regime, str] = {
    Regime.CALM: "Calm/Normal",
    Regime.VOL_RISK_OFF: "Volatility-Driven Risk-Off",
    Regime.LIQUIDITY_CRISIS: "Liquidity Crisis",
    Regime.CREDIT_SELLOFF: "Credit-Driven Selloff",
    Regime.RATE_SELLOFF: "Rate-Driven Selloff",
    Regime.RALLY: "Strong Inflow/Rally",
    Regime.TECHNICAL_DISLOCATION: "Technical Positioning/Dislocation",
}

# CALM is low-volatility, trendless trading; TECHNICAL_DISLOCATION moves sharply but
# mean-reverts, so neither has a direction.
_COARSE: dict[Regime, Coarse] = {
    Regime.CALM: Coarse.SIDEWAYS,
    Regime.VOL_RISK_OFF: Coarse.BEAR,
    Regime.LIQUIDITY_CRISIS: Coarse.BEAR,
    Regime.CREDIT_SELLOFF: Coarse.BEAR,
    Regime.RATE_SELLOFF: Coarse.BEAR,
    Regime.RALLY: Coarse.BULL,
    Regime.TECHNICAL_DISLOCATION: Coarse.SIDEWAYS,
}

REGIMES: tuple[Regime, ...] = tuple(Regime)
"""All regimes in model order."""


def coarse_view(probabilities: Sequence[float]) -> Coarse:
    """Coarse view with the largest summed probability (ties: SIDEWAYS, BEAR, BULL).

    ``probabilities`` holds one value per regime, in model order.
    """
    if len(probabilities) != len(REGIMES):
        raise ValueError(
            f"coarse_view needs {len(REGIMES)} probabilities, got {len(probabilities)}"
        )
    totals = dict.fromkeys((Coarse.SIDEWAYS, Coarse.BEAR, Coarse.BULL), 0.0)
    for regime, p in zip(REGIMES, probabilities, strict=True):
        totals[regime.coarse] += float(p)
    return max(totals, key=lambda c: totals[c])
