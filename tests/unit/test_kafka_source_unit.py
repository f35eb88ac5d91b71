"""The bounded source partition keeps exactly the messages before its end offset."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError

from dataflows.kafka_source import _Partition


@dataclass
class Msg:
    """The two methods ``_usable`` reads of a confluent-kafka message."""

    at: int | None
    err: KafkaError | None = None

    def offset(self) -> int | None:
        return self.at

    def error(self) -> KafkaError | None:
        return self.err


EOF_ = KafkaError(KafkaError._PARTITION_EOF)


def partition(end: int | None) -> _Partition:
    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "unit"}
    return _Partition(config, "t", 0, 0, 100, tail=False, idle_every_ns=0, end=end)


def test_usable_when_batch_crosses_end_and_hits_partition_eof_keeps_only_before_end():
    part = partition(end=5)
    msgs = [Msg(3), Msg(4), Msg(5), Msg(6), Msg(None, EOF_)]

    good, finished = part._usable(msgs)  # type: ignore[arg-type]

    assert [m.offset() for m in good] == [3, 4] and finished
    part.close()


def test_usable_when_batch_ends_before_end_offset_keeps_all_and_goes_on():
    part = partition(end=10)

    good, finished = part._usable([Msg(3), Msg(4)])  # type: ignore[arg-type]

    assert [m.offset() for m in good] == [3, 4] and not finished
    part.close()


def test_usable_when_unbounded_partition_hits_eof_finishes_with_every_message():
    part = partition(end=None)

    good, finished = part._usable([Msg(7), Msg(None, EOF_)])  # type: ignore[arg-type]

    assert [m.offset() for m in good] == [7] and finished
    part.close()
