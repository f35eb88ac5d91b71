"""The Kafka record sink when the broker never acknowledges: counted, logged, and with
recovery on the flow stops (a snapshot must not cover records that were lost)."""

from __future__ import annotations

import logging

import pytest

from dataflows.kafka_io import RecordSink
from operators import metrics
from operators.errors import InfrastructureError
from schemas.codec import SingleObjectCodec
from tests.factories import proposal

NOWHERE = {
    "bootstrap.servers": "127.0.0.1:1",  # nothing listens: every delivery times out
    "message.timeout.ms": 200,
    "socket.connection.setup.timeout.ms": 1000,
    "log_level": 0,
}
TOPIC = "sink-test.proposals"


def _sink(flush_each_batch: bool) -> RecordSink[dict]:
    return RecordSink(
        NOWHERE,
        TOPIC,
        "TradeProposal",
        SingleObjectCodec(),
        record_of=lambda r: r,
        key_of=lambda r: r["portfolio_id"].encode(),
        flush_each_batch=flush_each_batch,
    )


def _failures() -> float:
    return sum(
        s.value
        for m in metrics.OUTPUT_FAILURES.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["topic"] == TOPIC
    )


def test_write_batch_when_recovering_and_broker_never_acks_raises_and_counts(caplog):
    part = _sink(flush_each_batch=True).build("out", 0, 1)
    before = _failures()

    with caplog.at_level(logging.ERROR), pytest.raises(InfrastructureError, match="recovery"):
        part.write_batch([proposal(), proposal()])

    assert _failures() - before == 2
    assert "not delivered" in caplog.text


def test_close_when_not_recovering_and_broker_never_acks_counts_each_record():
    part = _sink(flush_each_batch=False).build("out", 0, 1)
    before = _failures()

    part.write_batch([proposal(), proposal(), proposal()])  # background delivery: no wait
    part.close()  # flushes: the timeouts are reported here

    assert _failures() - before == 3
