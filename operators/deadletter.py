"""DeadLetter records: the original bytes, where they came from, and why they failed."""

from __future__ import annotations

from datetime import UTC, datetime

from operators.records import Record, Source


def dead_letter(
    source: Source,
    code: str,
    message: str,
    step: str,
    ts_event: int | None = None,
    key: bytes | None = None,
    payload: bytes | None = None,
) -> Record:
    """A DeadLetter record (schemas/DeadLetter.avsc)."""
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "source_key": key,
        "payload": payload,
        "error_code": code,
        "error_message": message,
        "step": step,
        "ts_event": ts_event,
        "ts_failed": int(datetime.now(UTC).timestamp() * 1e9),
    }
