"""``riskstream replay``: the pre-trade flow over a time range of the input topics.

A replay reads every input partition from the first offset whose Kafka timestamp is at or
after ``--from`` up to (not including) the first offset at or after ``--to``, runs the same
dataflow as ``riskstream run`` in replay mode (``wait_for_data``: decisions wait for data,
never for the wall clock), and writes its decisions, dead letters and (once the regime
model is wired) regime events to topics or files of its own. Redis writes go under a
namespace of their own (``replay:<run id>:``). Live topics and live Redis keys are only
written with ``--allow-live``.

Ranges are found by consuming, not trusted from the broker: ``offsets_for_times`` answers
are only a lower bound to scan forward from (the embedded broker answers 0 for every
time), and the true end of a partition is where a consumer reaches end-of-partition
(the embedded broker's ListOffsets "latest" is the base offset of the last batch).

``--out-file`` writes an Avro object container file of ``RiskScore`` records (and
``<name>.dlq.avro`` of ``DeadLetter`` records when there are any), from one process: its
worker threads share one writer. Several processes need ``--out-topic``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import takewhile
from pathlib import Path
from typing import Any, Generic, TextIO, TypeVar

from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from dataflows.collect import collect_less
from dataflows.settings import INPUT_KINDS, LimitSettings, Settings
from operators.errors import ConfigError, InfrastructureError
from operators.records import PROPOSAL, REFERENCE, DeadLetterItem, Decided, MessageBlock, StateWrite

log = logging.getLogger(__name__)

T = TypeVar("T")
NS_PER_MS = 1_000_000
NO_TIMESTAMP = -1
SCAN_TIMEOUT_S = 15.0
_UNITS_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}
_RELATIVE = re.compile(r"^now(?:\s*-\s*(\d+(?:\.\d+)?)\s*([smhd]))?$")
TIME_FORMATS = (
    "ISO 8601 (2026-01-01T09:30:00Z; no zone means UTC), epoch seconds, milliseconds or"
    " nanoseconds (digits only), or now / now-15m (s, m, h, d)"
)


# --------------------------------------------------------------------------- time


def parse_time(text: str, option: str = "--from", now_ns: int | None = None) -> int:
    """A point in time as UTC epoch nanoseconds, or a ConfigError naming the option."""
    value = text.strip()
    rel = _RELATIVE.match(value.lower())
    if rel:
        now = now_ns if now_ns is not None else time.time_ns()
        if rel.group(1) is None:
            return now
        return now - int(float(rel.group(1)) * _UNITS_NS[rel.group(2)])
    if value.isdigit():
        n = int(value)
        if n < 10**11:  # seconds until the year 5138
            return n * 10**9
        if n < 10**14:
            return n * 10**6
        if n < 10**17:
            return n * 10**3
        return n
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option}: cannot read {text!r} as a time; use {TIME_FORMATS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def format_time(ns: int | None) -> str:
    """UTC ISO 8601 with milliseconds, or ``open`` for an unbounded end."""
    if ns is None:
        return "open"
    when = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_speed(text: str) -> float | None:
    """``max`` (None: no pacing), ``realtime`` (1.0) or ``xN`` / ``Nx`` (N > 0)."""
    value = text.strip().lower()
    if value == "max":
        return None
    if value == "realtime":
        return 1.0
    number = value.removeprefix("x").removesuffix("x")
    try:
        speed = float(number)
    except ValueError:
        speed = math.nan
    if not math.isfinite(speed) or speed <= 0:
        raise argparse.ArgumentTypeError(f"expected max, realtime or xN (N > 0), got {text!r}")
    return speed


# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class PartitionRange:
    """The offsets ``[start, end)`` of one input partition that a replay reads."""

    topic: str
    partition: int
    start: int
    end: int
    first_ts_ms: int | None = None
    """Kafka timestamp of the message at ``start`` (None when the range is empty)."""

    @property
    def count(self) -> int:
        """Offsets in the range (an upper bound on messages: offsets may have gaps)."""
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay reads: the input topics (name -> record) and a range per partition."""

    kinds: dict[str, str]
    from_ns: int | None
    to_ns: int | None
    ranges: tuple[PartitionRange, ...]

    @property
    def events(self) -> int:
        """Offsets to read over every partition."""
        return sum(r.count for r in self.ranges)

    @property
    def first_ts_ms(self) -> int | None:
        """Earliest Kafka timestamp at the start of a range (the pacing origin)."""
        stamps = [r.first_ts_ms for r in self.ranges if r.count and r.first_ts_ms is not None]
        return min(stamps) if stamps else None

    def describe(self) -> str:
        """One line per partition: topic, partition, offsets, count."""
        lines = [f"range {format_time(self.from_ns)} .. {format_time(self.to_ns)}"]
        for r in self.ranges:
            lines.append(f"  {r.topic}[{r.partition}] offsets {r.start}..{r.end} ({r.count})")
        lines.append(f"  total {self.events} events")
        return "\n".join(lines)


def _timestamp_ms(msg: Any) -> int:
    kind, ts = msg.timestamp()
    return int(ts) if kind else NO_TIMESTAMP


