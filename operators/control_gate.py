"""The control-command gate: only signed, fresh, first-seen, sensible commands pass."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.config import EngineConfig, Limits
from operators.control import verify
from operators.deadletter import dead_letter
from operators.errors import InvalidRecord
from operators.ingest import Parsed
from operators.records import DeadLetterItem, Inbound, Progress
from operators.snapshot import freeze, thaw


@dataclass
class GateState:
    """Nonces of recent commands, by ts_event, for replay detection."""

    nonces: dict[str, int] = field(default_factory=dict)


class ControlGateLogic(StatefulBatchLogic[Inbound | Progress, Parsed, bytes]):
    """Lets through only signed, fresh, first-seen control commands that make sense.

    Progress markers of the control topic pass through in order, after the commands.
    """

    def __init__(self, config: EngineConfig, state: bytes | GateState | None) -> None:
        self.config = config
        self.state = thaw(state, GateState) if state is not None else GateState()

    def on_batch(self, values: list[Inbound | Progress]) -> tuple[Iterable[Parsed], bool]:
        out = [v if isinstance(v, Progress) else self._check(v) for v in values]
        return out, StatefulBatchLogic.RETAIN

    def _check(self, item: Inbound) -> Parsed:
        c = item.record
        try:
            verify(c, item.source.timestamp_ns, self.config.control)
            if c["nonce"] in self.state.nonces:
                raise InvalidRecord("REPLAYED_CONTROL", f"nonce {c['nonce']!r} was already used")
            problem = c["action"] == "SET_LIMIT" and Limits.problem(
                c["limit_name"], c["limit_value"]
            )
            if problem:
                raise InvalidRecord("INVALID_CONTROL", problem)
            if c["action"] == "SET_LIMIT" and c["scope"] == "INSTRUMENT":
                raise InvalidRecord("INVALID_CONTROL", "SET_LIMIT applies to GLOBAL or PORTFOLIO")
        except InvalidRecord as exc:
            metrics.CONTROL_REFUSED.labels(exc.code).inc()
            letter = dead_letter(
                item.source,
                exc.code,
                f"control_gate: {exc}",
                "control_gate",
                c["ts_event"],
                item.key,
                item.raw,
            )
            return DeadLetterItem(letter)
        self._remember(c["nonce"], c["ts_event"])
        metrics.CONTROL_ACCEPTED.labels(c["key_id"]).inc()
        return item

    def _remember(self, nonce: str, ts: int) -> None:
        nonces = self.state.nonces
        nonces[nonce] = ts
        horizon = ts - 2 * self.config.control.max_age_ns
        if len(nonces) > 1024:
            self.state.nonces = {n: t for n, t in nonces.items() if t >= horizon}

    def snapshot(self) -> bytes:
        return freeze(self.state, self.config.recoverable)
