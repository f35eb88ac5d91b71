"""Decoding and validating input messages, and the control-command gate."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from operators import metrics
from operators.config import EngineConfig
from operators.deadletter import dead_letter
from operators.errors import CodecError, InvalidRecord
from operators.records import (
    END_OF_TIME,
    DeadLetterItem,
    Inbound,
    Progress,
    Source,
    SourceIdle,
    TickBatch,
)
from operators.validate import validate
from schemas.codec import Codec

Parsed = Inbound | DeadLetterItem | Progress | TickBatch


def _source(msg: Any) -> Source:
    ts = msg.timestamp[1] * 1_000_000 if msg.timestamp and msg.timestamp[0] else 0
    return Source(msg.topic or "", msg.partition or 0, msg.offset or 0, ts)


def parse_batch(
    msgs: list[Any], kinds: Mapping[str, str], codec: Codec, config: EngineConfig
) -> list[Parsed]:
    """Decode and validate a batch of Kafka messages; failures become dead letters.

    For fenced topics (control, executions), the batch ends with one ``Progress`` per
    partition it touched: from the data's event times, from an idle marker (live: wall
    clock minus a margin; bounded reads: the end).
    """
    now = int(datetime.now(UTC).timestamp() * 1e9)
    out: list[Parsed] = []
    counts: dict[str, int] = {}
    progress: dict[tuple[str, int], int] = {}
    ticks: dict[str, list[Inbound]] = {}
    for msg in msgs:
        if isinstance(msg, SourceIdle):
            _idle_progress(msg, kinds, config, progress)
            continue
        source = _source(msg)
        counts[source.topic] = counts.get(source.topic, 0) + 1
        kind = kinds.get(source.topic)
        record: dict[str, Any] = {}
        try:
            if kind is None:
                raise CodecError("UNKNOWN_TOPIC", f"no record type for topic {source.topic!r}")
            record = codec.decode(kind, msg.value)
            validate(kind, record)
        except (CodecError, InvalidRecord) as exc:
            ts = record.get("ts_event")
            letter = dead_letter(source, exc.code, f"parse: {exc}", "parse", ts, msg.key, msg.value)
            out.append(DeadLetterItem(letter))
            continue
        if kind in config.fence_kinds:  # only valid records move event time forward
            part = (source.topic, source.partition)
            seen = record["ts_event"] - config.lateness_ns + 1
            progress[part] = max(progress.get(part, 0), seen)
        inbound = Inbound(kind, record, source, now, msg.key, msg.value)
        if kind == "MarketTick":
            ticks.setdefault(record["instrument_id"], []).append(inbound)
        else:
            out.append(inbound)
    out.extend(TickBatch(instrument, group) for instrument, group in ticks.items())
    lanes: dict[str, list[tuple[str, int, int]]] = {}
    for (topic, partition), ts in progress.items():
        lanes.setdefault(kinds[topic], []).append((topic, partition, ts))
    out.extend(Progress(kind, tuple(parts)) for kind, parts in lanes.items())
    for topic, n in counts.items():
        metrics.MESSAGES.labels(topic).inc(n)
    return out


def _idle_progress(
    idle: SourceIdle, kinds: Mapping[str, str], config: EngineConfig,
    progress: dict[tuple[str, int], int],
) -> None:  # fmt: skip
    """Event-time progress implied by an idle partition (none for wall clock in replays)."""
    if kinds.get(idle.topic) not in config.fence_kinds:
        return
    if idle.ts == END_OF_TIME:
        ts = END_OF_TIME
    elif config.wait_for_data:
        return
    else:
        ts = idle.ts - config.idle_margin_ns
    part = (idle.topic, idle.partition)
    progress[part] = max(progress.get(part, 0), ts)
