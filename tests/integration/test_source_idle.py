"""The live source's idle markers: none before a backlog is read, at once on empty topics."""

from __future__ import annotations

import time

import pytest

from dataflows.kafka_io import consumer_config
from dataflows.kafka_source import RiskSource
from operators.records import MessageBlock, SourceIdle
from tests.factories import proposal
from tests.integration.conftest import publish


def poll(source: RiskSource, part: str, seconds: float) -> list[object]:
    """Items one live source partition yields in ``seconds``."""
    partition = source.build_part("in", part, None)
    out: list[object] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            out.extend(partition.next_batch())
    finally:
        partition.close()
    return out


@pytest.mark.parametrize("from_end", [False, True])
def test_live_source_when_partition_never_held_a_record_sends_idle_markers(settings, from_end):
    topic = settings.topics.name("control")
    source = RiskSource(consumer_config(settings), [topic], from_end=from_end)

    items = poll(source, f"0-{topic}", 3.0)

    assert any(isinstance(i, SourceIdle) for i in items)


def test_live_source_when_reading_a_backlog_sends_idle_markers_only_after_it(settings):
    publish(settings, [("TradeProposal", proposal(portfolio_id="PF-1")) for _ in range(2000)])
    topic = settings.topics.name("proposals")
    source = RiskSource(consumer_config(settings), [topic], batch_size=50)

    read = 0
    for p in range(settings.topic_partitions):
        items = poll(source, f"{p}-{topic}", 3.0)
        blocks = [n for n, i in enumerate(items) if isinstance(i, MessageBlock)]
        # (a worker's partitions send their markers together: keep this one's)
        idles = [n for n, i in enumerate(items) if isinstance(i, SourceIdle) and i.partition == p]
        read += sum(len(items[n]) for n in blocks)  # type: ignore[arg-type]
        assert idles, "caught up: markers follow"
        assert not blocks or min(idles) > max(blocks), "a marker before the backlog was read"
    assert read == 2000
