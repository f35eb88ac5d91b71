"""Decoding and validating input messages, and the control-command gate."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.config import EngineConfig, Limits
from operators.control import verify
from operators.deadletter import dead_letter
from operators.errors import CodecError, InvalidRecord
from operators.records import DeadLetterItem, Inbound, Source
from operators.validate import validate
from schemas.codec import Codec

Parsed = Inbound | DeadLetterItem


def _source(msg: Any) -> Source:
    ts = msg.timestamp[1] * 1_000_000 if msg.timestamp and msg.timestamp[0] else 0
    return Source(msg.topic or "", msg.partition or 0, msg.offset or 0, ts)


def parse_batch(msgs: list[Any], kinds: Mapping[str, str], codec: Codec) -> list[Parsed]:
    """Decode and validate a batch of Kafka messages; failures become dead letters."""
    now = int(datetime.now(UTC).timestamp() * 1e9)
    out: list[Parsed] = []
    counts: dict[str, int] = {}
    for msg in msgs:
        source = _source(msg)
        counts[source.topic] = counts.get(source.topic, 0) + 1
        kind = kinds.get(source.topic)
        try:
            if kind is None:
                raise CodecError("UNKNOWN_TOPIC", f"no record type for topic {source.topic!r}")
            record = codec.decode(kind, msg.value)
            validate(kind, record)
        except (CodecError, InvalidRecord) as exc:
            ts = record.get("ts_event") if isinstance(exc, InvalidRecord) else None
            letter = dead_letter(source, exc.code, f"parse: {exc}", "parse", ts, msg.key, msg.value)
            out.append(DeadLetterItem(letter))
            continue
        out.append(Inbound(kind, record, source, now, msg.key, msg.value))
    for topic, n in counts.items():
        metrics.MESSAGES.labels(topic).inc(n)
    return out


@dataclass
class GateState:
    """Nonces of recent commands, by ts_event, for replay detection."""

    nonces: dict[str, int] = field(default_factory=dict)


class ControlGateLogic(StatefulBatchLogic[Inbound, Parsed, GateState]):
    """Lets through only signed, fresh, first-seen control commands that make sense."""

    def __init__(self, config: EngineConfig, state: GateState | None) -> None:
        self.config = config
        self.state = state or GateState()

    def on_batch(self, values: list[Inbound]) -> tuple[Iterable[Parsed], bool]:
        return [self._check(item) for item in values], StatefulBatchLogic.RETAIN

    def _check(self, item: Inbound) -> Parsed:
        c = item.record
        try:
            verify(c, item.source.timestamp_ns, self.config.control)
            if c["nonce"] in self.state.nonces:
                raise InvalidRecord("REPLAYED_CONTROL", f"nonce {c['nonce']!r} was already used")
            if c["action"] == "SET_LIMIT" and c["limit_name"] not in Limits.names():
                raise InvalidRecord(
                    "INVALID_CONTROL",
                    f"unknown limit {c['limit_name']!r}; known: {', '.join(Limits.names())}",
                )
            if c["action"] == "SET_LIMIT" and c["scope"] == "INSTRUMENT":
                raise InvalidRecord("INVALID_CONTROL", "SET_LIMIT applies to GLOBAL or PORTFOLIO")
        except InvalidRecord as exc:
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
        return item

    def _remember(self, nonce: str, ts: int) -> None:
        nonces = self.state.nonces
        nonces[nonce] = ts
        horizon = ts - 2 * self.config.control.max_age_ns
        if len(nonces) > 1024:
            self.state.nonces = {n: t for n, t in nonces.items() if t >= horizon}

    def snapshot(self) -> GateState:
        return copy.deepcopy(self.state)
