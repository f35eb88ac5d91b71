"""The Kafka input: every input partition, plus idle markers that let event time advance.

Each partition yields its messages and, when it has nothing new, a ``SourceIdle`` marker:
live, "caught up as of this wall-clock time"; at the end of a bounded read, "no more
data" (``END``). Markers travel the same path as the partition's data, after it, so
downstream steps can fence on them. Live markers of one worker's partitions go out
together, every ``idle_every_ns`` (:class:`IdleClock`): one batch that every step takes
in one call, not one marker per partition.

Optional per-partition ``start_offsets`` and ``end_offsets`` (replays of a time range) read
``[start, end)``: a partition ends, with ``END``, once it has read the message before
``end``, or at the end of the partition if that comes first (an offset may hold a
transaction marker that is never delivered). Find end offsets by consuming (see
``dataflows.replay``): the embedded broker's ListOffsets "latest" is not the true end.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from operators import metrics
from operators.errors import InfrastructureError
from operators.records import END_OF_TIME, MessageBlock, SourceIdle


def _offset(msg: Message) -> int:
    return msg.offset() or 0


_BACKOFF_NS = 1_000_000
"""How long a partition whose last poll was empty waits before the next (polls don't block);
it doubles with every further empty poll, up to ``_BACKOFF_MAX_NS``, and a message resets
it. Wake-ups fall on a grid of that step, so idle partitions wake together: one worker
activation (a pass over every step of the flow) serves them all."""
_BACKOFF_MAX_NS = 4_000_000


class IdleClock:
    """The live idle markers of one worker's partitions, sent together on a shared grid.

    A caught-up partition reports each empty poll; the first partition polled after a grid
    tick (every ``every_ns``) carries every report, after its own data. A report is made
    after the data its partition had read, on the same worker, so it still follows that
    data down the flow. Downstream, one batch of markers is one ``Progress`` per lane
    instead of one per partition (a worker holds 20 input partitions by default).
    """

    def __init__(self, every_ns: int) -> None:
        self.every_ns = max(1, every_ns)
        self._next = 0
        self._reports: dict[tuple[str, int], int] = {}

    def report(self, topic: str, partition: int, polled_ns: int) -> None:
        """``partition`` of ``topic`` had nothing new at ``polled_ns``."""
        self._reports[(topic, partition)] = polled_ns

    def due(self, now_ns: int) -> list[SourceIdle]:
        """The markers to send now (none before the next grid tick)."""
        if now_ns < self._next or not self._reports:
            return []
        self._next = (now_ns // self.every_ns + 1) * self.every_ns
        markers = [SourceIdle(t, p, ts) for (t, p), ts in self._reports.items()]
        self._reports.clear()
        return markers


def _part_name(topic: str, partition: int) -> str:
    return f"{partition}-{topic}"


def list_partitions(
    config: dict[str, Any], topics: list[str], timeout: float = 10.0
) -> list[tuple[str, int]]:
    """(topic, partition) of every partition of ``topics``."""
    admin = AdminClient({k: v for k, v in config.items() if k != "group.id"})
    meta = admin.list_topics(timeout=timeout)
    out: list[tuple[str, int]] = []
    for topic in topics:
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            raise InfrastructureError(f"topic {topic!r} does not exist on the broker")
        out.extend((topic, p) for p in sorted(found.partitions))
    return out


class _Partition(StatefulSourcePartition[Any, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        tail: bool,
        clock: IdleClock,
        end: int | None = None,
    ) -> None:
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic, self._partition = topic, partition
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail and end is None
        self._clock = clock
        self._backoff_ns = _BACKOFF_NS
        self._live = False
        self._next_lag = 0.0
        self._end = end
        self._done = False
        self._awake: datetime | None = None

    def _finish(self, batch: list[Any]) -> list[Any]:
        self._done = True
        batch.append(SourceIdle(self._topic, self._partition, END_OF_TIME))
        return batch

    def _caught_up(self) -> bool:
        """Whether the partition has read all the broker had when a fetch last answered.

        Until then (just started or restarted, reading a backlog) an empty poll does not
        mean "nothing before now is still to come", so no idle marker is sent. Before the
        first message the position may still be logical: the beginning is the low
        watermark, the end the high one (an empty partition is caught up at once).
        """
        if not self._live:
            tp = TopicPartition(self._topic, self._partition)
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            here = {OFFSET_BEGINNING: low, OFFSET_END: high}.get(self._offset, self._offset)
            self._live = 0 <= high <= here
        return self._live

    def _report_lag(self) -> None:
        """Input lag from the high watermark librdkafka already has (no broker call)."""
        now = time.monotonic()
        if now < self._next_lag:
            return
        self._next_lag = now + 1.0
        tp = TopicPartition(self._topic, self._partition)
        _, high = self._consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            lag = max(0, high - self._offset)
            metrics.INPUT_LAG.labels(self._topic, str(self._partition)).set(lag)

    def next_batch(self) -> list[Any]:
        if self._done:
            raise StopIteration
        self._report_lag()
        end = self._end
        if end is not None and self._offset >= end:
            return self._finish([])
        polled_ns = time.time_ns()
        msgs = self._consumer.consume(self._batch_size, 0)
        self._pause(bool(msgs), polled_ns)
        good, finished = self._usable(msgs)
        batch: list[Any] = []
        if good:
            batch.append(self._block(good))
            self._offset = _offset(good[-1]) + 1
        if finished or (end is not None and self._offset >= end):
            return self._finish(batch)
        if not batch and self._tail and self._caught_up():
            # nothing in the poll: caught up as of the poll
            self._clock.report(self._topic, self._partition, polled_ns)
        if self._tail:
            batch.extend(self._clock.due(polled_ns))
        return batch

    def _pause(self, got: bool, polled_ns: int) -> None:
        """Nothing there: let the worker run its other steps (or sleep) for a while."""
        if got:
            self._awake, self._backoff_ns = None, _BACKOFF_NS
            return
        step = self._backoff_ns
        self._awake = datetime.fromtimestamp((polled_ns // step + 1) * step / 1e9, UTC)
        self._backoff_ns = min(step * 2, _BACKOFF_MAX_NS)

    def _usable(self, msgs: list[Message]) -> tuple[list[Message], bool]:
        """The data messages before the end offset, and whether the partition is finished."""
        finished = False
        if any(m.error() is not None for m in msgs):
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() == KafkaError._PARTITION_EOF and not self._tail:
                    finished = True
                    break
                # other errors are transient: librdkafka retries by itself
            msgs = good
        end = self._end
        if end is not None and msgs and _offset(msgs[-1]) >= end:
            return [m for m in msgs if _offset(m) < end], True
        return msgs, finished

    def _block(self, msgs: list[Message]) -> MessageBlock:
        stamps = [m.timestamp() for m in msgs]
        return MessageBlock(
            self._topic,
            self._partition,
            cast("list[int]", [m.offset() for m in msgs]),  # data messages have offsets
            [t[1] * 1_000_000 if t[0] else 0 for t in stamps],
            [m.key() for m in msgs],
            [m.value() for m in msgs],
        )

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class RiskSource(FixedPartitionedSource[Any, int]):
    """Assign-based source over every partition of the input topics (offsets in snapshots).

    ``start_offsets`` / ``end_offsets`` map ``(topic, partition)`` to the first offset to
    read and the offset to stop before; partitions not in them start at the beginning (or
    the end, ``from_end``) and stop as ``tail`` says. A partition with an end offset is a
    bounded read whatever ``tail`` is.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topics: list[str],
        *,
        from_end: bool = False,
        tail: bool = True,
        batch_size: int = 1000,
        idle_every_ns: int = 5_000_000,
        start_offsets: dict[tuple[str, int], int] | None = None,
        end_offsets: dict[tuple[str, int], int] | None = None,
    ) -> None:
        self.config = {
            "group.id": "riskstream-unused",  # assign() only: offsets live in snapshots
            "enable.auto.commit": False,
            "enable.partition.eof": not tail,
            **config,
        }
        self.topics = topics
        self.start = OFFSET_END if from_end else OFFSET_BEGINNING
        self.tail = tail
        self.batch_size = batch_size
        self.idle_every_ns = idle_every_ns
        self.start_offsets = dict(start_offsets or {})
        self.end_offsets = dict(end_offsets or {})
        self._clocks: dict[int, IdleClock] = {}
        self._clocks_lock = threading.Lock()
        if self.end_offsets:
            self.config["enable.partition.eof"] = True

    def list_parts(self) -> list[str]:
        return [_part_name(t, p) for t, p in list_partitions(self.config, self.topics)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        index, topic = for_part.split("-", 1)
        part = (topic, int(index))
        offset = self.start_offsets.get(part, self.start) if resume_state is None else resume_state
        return _Partition(
            dict(self.config),
            topic,
            int(index),
            offset,
            self.batch_size,
            self.tail,
            self._clock(),
            self.end_offsets.get(part),
        )

    def _clock(self) -> IdleClock:
        """The calling worker's idle clock (a worker builds and polls its partitions)."""
        with self._clocks_lock:
            return self._clocks.setdefault(threading.get_ident(), IdleClock(self.idle_every_ns))
