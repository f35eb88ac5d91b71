"""Decoding and validating input messages into the items the flow routes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from operators import metrics
from operators.config import EngineConfig
from operators.deadletter import dead_letter
from operators.errors import CodecError, InvalidRecord
from operators.records import (
    END_OF_TIME,
    PROPOSAL,
    DeadLetterItem,
    Inbound,
    MessageBlock,
    Progress,
    Record,
    SourceIdle,
    TickBatch,
)
from operators.tick_ingest import tick_batches
from operators.validate import validate
from schemas.codec import Codec

Parsed = Inbound | DeadLetterItem | Progress | TickBatch
NO_PROGRESS = -(2**63)


def as_blocks(items: Iterable[Any]) -> Iterator[MessageBlock | SourceIdle]:
    """Blocks and markers as they are; runs of single messages gathered into blocks.

    Single messages are Bytewax's ``KafkaSourceMessage``, as tests and backtests make them.
    """
    run: list[Any] = []
    for item in items:
        if isinstance(item, (MessageBlock, SourceIdle)):
            if run:
                yield from _blocks_of(run)
                run = []
            yield item
        else:
            run.append(item)
    if run:
        yield from _blocks_of(run)


def _blocks_of(msgs: list[Any]) -> Iterator[MessageBlock]:
    start = 0
    for end in range(1, len(msgs) + 1):
        if end == len(msgs) or (msgs[end].topic, msgs[end].partition) != (
            msgs[start].topic,
            msgs[start].partition,
        ):
            run = msgs[start:end]
            yield MessageBlock(
                run[0].topic or "",
                run[0].partition or 0,
                [m.offset or 0 for m in run],
                [m.timestamp[1] * 1_000_000 if m.timestamp and m.timestamp[0] else 0 for m in run],
                [m.key for m in run],
                [m.value for m in run],
            )
            start = end


def parse_batch(
    items: list[Any], kinds: Mapping[str, str], codec: Codec, config: EngineConfig
) -> list[Parsed]:
    """Decode and validate a batch of Kafka messages; failures become dead letters.

    Ticks come out as one columnar ``TickBatch`` per instrument. For fenced topics
    (control, executions, reference data), the batch ends with one ``Progress`` per
    partition it touched: from the data's event times or a bounded read's end and, apart
    (``idle=True``), from live idle markers (wall clock minus a margin).

    Proposal partitions get a lane of their own (``Progress(PROPOSAL, ...)``, for the
    instrument step only): at the end of the batch, from the proposals' event times minus
    the lateness and, apart (``idle=True``), from idle markers; and right before a proposal
    that is behind that progress of an earlier proposal of its partition in the same
    batch, so the instrument step knows it is late whatever the batch boundaries.
    """
    now = int(datetime.now(UTC).timestamp() * 1e9)
    out: list[Parsed] = []
    progress: dict[tuple[str, int], int] = {}
    fenced_idle: dict[tuple[str, int], int] = {}
    proposed: dict[tuple[str, int], int] = {}
    proposals_idle: dict[tuple[str, int], int] = {}
    tick_blocks: list[MessageBlock] = []
    for block in as_blocks(items):
        if isinstance(block, SourceIdle):
            kind = kinds.get(block.topic)
            if kind == PROPOSAL:
                _idle_progress(block, config, proposals_idle)
            elif kind in config.fence_kinds:  # the end is data, the wall clock is not
                _idle_progress(block, config, progress if block.ts == END_OF_TIME else fenced_idle)
            continue
        metrics.MESSAGES.labels(block.topic).inc(len(block))
        kind = kinds.get(block.topic)
        if kind == "MarketTick":
            tick_blocks.append(block)
            continue
        part = (block.topic, block.partition)
        for i in range(len(block)):
            parsed = parse_one(block, i, kind, codec, now)
            if isinstance(parsed, Inbound):  # only valid records move event time forward
                ts = parsed.record["ts_event"]
                if parsed.kind == PROPOSAL:
                    before = proposed.get(part)
                    if before is not None and ts < before:
                        out.append(Progress(PROPOSAL, ((*part, before),)))
                    proposed[part] = max(
                        ts - config.lateness_ns, NO_PROGRESS if before is None else before
                    )
                elif parsed.kind in config.fence_kinds:
                    progress[part] = max(progress.get(part, 0), ts - config.lateness_ns + 1)
            out.append(parsed)
    if tick_blocks:
        out.extend(tick_batches(tick_blocks, codec, now))
    for seen, idle in ((progress, False), (fenced_idle, True)):
        lanes: dict[str, list[tuple[str, int, int]]] = {}
        for (topic, partition), ts in seen.items():
            lanes.setdefault(kinds[topic], []).append((topic, partition, ts))
        out.extend(Progress(kind, tuple(parts), idle=idle) for kind, parts in lanes.items())
    if proposed:
        out.append(Progress(PROPOSAL, tuple((t, p, ts) for (t, p), ts in proposed.items())))
    if proposals_idle:
        parts = tuple((t, p, ts) for (t, p), ts in proposals_idle.items())
        out.append(Progress(PROPOSAL, parts, idle=True))
    return out


def parse_one(
    block: MessageBlock, i: int, kind: str | None, codec: Codec, now: int
) -> Inbound | DeadLetterItem:
    """Decode and validate message ``i`` of ``block`` (a dead letter when it fails)."""
    record: Record = {}
    value = block.values[i]
    try:
        if kind is None:
            raise CodecError("UNKNOWN_TOPIC", f"no record type for topic {block.topic!r}")
        record = codec.decode(kind, value)
        validate(kind, record)
    except (CodecError, InvalidRecord) as exc:
        ts = record.get("ts_event")
        letter = dead_letter(
            block.source(i), exc.code, f"parse: {exc}", "parse", ts, block.keys[i], value
        )
        return DeadLetterItem(letter)
    return Inbound(kind, record, block.source(i), now, block.keys[i], value)


def _idle_progress(
    idle: SourceIdle, config: EngineConfig, progress: dict[tuple[str, int], int]
) -> None:
    """Event-time progress implied by an idle partition (none for wall clock in replays)."""
    if idle.ts == END_OF_TIME:
        ts = END_OF_TIME
    elif config.wait_for_data:
        return
    else:
        ts = idle.ts - config.idle_margin_ns
    part = (idle.topic, idle.partition)
    progress[part] = max(progress.get(part, 0), ts)
