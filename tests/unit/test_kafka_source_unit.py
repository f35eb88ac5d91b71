"""The bounded source partition keeps exactly the messages before its end offset; idle
partitions back off and send their markers together."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError

from dataflows.kafka_source import IdleClock, _Partition
from operators.records import SourceIdle


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
    return _Partition(config, "t", 0, 0, 100, tail=False, clock=IdleClock(1), end=end)


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


def test_idle_clock_when_partitions_report_sends_their_markers_together_once_per_tick():
    clock = IdleClock(every_ns=5)
    clock.report("a", 0, 11)
    clock.report("b", 1, 12)
    clock.report("a", 0, 13)  # a later empty poll replaces the earlier one

    first = clock.due(13)
    clock.report("c", 2, 14)

    assert first == [SourceIdle("a", 0, 13), SourceIdle("b", 1, 12)]
    assert clock.due(14) == []  # the next tick is at 15
    assert clock.due(15) == [SourceIdle("c", 2, 14)]
    assert clock.due(21) == []  # nothing reported


def test_pause_when_polls_stay_empty_backs_off_on_a_shared_grid_and_a_message_resets_it():
    part = partition(end=None)
    at = 1_767_225_600_000_000_000 + 123_456  # ns

    waits = []
    for _ in range(4):
        part._pause(False, at)
        waits.append(part.next_awake())
    part._pause(True, at)

    ms = [round((w.timestamp() * 1e9 - at) / 1e6, 3) for w in waits]
    assert ms == [0.877, 1.877, 3.877, 3.877]  # the next multiple of 1, 2, 4, 4 ms
    assert part.next_awake() is None
    part._pause(False, at)
    assert part.next_awake().timestamp() * 1e9 - at < 1e6  # back to 1 ms
