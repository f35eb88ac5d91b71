"""A proposal partition read long after the ticks gives the decisions of an interleaved read.

The whole pre-trade flow in memory (replay mode), over a seeded simulated market on two
tick and two proposal partitions: once in event-time order, once with proposal partition
1 held back until every tick has been read (more than 4,096 ticks of each instrument run
ahead of it), once with every proposal last. Decisions are compared field by field, all
but the wall-clock ones.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from dataflows.producer import ProduceOptions, simulated_events
from operators.config import EngineConfig
from schemas.codec import SingleObjectCodec
from tests.factories import INPUT_KINDS, KEYS, T0, TOPIC_OF

WALL_CLOCK = ("ts_decided", "latency_us")
PROPOSALS = TOPIC_OF["TradeProposal"]
CONFIG = EngineConfig(
    control=KEYS,
    wait_for_data=True,
    bars_per_day=1.0,
    proposal_parts=((PROPOSALS, 0), (PROPOSALS, 1)),
)


def messages() -> list[KafkaSourceMessage]:
    """The market as Kafka messages in event-time order, ticks and proposals on 2 partitions."""
    opts = ProduceOptions(tick_rate=3000, proposal_rate=20, portfolios=4, seed=21, duration_s=30)
    codec = SingleObjectCodec()
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for kind, rec in simulated_events(opts, T0):
        key = {"MarketTick": "instrument_id", "TradeProposal": "portfolio_id"}.get(kind)
        partition = zlib.crc32(rec[key].encode()) % 2 if key else 0
        topic = TOPIC_OF[kind]
        offset = offsets[topic, partition] = offsets.get((topic, partition), -1) + 1
        stamp = (1, rec["ts_event"] // 1_000_000)
        value = codec.encode(kind, rec)
        out.append(
            KafkaSourceMessage(
                None, value, topic, offset=offset, partition=partition, timestamp=stamp
            )
        )
    return out


def decide(msgs: list[KafkaSourceMessage], batch_size: int) -> dict[str, dict[str, Any]]:
    """The flow's decisions by proposal id, wall-clock fields dropped."""
    scores: list[Any] = []
    sinks = PretradeSinks(TestingSink(scores), TestingSink([]), TestingSink([]))
    source = TestingSource(msgs, batch_size=batch_size)
    run_main(build_pretrade_flow(source, sinks, CONFIG, SingleObjectCodec(), INPUT_KINDS))
    out = {}
    for d in scores:
        r = {k: v for k, v in d.record.items() if k not in WALL_CLOCK}
        out[r["proposal_id"]] = r
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Fields that differ (NaN equal to NaN)."""
    same = lambda x, y: x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))  # noqa: E731
    return [(k, a[k], b.get(k)) for k in a if not same(a[k], b.get(k))]


def test_decisions_when_a_proposal_partition_is_read_after_all_ticks_equal_the_interleaved_read():
    msgs = messages()
    is_late = lambda m: m.topic == PROPOSALS and m.partition == 1  # noqa: E731
    held_back = [m for m in msgs if not is_late(m)] + [m for m in msgs if is_late(m)]
    proposals_last = [m for m in msgs if m.topic != PROPOSALS] + [
        m for m in msgs if m.topic == PROPOSALS
    ]
    ticks = [m for m in msgs if m.topic == TOPIC_OF["MarketTick"]]
    late = [m for m in msgs if is_late(m)]
    assert len(ticks) > 80_000 and len(late) > 200

    interleaved = decide(msgs, batch_size=100)
    assert len(interleaved) == sum(m.topic == PROPOSALS for m in msgs)
    assert sum(not r["stale"] for r in interleaved.values()) > 0.9 * len(interleaved)
    for order in (held_back, proposals_last):
        got = decide(order, batch_size=500)  # batches as a Kafka source reads them
        assert set(got) == set(interleaved)
        mismatched = {
            pid: differences(r, got[pid])
            for pid, r in interleaved.items()
            if differences(r, got[pid])
        }
        assert mismatched == {}
