"""Human-readable lines for decisions, for ``riskstream watch`` and the demo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

COLORS = {"APPROVE": "\033[32m", "REDUCE": "\033[33m", "REJECT": "\033[31m"}
RESET = "\033[0m"


def decision_line(r: dict[str, Any], color: bool = False) -> str:
    """One line: time, portfolio, order, decision, allowed quantity, score and reasons."""
    when = datetime.fromtimestamp(r["ts_event"] / 1e9, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    decision = r["decision"]
    if color:
        decision = f"{COLORS[decision]}{decision:<7}{RESET}"
    reasons = ",".join(x["code"] for x in r["reasons"]) or "-"
    return (
        f"{when} {r['portfolio_id']:<7} {r['side']:<4} {r['requested_quantity']:>9,.0f}"
        f" {r['instrument_id']:<10} -> {decision:<7} {r['allowed_quantity']:>9,.0f}"
        f"  score {r['score']:5.1f} {r['band']:<8} {r['trading_state']:<11} {reasons}"
    )