class RangeScanner:
    """Finds offsets by time, and true partition ends, by consuming (broker answers are hints).

    One assign-based consumer, used for one partition at a time.
    """

    def __init__(self, config: dict[str, Any], timeout_s: float = SCAN_TIMEOUT_S) -> None:
        self.consumer = Consumer(
            {
                **config,
                "group.id": "riskstream-replay-scan",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self.timeout_s = timeout_s

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()

    def messages(self, topic: str, partition: int, offset: int) -> Iterable[Any]:
        """Messages from ``offset`` to the current end of the partition, then stop."""
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self.timeout_s
        while True:
            # consume() waits for the whole timeout unless the batch fills: keep it short
            msgs = self.consumer.consume(10_000, 0.01)
            for msg in msgs:
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    return
                elif err.fatal():
                    raise InfrastructureError(f"reading {topic}[{partition}]: {err.str()}")
            if msgs:
                deadline = time.monotonic() + self.timeout_s
            elif time.monotonic() > deadline:
                raise InfrastructureError(
                    f"reading {topic}[{partition}] from offset {offset}: no data and no"
                    f" end-of-partition within {self.timeout_s:g}s"
                )

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """(low watermark, true end): the end found by consuming from the broker's hint."""
        try:
            low, hint = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout_s
            )
        except KafkaException as exc:
            raise InfrastructureError(f"offsets of {topic}[{partition}]: {exc}") from None
        start = max(low, hint - 1)  # one before the hint: the hint may be the true end
        end = start
        for msg in self.messages(topic, partition, start):
            end = int(msg.offset()) + 1
        if end == start and start > low:  # the hint was past the end: scan from the start
            for msg in self.messages(topic, partition, low):
                end = int(msg.offset()) + 1
        return low, max(end, low)

    def first_at_or_after(
        self, topic: str, partition: int, start: int, end: int, ts_ms: int
    ) -> tuple[int, int | None]:
        """First offset in ``[start, end)`` with a timestamp >= ``ts_ms``, and that timestamp.

        ``(end, None)`` when there is none. The broker's answer is only a lower bound to
        scan forward from.
        """
        if start >= end:
            return end, None
        hint = self._broker_hint(topic, partition, ts_ms)
        if hint is None or hint >= end:
            hint = start
        for msg in self.messages(topic, partition, max(start, hint)):
            offset = int(msg.offset())
            if offset >= end:
                break
            stamp = _timestamp_ms(msg)
            if stamp >= ts_ms:
                return offset, stamp
        return end, None

    def timestamp_at(self, topic: str, partition: int, offset: int, end: int) -> int | None:
        """Timestamp of the first message at or after ``offset`` (before ``end``)."""
        if offset >= end:
            return None
        for msg in self.messages(topic, partition, offset):
            return _timestamp_ms(msg) if int(msg.offset()) < end else None
        return None

    def _broker_hint(self, topic: str, partition: int, ts_ms: int) -> int | None:
        try:
            [found] = self.consumer.offsets_for_times(
                [TopicPartition(topic, partition, ts_ms)], timeout=self.timeout_s
            )
        except KafkaException:
            return None
        return int(found.offset) if found.error is None and found.offset >= 0 else None


def resolve_plan(
    config: dict[str, Any],
    kinds: dict[str, str],
    partitions: list[tuple[str, int]],
    from_ns: int | None,
    to_ns: int | None,
) -> ReplayPlan:
    """The offsets to read in every partition for the time range ``[from, to)``."""
    # Kafka timestamps are whole milliseconds: ts >= t in ns is ts_ms >= ceil(t / 1e6)
    from_ms = None if from_ns is None else -(-from_ns // NS_PER_MS)
    to_ms = None if to_ns is None else -(-to_ns // NS_PER_MS)
    scanner = RangeScanner(config)
    ranges = []
    try:
        for topic, partition in partitions:
            low, true_end = scanner.bounds(topic, partition)
            start, first = low, None
            if from_ms is not None:
                start, first = scanner.first_at_or_after(topic, partition, low, true_end, from_ms)
            end = true_end
            if to_ms is not None:
                end, _ = scanner.first_at_or_after(topic, partition, start, true_end, to_ms)
            if first is None and start < end:
                first = scanner.timestamp_at(topic, partition, start, end)
            ranges.append(PartitionRange(topic, partition, start, max(start, end), first))
    finally:
        scanner.close()
    return ReplayPlan(dict(kinds), from_ns, to_ns, tuple(ranges))


def available_span(
    config: dict[str, Any], partitions: list[tuple[str, int]]
) -> tuple[int, int | None, int | None]:
    """(records, first, last Kafka timestamp in ms) over the partitions: what there is."""
    scanner = RangeScanner(config)
    total, first, last = 0, None, None
    try:
        for topic, partition in partitions:
            low, end = scanner.bounds(topic, partition)
            total += end - low
            if end > low:
                a = scanner.timestamp_at(topic, partition, low, end)
                b = scanner.timestamp_at(topic, partition, end - 1, end)
                first = a if first is None or (a is not None and a < first) else first
                last = b if last is None or (b is not None and b > last) else last
    finally:
        scanner.close()
    return total, first, last


# --------------------------------------------------------------------------- topics


def select_topics(settings: Settings, wanted: list[str] | None) -> dict[str, str]:
    """Input topic -> record name, from roles, ``role=topic`` or topic names.

    A topic name is known when it is a configured input topic or ends with a default
    input topic name (``archive.market.ticks`` reads as ticks).
    """
    configured = settings.topics.input_kinds()
    if not wanted:
        return configured
    defaults = {getattr(type(settings.topics)(), role): role for role in INPUT_KINDS}
    out: dict[str, str] = {}
    for item in (w.strip() for entry in wanted for w in entry.split(",")):
        if not item:
            continue
        role, eq, name = item.partition("=")
        if eq:
            if role not in INPUT_KINDS:
                raise ConfigError(
                    f"--topics {item!r}: unknown role {role!r}; roles: {', '.join(INPUT_KINDS)}"
                )
            out[name] = INPUT_KINDS[role]
        elif item in INPUT_KINDS:
            out[settings.topics.name(item)] = INPUT_KINDS[item]
        elif item in configured:
            out[item] = configured[item]
        else:
            matched = [r for d, r in defaults.items() if item.endswith(d)]
            if not matched:
                raise ConfigError(
                    f"--topics: unknown topic {item!r}; give a role ({', '.join(INPUT_KINDS)}),"
                    f" ROLE=TOPIC, or one of: {', '.join(configured)}"
                )
            out[item] = INPUT_KINDS[matched[0]]
    return out


def topic_partitions(config: dict[str, Any], topics: Iterable[str]) -> list[tuple[str, int]]:
    """(topic, partition) of every partition, or a ConfigError naming unknown topics."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({k: v for k, v in config.items() if k != "group.id"})
    try:
        meta = admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise InfrastructureError(f"cannot list topics: {exc}") from None
    names = list(topics)
    missing = [t for t in names if t not in meta.topics or meta.topics[t].error is not None]
    if missing:
        raise ConfigError(
            f"unknown topic{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}:"
            " not on the broker (check --topics and RISKSTREAM_TOPICS__PREFIX)"
        )
    return [(t, p) for t in names for p in sorted(meta.topics[t].partitions)]


# --------------------------------------------------------------------------- counting


@dataclass
class ReplayCounters:
    """What a replay read and wrote, counted by the source and the sinks (thread-safe)."""

    total: int = 0
    """Offsets to read by this process's partitions (known once they are built)."""
    events: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    stale: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    state_writes: int = 0
    regime_events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_total(self, n: int) -> None:
        """A partition of ``n`` offsets was built here."""
        with self.lock:
            self.total += n

    def add_events(self, n: int) -> None:
        """``n`` input messages were read."""
        with self.lock:
            self.events += n

    def add_decisions(self, items: list[Decided]) -> None:
        """Count decisions by outcome and reason."""
        with self.lock:
            for d in items:
                self.decisions[d.record["decision"]] += 1
                self.stale += bool(d.record.get("stale"))
                self.reasons.update(r["code"] for r in d.record["reasons"])

    def add_dead_letters(self, items: list[DeadLetterItem]) -> None:
        """Count dead letters by reason code."""
        with self.lock:
            self.dead_letters.update(d.record["error_code"] for d in items)

    def add_state_writes(self, items: list[StateWrite]) -> None:
        """Count state writes."""
        with self.lock:
            self.state_writes += len(items)

    def add_regime_events(self, items: list[Any]) -> None:
        """Count regime events."""
        with self.lock:
            self.regime_events += len(items)


# --------------------------------------------------------------------------- source


class Pacer:
    """Maps Kafka timestamps to wall-clock release times at ``speed`` x event time."""

    def __init__(self, speed: float, origin_ms: int) -> None:
        self.speed = speed
        self.origin_ms = origin_ms
        self._wall0: float | None = None
        self._lock = threading.Lock()

    def due(self, ts_ms: int) -> float:
        """Wall-clock time (epoch seconds) at which a message stamped ``ts_ms`` is released."""
        with self._lock:
            if self._wall0 is None:
                self._wall0 = time.time()
            wall0 = self._wall0
        return wall0 + max(0, ts_ms - self.origin_ms) / 1000.0 / self.speed


class _ReplayPartition(StatefulSourcePartition[Any, Any]):
    """Counts what the inner partition reads and, with a pacer, holds it until it is due."""

    def __init__(
        self,
        inner: StatefulSourcePartition[Any, Any],
        counters: ReplayCounters,
        pacer: Pacer | None,
        buffer: int,
    ) -> None:
        self._inner = inner
        self._counters = counters
        self._pacer = pacer
        self._buffer: deque[Any] = deque()
        self._low = buffer
        self._inner_done = False

    def _count(self, batch: list[Any]) -> list[Any]:
        n = sum(len(m) for m in batch if isinstance(m, MessageBlock))
        if n:
            self._counters.add_events(n)
        return batch

    def next_batch(self) -> list[Any]:
        if self._pacer is None:
            return self._count(list(self._inner.next_batch()))
        if len(self._buffer) < self._low and not self._inner_done:
            try:
                self._buffer.extend(self._inner.next_batch())
            except StopIteration:
                self._inner_done = True
        if not self._buffer and self._inner_done:
            raise StopIteration
        now = time.time()
        out: list[Any] = []
        while self._buffer:
            head = self._buffer[0]
            if not isinstance(head, MessageBlock):  # markers follow the data before them
                out.append(self._buffer.popleft())
                continue
            n = sum(1 for _ in takewhile(lambda ts: self._due(ts) <= now, head.timestamps_ns))
            if n < len(head):
                if n:
                    due, self._buffer[0] = head.split(n)
                    out.append(due)
                break
            out.append(self._buffer.popleft())
        return self._count(out)

    def _due(self, ts_ns: int) -> float:
        """Release time of a message (at once when it has no timestamp)."""
        if self._pacer is None or not ts_ns:
            return 0.0
        return self._pacer.due(ts_ns // 1_000_000)

    def next_awake(self) -> datetime | None:
        if self._pacer is not None and self._buffer:
            head = self._buffer[0]
            due = self._due(head.timestamps_ns[0]) if isinstance(head, MessageBlock) else 0.0
            if due > time.time():
                return datetime.fromtimestamp(due, tz=UTC)
        return None

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class ReplaySource(FixedPartitionedSource[Any, Any]):
    """Wraps the bounded Kafka source: counts events, paces by event time (``speed``)."""

    def __init__(
        self,
        inner: FixedPartitionedSource[Any, Any],
        plan: ReplayPlan,
        counters: ReplayCounters,
        speed: float | None,
        buffer: int = 5000,
    ) -> None:
        self.inner = inner
        self.counters = counters
        self.counts = {f"{r.partition}-{r.topic}": r.count for r in plan.ranges}
        origin = plan.first_ts_ms
        self.pacer = Pacer(speed, origin) if speed is not None and origin is not None else None
        self.buffer = buffer

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _ReplayPartition:
        self.counters.add_total(self.counts.get(for_part, 0))
        inner = self.inner.build_part(step_id, for_part, resume_state)
        return _ReplayPartition(inner, self.counters, self.pacer, self.buffer)


# --------------------------------------------------------------------------- sinks


class _AvroFile:
    """One Avro container file shared by the worker threads of a process.

    Written to ``<path>.tmp`` and renamed into place when the last writer closes.
    """

    def __init__(self, path: Path, record_name: str, eager: bool) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.record_name = record_name
        self.lock = threading.Lock()
        self.writer: Any = None
        self.file: Any = None
        self.users = 0
        self.eager = eager
        self.written = 0

    def _open(self) -> None:
        import fastavro

        from schemas.codec import load_schema

        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in release()
        self.writer = fastavro.write.Writer(self.file, load_schema(self.record_name), "deflate")

    def attach(self) -> None:
        """A worker's partition starts using the file."""
        with self.lock:
            self.users += 1
            if self.eager and self.writer is None:
                self._open()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append records."""
        if not records:
            return
        with self.lock:
            if self.writer is None:
                self._open()
            for record in records:
                self.writer.write(record)
            self.writer.flush()
            self.written += len(records)

    def release(self) -> None:
        """A worker's partition is done; the last one finishes the file."""
        with self.lock:
            self.users -= 1
            if self.users > 0 or self.writer is None:
                return
            self.writer.flush()
            self.file.close()
            os.replace(self.tmp, self.path)
            self.writer = None

    def discard(self) -> None:
        """Remove a file left unfinished (the flow failed)."""
        with self.lock:
            if self.file is not None and not self.file.closed:
                self.file.close()
            self.tmp.unlink(missing_ok=True)


class _AvroFilePartition(StatelessSinkPartition[T], Generic[T]):
    def __init__(self, sink: AvroFileSink[T]) -> None:
        self._sink = sink
        sink.file.attach()

    def write_batch(self, items: list[T]) -> None:
        self._sink.file.write([self._sink.record_of(i) for i in items])
        if self._sink.on_written is not None:
            self._sink.on_written(items)

    def close(self) -> None:
        self._sink.file.release()


class AvroFileSink(DynamicSink[T], Generic[T]):
    """Appends each item's record to one Avro object container file (one process)."""

    def __init__(
        self,
        path: Path,
        record_name: str,
        record_of: Callable[[T], dict[str, Any]],
        on_written: Callable[[list[T]], None] | None = None,
        *,
        eager: bool = True,
    ) -> None:
        self.file = _AvroFile(path, record_name, eager)
        self.record_of = record_of
        self.on_written = on_written

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AvroFilePartition[T]:
        return _AvroFilePartition(self)


class _CountingPartition(StatelessSinkPartition[T], Generic[T]):
    def __init__(self, on_written: Callable[[list[T]], None]) -> None:
        self._on_written = on_written

    def write_batch(self, items: list[T]) -> None:
        self._on_written(items)


class CountingSink(DynamicSink[T], Generic[T]):
    """Counts items and drops them (state writes when Redis is off)."""

    def __init__(self, on_written: Callable[[list[T]], None]) -> None:
        self.on_written = on_written

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition[T]:
        return _CountingPartition(self.on_written)


class _ForwardingStatePartition(StatelessSinkPartition[StateWrite]):
    def __init__(self, inner: Any, on_written: Callable[[list[StateWrite]], None]) -> None:
        self._inner = inner
        self._on_written = on_written

    def write_batch(self, items: list[StateWrite]) -> None:
        self._inner.write_batch(items)
        self._on_written(items)

    def close(self) -> None:
        self._inner.close()


class CountedSink(DynamicSink[StateWrite]):
    """A dynamic sink whose writes are also counted."""

    def __init__(
        self, inner: DynamicSink[StateWrite], on_written: Callable[[list[StateWrite]], None]
    ) -> None:
        self.inner = inner
        self.on_written = on_written

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _ForwardingStatePartition:
        part = self.inner.build(step_id, worker_index, worker_count)
        return _ForwardingStatePartition(part, self.on_written)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ReplayOptions:
    """A replay as asked for on the command line."""

    from_ns: int | None = None
    to_ns: int | None = None
    topics: tuple[str, ...] = ()
    speed: float | None = None
    out_topic: str | None = None
    out_file: Path | None = None
    redis_prefix: str | None = None
    no_redis: bool = False
    run_id: str | None = None
    limits: tuple[tuple[str, float], ...] = ()
    models: Path | None = None
    """A model set (manifest.json + artifacts) to decide with instead of the shipped one."""
    allow_live: bool = False
    append: bool = False
    workers: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    progress: str = "auto"
    plan_only: bool = False

    @property
    def processes(self) -> int:
        """Number of processes in the cluster."""
        return max(1, len(self.addresses))

    @property
    def leader(self) -> bool:
        """True for the process that checks outputs (the only one, or process 0)."""
        return not self.process_id

    def key(self) -> str:
        """A short id of the replay's inputs and outputs (the same in every process)."""
        parts = [
            self.from_ns, self.to_ns, sorted(self.topics), self.out_topic,
            str(self.out_file) if self.out_file else None, sorted(self.limits),
            str(self.models) if self.models else None,
        ]  # fmt: skip
        return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Outputs:
    """Where a replay writes."""

    run_id: str
    scores: str
    """Topic name, or file path."""
    dead_letters: str
    regimes: str | None
    redis_prefix: str | None
    to_file: bool

    def describe(self) -> str:
        """Human-readable destinations."""
        where = "file" if self.to_file else "topic"
        redis = f"Redis prefix {self.redis_prefix!r}" if self.redis_prefix else "no Redis writes"
        return (
            f"decisions -> {where} {self.scores}; dead letters -> {self.dead_letters};"
            f" regime events -> {self.regimes}; {redis}"
        )


def plan_outputs(settings: Settings, opts: ReplayOptions, inputs: Iterable[str]) -> Outputs:
    """The replay's destinations, refusing live topics and keys unless ``allow_live``."""
    run_id = opts.run_id or opts.key()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", run_id):
        raise ConfigError(f"--run-id must be 1-64 letters, digits, '.', '_' or '-', got {run_id!r}")
    if opts.no_redis or settings.redis_url is None:
        prefix = None
    else:
        prefix = opts.redis_prefix if opts.redis_prefix is not None else f"replay:{run_id}:"
    if opts.out_file is not None:
        path = opts.out_file
        if path.suffix != ".avro":
            raise ConfigError(f"--out-file must end with .avro, got {str(path)!r}")
        if not path.parent.is_dir():
            raise ConfigError(f"--out-file: directory {str(path.parent)!r} does not exist")
        dlq = path.with_name(path.stem + ".dlq.avro")
        regimes = path.with_name(path.stem + ".regimes.avro")
        outputs = Outputs(run_id, str(path), str(dlq), str(regimes), prefix, True)
    elif opts.out_topic:
        name = opts.out_topic
        outputs = Outputs(run_id, name, f"{name}.dlq", f"{name}.regimes", prefix, False)
    else:
        raise ConfigError("give --out-topic NAME or --out-file PATH for the replay's decisions")
    inputs = set(inputs)
    if not outputs.to_file:
        for topic in (outputs.scores, outputs.dead_letters, outputs.regimes):
            if topic in inputs:
                raise ConfigError(f"replay output topic {topic!r} is one of its input topics")
            if topic in settings.topics.all() and not opts.allow_live:
                raise ConfigError(
                    f"refusing to write replay output to live topic {topic!r};"
                    " choose another --out-topic (or pass --allow-live)"
                )
    if prefix == settings.redis_prefix and not opts.allow_live:
        raise ConfigError(
            f"refusing to write replay state under the live Redis prefix {prefix!r};"
            " choose another --redis-prefix (or pass --allow-live)"
        )
    return outputs


def with_limits(settings: Settings, limits: Iterable[tuple[str, float]]) -> Settings:
    """Settings with limit overrides (validated like RISKSTREAM_LIMITS__*)."""
    changes = dict(limits)
    if not changes:
        return settings
    known = set(LimitSettings.model_fields)
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(
            f"--limit: unknown limit {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        limits_ = LimitSettings(**(settings.limits.model_dump() | changes))
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"--limit: {problems}") from None
    return settings.model_copy(update={"limits": limits_})


# --------------------------------------------------------------------------- flow


def replay_flow(
    settings: Settings,
    plan: ReplayPlan,
    outputs: Outputs,
    counters: ReplayCounters,
    *,
    speed: float | None = None,
    stop: threading.Event | None = None,
) -> Dataflow:
    """The pre-trade flow over the plan's ranges, writing to the replay's outputs."""
    from dataclasses import replace

    from dataflows.app import codec_for
    from dataflows.kafka_io import RecordSink, StoppableSource, consumer_config, producer_config
    from dataflows.kafka_source import RiskSource
    from dataflows.pretrade import build_pretrade_flow
    from dataflows.redis_sink import RedisStateSink

    codec = codec_for(settings)

    def score_record(d: Decided) -> dict[str, Any]:
        return d.record

    def letter_record(d: DeadLetterItem) -> dict[str, Any]:
        return d.record

    def score_key(d: Decided) -> bytes:
        return str(d.record["portfolio_id"]).encode()

    def letter_key(d: DeadLetterItem) -> bytes | None:
        key = d.record["source_key"]
        return key if isinstance(key, bytes) else None

    def regime_record(r: Any) -> dict[str, Any]:
        return dict(r.record)

    def regime_key(r: Any) -> bytes:
        return str(r.record["scope"]).encode()

    scores: Any
    letters: Any
    regimes: Any
    if outputs.to_file:
        scores = AvroFileSink(
            Path(outputs.scores), "RiskScore", score_record, counters.add_decisions
        )
        letters = AvroFileSink(
            Path(outputs.dead_letters),
            "DeadLetter",
            letter_record,
            counters.add_dead_letters,
            eager=False,
        )
        regimes = AvroFileSink(
            Path(outputs.regimes or outputs.scores + ".regimes.avro"),
            "RegimeEvent",
            regime_record,
            counters.add_regime_events,
            eager=False,
        )
    else:
        conf = producer_config(settings)
        scores = RecordSink(
            conf, outputs.scores, "RiskScore", codec, score_record, score_key,
            counters.add_decisions, flush_each_batch=False,
        )  # fmt: skip
        letters = RecordSink(
            conf, outputs.dead_letters, "DeadLetter", codec, letter_record, letter_key,
            counters.add_dead_letters, flush_each_batch=False,
        )  # fmt: skip
        regimes = RecordSink(
            conf, outputs.regimes or f"{outputs.scores}.regimes", "RegimeEvent", codec,
            regime_record, regime_key, counters.add_regime_events, flush_each_batch=False,
        )  # fmt: skip
    state: Any
    if outputs.redis_prefix is not None and settings.redis_url is not None:
        redis = RedisStateSink(settings.redis_url.get_secret_value(), outputs.redis_prefix)
        state = CountedSink(redis, counters.add_state_writes)
    else:
        state = CountingSink(counters.add_state_writes)
    config = settings.engine_config(wait_for_data=True)
    fenced = config.fence_kinds
    config = replace(
        config,
        fence=tuple(
            (r.topic, r.partition) for r in plan.ranges if plan.kinds.get(r.topic) in fenced
        ),
        proposal_parts=tuple(
            (r.topic, r.partition) for r in plan.ranges if plan.kinds.get(r.topic) == PROPOSAL
        ),
        reference_parts=tuple(
            (r.topic, r.partition) for r in plan.ranges if plan.kinds.get(r.topic) == REFERENCE
        ),
        recoverable=False,  # a replay is re-run, never recovered
    )
    source = RiskSource(
        consumer_config(settings),
        list(plan.kinds),
        tail=False,
        batch_size=settings.replay_batch_size,
        start_offsets={(r.topic, r.partition): r.start for r in plan.ranges},
        end_offsets={(r.topic, r.partition): r.end for r in plan.ranges},
    )
    wrapped: FixedPartitionedSource[Any, Any] = ReplaySource(source, plan, counters, speed)
    if stop is not None:
        wrapped = StoppableSource(wrapped, stop)
    return build_pretrade_flow(
        wrapped, pretrade_sinks(scores, letters, state, regimes), config, codec, plan.kinds
    )


def pretrade_sinks(scores: Any, letters: Any, state: Any, regimes: Any) -> Any:
    """The flow's sinks; regime events too where the flow has a regime output."""
    from dataclasses import fields

    from dataflows.pretrade import PretradeSinks

    sinks: dict[str, Any] = {"scores": scores, "dead_letters": letters, "state": state}
    if "regimes" in {f.name for f in fields(PretradeSinks)}:
        sinks["regimes"] = regimes
    return PretradeSinks(**sinks)


# --------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(done: int, total: int, elapsed: float, width: int = 24) -> str:
    """``[#####-----]  41%  12,345/30,000 events  95.2k ev/s  ETA 0:00:02``."""
    frac = min(1.0, done / total) if total else 1.0
    filled = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 and total >= done else math.inf
    rate_text = f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {frac * 100:3.0f}%  {done:,}/{total:,} events"
        f"  {rate_text} ev/s  ETA {_duration(eta)}"
    )


class ProgressBar(threading.Thread):
    """Draws the replay's progress on stderr.

    In place on a terminal; otherwise a line every ``every_s`` seconds.
    """

    def __init__(
        self,
        counters: ReplayCounters,
        stream: TextIO,
        tty: bool,
        every_s: float | None = None,
    ) -> None:
        super().__init__(name="replay-progress", daemon=True)
        self.counters = counters
        self.stream = stream
        self.tty = tty
        self.every_s = every_s if every_s is not None else (0.2 if tty else 10.0)
        self.started = time.monotonic()
        self.done = threading.Event()

    def _draw(self, final: bool = False) -> None:
        c = self.counters
        line = progress_line(c.events, c.total, time.monotonic() - self.started)
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write("replay " + line + "\n")
        self.stream.flush()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self._draw()

    def finish(self) -> None:
        """Stop drawing, with a last line."""
        self.done.set()
        if self.is_alive():
            self.join(1.0)
        self._draw(final=True)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ReplaySummary:
    """What one process of a replay did."""

    run_id: str
    outputs: Outputs
    planned_events: int
    events: int
    decisions: dict[str, int]
    stale: int
    reasons: dict[str, int]
    dead_letters: dict[str, int]
    state_writes: int
    regime_events: int
    elapsed_s: float
    interrupted: bool
    process: str
    limits: dict[str, float]
    models: Path | None

    @property
    def events_per_s(self) -> float:
        """Input events read per second of the run."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def text(self) -> str:
        """The end-of-run summary."""
        decided = sum(self.decisions.values())
        by_outcome = ", ".join(
            f"{k}={self.decisions.get(k, 0):,}" for k in ("APPROVE", "REDUCE", "REJECT")
        )
        letters = ", ".join(f"{k}={v:,}" for k, v in sorted(self.dead_letters.items())) or "none"
        lines = [
            f"replay {self.run_id}{' (interrupted)' if self.interrupted else ''}{self.process}",
            f"  events     {self.events:,} of {self.planned_events:,} planned"
            f" in {self.elapsed_s:.2f} s ({self.events_per_s:,.0f} events/s)",
            f"  decisions  {decided:,}: {by_outcome}; stale {self.stale:,}",
            f"  dead letters {sum(self.dead_letters.values()):,}: {letters}",
            f"  state writes {self.state_writes:,}; regime events {self.regime_events:,}",
            f"  output     {self.outputs.describe()}",
        ]
        if self.limits or self.models:
            what_if = ", ".join(
                [f"{k}={v:g}" for k, v in self.limits.items()]
                + ([f"models {self.models}"] if self.models else [])
            )
            lines.append(f"  overrides  {what_if}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "run_id": self.run_id,
            "planned_events": self.planned_events,
            "events": self.events,
            "decisions": self.decisions,
            "stale": self.stale,
            "reasons": self.reasons,
            "dead_letters": self.dead_letters,
            "state_writes": self.state_writes,
            "regime_events": self.regime_events,
            "elapsed_s": self.elapsed_s,
            "events_per_s": self.events_per_s,
            "interrupted": self.interrupted,
            "outputs": {
                "scores": self.outputs.scores,
                "dead_letters": self.outputs.dead_letters,
                "regimes": self.outputs.regimes,
                "redis_prefix": self.outputs.redis_prefix,
            },
            "limits": self.limits,
            "models": str(self.models) if self.models else None,
        }


def _existing_records(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    from dataflows.kafka_io import consumer_config

    config = consumer_config(settings)
    out: dict[str, int] = {}
    scanner = RangeScanner(config)
    try:
        for topic, partition in topic_partitions(config, topics):
            low, end = scanner.bounds(topic, partition)
            if end > low:
                out[topic] = out.get(topic, 0) + end - low
    finally:
        scanner.close()
    return out


def prepare(settings: Settings, opts: ReplayOptions) -> tuple[Settings, ReplayPlan, Outputs]:
    """Validate the options, resolve the time range and check the outputs."""
    from dataflows.kafka_io import check_broker, consumer_config, ensure_topics

    if not settings.brokers:
        raise ConfigError("riskstream replay needs RISKSTREAM_KAFKA_BOOTSTRAP (the topics to read)")
    if opts.from_ns is not None and opts.to_ns is not None and opts.from_ns >= opts.to_ns:
        raise ConfigError(
            f"--from {format_time(opts.from_ns)} is not before --to {format_time(opts.to_ns)}"
        )
    if opts.out_file is not None and opts.processes > 1:
        raise ConfigError("--out-file is written by one process; use --out-topic with -a")
    settings = with_limits(settings, opts.limits)
    kinds = select_topics(settings, list(opts.topics))
    outputs = plan_outputs(settings, opts, kinds)
    check_broker(settings)
    config = consumer_config(settings)
    partitions = topic_partitions(config, kinds)
    plan = resolve_plan(config, kinds, partitions, opts.from_ns, opts.to_ns)
    if plan.events == 0:
        total, first, last = available_span(config, partitions)
        where = ", ".join(kinds)
        if total == 0:
            raise ConfigError(f"no data to replay: the topics {where} are empty")
        raise ConfigError(
            f"no data to replay between {format_time(opts.from_ns)} and"
            f" {format_time(opts.to_ns)} on {where}; they hold {total:,} records from"
            f" {format_time(None if first is None else first * NS_PER_MS)} to"
            f" {format_time(None if last is None else last * NS_PER_MS)}"
        )
    if opts.plan_only:
        return settings, plan, outputs
    if not outputs.to_file:
        wanted = [t for t in (outputs.scores, outputs.dead_letters, outputs.regimes) if t]
        if opts.leader and not opts.append:
            found = _existing_records(settings, [t for t in wanted if _exists(config, t)])
            if found:
                held = ", ".join(f"{t} ({n:,} records)" for t, n in found.items())
                raise ConfigError(
                    f"replay output already holds records: {held}; choose another"
                    " --out-topic, or pass --append"
                )
        ensure_topics(settings, wanted)
    elif opts.leader and Path(outputs.scores).exists() and not opts.append:
        raise ConfigError(f"--out-file {outputs.scores!r} exists; remove it or choose another")
    if outputs.redis_prefix is not None and settings.redis_url is not None:
        from dataflows.redis_sink import check_redis

        check_redis(settings.redis_url.get_secret_value())
    return settings, plan, outputs


def _exists(config: dict[str, Any], topic: str) -> bool:
    try:
        topic_partitions(config, [topic])
    except ConfigError:
        return False
    return True


def run_replay(
    settings: Settings,
    opts: ReplayOptions,
    *,
    stderr: TextIO | None = None,
    on_signals: bool = False,
) -> ReplaySummary:
    """Run a replay to the end of its range; its summary (this process's share)."""
    from bytewax._bytewax import cli_main

    from dataflows.app import configure_models

    settings, plan, outputs = prepare(settings, opts)
    err = stderr or sys.stderr
    counters = ReplayCounters()
    stop = threading.Event()
    # the what-if model set (verified: a manifest or artifact mismatch is refused), else
    # the shipped one, whatever an earlier run in this process used
    configure_models(settings.model_copy(update={"model_dir": opts.models or settings.model_dir}))
    flow = replay_flow(settings, plan, outputs, counters, speed=opts.speed, stop=stop)
    if on_signals:
        from dataflows.cli import _stop_on_signals

        _stop_on_signals(stop)
    tty = err.isatty()
    show = opts.progress == "always" or (opts.progress == "auto" and tty)
    bar = ProgressBar(counters, err, tty) if show else None
    started = time.monotonic()
    if bar is not None:
        bar.start()
    ok = False
    try:
        with collect_less():
            cli_main(
                flow,
                workers_per_process=opts.workers,
                process_id=opts.process_id,
                addresses=list(opts.addresses) or None,
            )
        ok = True
    except Exception as exc:
        from dataflows.cli import _interrupted

        if not _interrupted(exc):
            raise
        stop.set()
    finally:
        if bar is not None:
            bar.finish()
        if outputs.to_file and not ok:
            for sink_path in (outputs.scores, outputs.dead_letters, outputs.regimes):
                if sink_path:
                    Path(sink_path + ".tmp").unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    process = f" [process {opts.process_id or 0} of {opts.processes}]" if opts.processes > 1 else ""
    with counters.lock:
        return ReplaySummary(
            outputs.run_id,
            outputs,
            counters.total,
            counters.events,
            dict(counters.decisions),
            counters.stale,
            dict(counters.reasons),
            dict(counters.dead_letters),
            counters.state_writes,
            counters.regime_events,
            elapsed,
            stop.is_set(),
            process,
            dict(opts.limits),
            opts.models,
        )


# --------------------------------------------------------------------------- CLI


def _pair(text: str, what: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return name.strip(), value.strip()


def _limit(text: str) -> tuple[str, float]:
    name, value = _pair(text, "NAME=VALUE (e.g. concentration=0.2)")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--limit {name}: expected a number, got {value!r}"
        ) from None


def options_from(args: argparse.Namespace) -> ReplayOptions:
    """Validated options from the command line."""
    now = time.time_ns()
    return ReplayOptions(
        from_ns=None if args.from_ is None else parse_time(args.from_, "--from", now),
        to_ns=None if args.to is None else parse_time(args.to, "--to", now),
        topics=tuple(args.topics or ()),
        speed=args.speed,
        out_topic=args.out_topic,
        out_file=args.out_file,
        redis_prefix=args.redis_prefix,
        no_redis=args.no_redis,
        run_id=args.run_id,
        limits=tuple(args.limit or ()),
        models=args.models,
        allow_live=args.allow_live,
        append=args.append,
        workers=args.workers,
        process_id=args.process_id,
        addresses=tuple(a for a in (args.addresses or "").split(";") if a),
        progress=args.progress,
        plan_only=args.plan,
    )


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a time range of the input topics through the pre-trade flow."""
    opts = options_from(args)
    if opts.plan_only:
        _, plan, outputs = prepare(settings, opts)
        print(plan.describe())
        print(outputs.describe())
        return 0
    summary = run_replay(settings, opts, on_signals=True)
    print(summary.text())
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    return 130 if summary.interrupted else 0


def add_replay_parser(sub: argparse._SubParsersAction) -> None:
    """``riskstream replay``."""
    from dataflows.cli import _positive_int

    p = sub.add_parser(
        "replay",
        help="re-run the pre-trade flow over a time range of the input topics",
        description=(
            "Reads every input partition from the offsets at --from to the offsets at --to"
            " (Kafka timestamps), runs the pre-trade flow in replay mode and writes its"
            " decisions to a topic or an Avro file of their own. Times: " + TIME_FORMATS + "."
        ),
    )
    p.add_argument("--from", dest="from_", metavar="TIME", help="start (default: the beginning)")
    p.add_argument("--to", metavar="TIME", help="end, exclusive (default: the current end)")
    p.add_argument(
        "--topics",
        nargs="+",
        metavar="TOPIC",
        help="input topics: roles (ticks instruments proposals executions control),"
        " ROLE=TOPIC, or topic names (default: all five)",
    )
    p.add_argument(
        "--speed",
        type=parse_speed,
        default=None,
        metavar="max|realtime|xN",
        help="pace by event time (default: max, no pacing)",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-topic", metavar="NAME", help="decisions topic (NAME.dlq, NAME.regimes)")
    out.add_argument("--out-file", type=Path, metavar="PATH", help="Avro container file (.avro)")
    p.add_argument("--redis-prefix", help="Redis key prefix (default: replay:<run id>:)")
    p.add_argument("--no-redis", action="store_true", help="write no Redis state")
    p.add_argument("--run-id", help="id of this replay (default: a hash of its arguments)")
    p.add_argument(
        "--limit", type=_limit, action="append", metavar="NAME=VALUE",
        help="what-if limit, e.g. concentration=0.2 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--models", type=Path, default=None, metavar="DIR",
        help="what-if model set: manifest.json + artifacts, verified by sha256"
        " (default: the shipped models)",
    )  # fmt: skip
    p.add_argument("--allow-live", action="store_true", help="allow live topics / Redis prefix")
    p.add_argument("--append", action="store_true", help="allow outputs that already hold data")
    p.add_argument("-w", "--workers", type=_positive_int, default=1, help="worker threads")
    p.add_argument("-i", "--process-id", type=int, default=None, help="this process's index")
    p.add_argument("-a", "--addresses", default=None, help='all processes, "h1:p1;h2:p2"')
    p.add_argument(
        "--progress", choices=["auto", "always", "never"], default="auto",
        help="progress bar on stderr (auto: on a terminal)",
    )  # fmt: skip
    p.add_argument("--plan", action="store_true", help="print the offsets to read and stop")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")
    p.set_defaults(func=cmd_replay)
