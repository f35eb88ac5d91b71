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
    reasons = ",".join(x["code"] for x in r["reasons"] if x["hard"]) or "-"
    regime = r.get("regime") or "(warming)"
    return (
        f"{when} {r['portfolio_id']:<7} {r['side']:<4} {r['requested_quantity']:>9,.0f}"
        f" {r['instrument_id']:<11} -> {decision:<7} {r['allowed_quantity']:>9,.0f}"
        f"  score {r['score']:5.1f} {r['band']:<8} {r['trading_state']:<11}"
        f" {regime:<21} {reasons}"
    )


PSI_READINGS = ((0.25, "significant"), (0.1, "moderate"), (0.0, "stable"))


def drift_line(metrics_text: str) -> str:
    """The largest model-input PSI from a Prometheus exposition, with its reading."""
    values = []
    for line in metrics_text.splitlines():
        if line.startswith("riskstream_model_input_psi{"):
            try:
                values.append((float(line.rsplit(" ", 1)[1]), line.split("{", 1)[1].split("}")[0]))
            except ValueError:
                continue
    if not values:
        return "drift: not measured yet"
    psi, labels = max(values)
    reading = next(name for floor, name in PSI_READINGS if psi >= floor)
    return f"drift: max PSI {psi:.3f} ({reading}; {labels})"
