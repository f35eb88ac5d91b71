"""Kafka plumbing: client settings, topic creation, and sinks that encode records."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.settings import Settings
from operators import metrics
from operators.errors import InfrastructureError
from schemas.codec import Codec

T = TypeVar("T")
log = logging.getLogger(__name__)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """Consumer settings the embedded broker needs (FACTS.md), then the pass-through ones."""
    return {
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "socket.connection.setup.timeout.ms": 5000,
        # Bytewax builds its AdminClient from these too, which warns about every consumer
        # property: log errors only.
        "log_level": 3,
        **settings.kafka_client_config(),
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent producer with a short linger, then the pass-through settings."""
    return {
        "enable.idempotence": True,
        "linger.ms": 2,
        "socket.connection.setup.timeout.ms": 5000,
        **settings.kafka_client_config(),
    }


def check_broker(settings: Settings, timeout: float = 10.0) -> AdminClient:
    """An AdminClient of a reachable cluster, or InfrastructureError within ``timeout``."""
    admin = AdminClient(dict[str, Any](settings.kafka_client_config()))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise InfrastructureError(
            f"cannot reach Kafka at {settings.kafka_bootstrap!r} within {timeout:g}s: {exc}."
            " Check RISKSTREAM_KAFKA_BOOTSTRAP, or unset it to use the embedded broker (demo)."
        ) from None
    return admin


def ensure_topics(settings: Settings, topics: Iterable[str], timeout: float = 10.0) -> None:
    """Create the topics that do not exist yet and wait until they are visible."""
    admin = check_broker(settings, timeout)
    wanted = list(dict.fromkeys(topics))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in wanted if t not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, settings.topic_partitions, 1) for t in missing], operation_timeout=timeout
        )
        for topic, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise InfrastructureError(f"cannot create topic {topic!r}: {exc}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(wanted) <= set(admin.list_topics(timeout=timeout).topics):
            return
        time.sleep(0.1)
    raise InfrastructureError(f"topics {missing} did not appear within {timeout:g}s")


class _RecordSinkPartition(StatelessSinkPartition[T]):
    def __init__(self, sink: RecordSink[T]) -> None:
        self._sink = sink
        self._producer = Producer(sink.config | {"on_delivery": self._delivered})
        self._failed = 0

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        """Count and log a record the broker never acknowledged (librdkafka gave up)."""
        if err is None:
            return
        self._failed += 1
        metrics.OUTPUT_FAILURES.labels(self._sink.topic, err.name()).inc()
        if self._failed == 1 or self._failed % 1000 == 0:
            log.error(
                "%d record(s) to %s not delivered, last: %s", self._failed, self._sink.topic, err
            )

    def write_batch(self, items: list[T]) -> None:
        s = self._sink
        for item in items:
            record = s.record_of(item)
            key = s.key_of(item)
            self._producer.produce(s.topic, s.codec.encode(s.record_name, record), key)
            self._producer.poll(0)
        if s.flush_each_batch:
            self._producer.flush()
            if self._failed:  # a snapshot must not cover them: stop, recovery resends them
                raise InfrastructureError(
                    f"{self._failed} record(s) to {s.topic} were not delivered; stopping so"
                    " that recovery replays them from the last snapshot"
                )
        if s.on_written is not None:
            s.on_written(items)

    def close(self) -> None:
        self._producer.flush()


class RecordSink(DynamicSink[T], Generic[T]):
    """Encodes each item's record with the codec and produces it.

    With ``flush_each_batch`` (recovery on), every batch is acknowledged by the broker
    before the flow goes on, so a snapshot never covers output still in the producer:
    at-least-once. Without it (no recovery; replays), librdkafka sends in the background
    and ``close`` flushes: no worker waits a broker round trip per batch.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        record_name: str,
        codec: Codec,
        record_of: Callable[[T], dict[str, Any]],
        key_of: Callable[[T], bytes | None],
        on_written: Callable[[list[T]], None] | None = None,
        flush_each_batch: bool = True,
    ) -> None:
        self.config = config
        self.flush_each_batch = flush_each_batch
        self.topic = topic
        self.record_name = record_name
        self.codec = codec
        self.record_of = record_of
        self.key_of = key_of
        self.on_written = on_written

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RecordSinkPartition[T]:
        return _RecordSinkPartition(self)


def follow(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = True,
    timeout: float = 10.0,
    poll_s: float = 0.2,
) -> Iterable[tuple[bytes | None, bytes | None, int]]:
    """Yield (key, value, kafka timestamp ms) of every message of ``topic``, forever.

    Assign-based (no group join wait); yields ``(None, None, -1)`` on idle polls so that
    callers can check their stop condition. ``poll_s`` bounds how long one poll waits for a
    full batch: keep it small where latency is measured.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "group.id": "riskstream-follow",
            "enable.auto.commit": False,
            **{k: v for k, v in consumer_config(settings).items()},
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        parts = meta.topics[topic].partitions
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in parts])
        while True:
            msgs = consumer.consume(500, poll_s)
            if not msgs:
                yield None, None, -1
            for m in msgs:
                if m.error() is None:
                    yield m.key(), m.value(), m.timestamp()[1]
    finally:
        consumer.close()


class Publisher:
    """Encodes records and produces them to their topics."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self.producer = Producer(producer_config(settings))

    def send(
        self,
        role: str,
        kind: str,
        record: dict[str, Any],
        key: str | None = None,
        *,
        event_timestamp: bool = False,
    ) -> None:
        """Encode ``record`` as ``kind`` and produce it to the topic of ``role``.

        ``event_timestamp`` stamps the Kafka record with the record's ts_event (replays of
        history) instead of the produce time.
        """
        value = self.codec.encode(kind, record)
        topic = self.settings.topics.name(role)
        ts_ms = record["ts_event"] // 1_000_000 if event_timestamp else 0
        while True:
            try:
                self.producer.produce(topic, value, key.encode() if key else None, timestamp=ts_ms)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for delivery; the number of messages still undelivered."""
        return int(self.producer.flush(timeout))


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop

    def next_batch(self) -> list[Any]:
        if self._stop.is_set():
            raise StopIteration
        return cast(list[Any], self._inner.next_batch())

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """A source whose partitions end when ``stop`` is set, so the flow finishes cleanly.

    Ending the input (rather than interrupting Bytewax) lets every step see EOF and every
    sink flush: the graceful stop for SIGINT / SIGTERM.
    """

    def __init__(self, inner: FixedPartitionedSource[Any, Any], stop: threading.Event) -> None:
        self.inner = inner
        self.stop = stop

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any | None
    ) -> _StoppablePartition:
        return _StoppablePartition(
            self.inner.build_part(step_id, for_part, resume_state), self.stop
        )
