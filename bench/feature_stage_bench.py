"""Feature-stage throughput: ticks/s of the real pre-trade dataflow, in memory, one worker.

The flow runs from encoded ticks, in blocks of 1,000 messages as the Kafka source emits
them, through batch decode, validation, the per-instrument kernel engine and bar closes,
to null sinks. Baseline, in the same run: the same messages one by one through a Bytewax
flow that only decodes each with fastavro (what a per-message Avro flow costs at least).
Run: ``python -m bench.feature_stage_bench``.
"""

from __future__ import annotations

import itertools
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from bench.common import best_of, write_results
from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from models.simulator import MarketSimulator
from operators.config import EngineConfig
from operators.ingest import as_blocks
from operators.records import MessageBlock
from schemas.codec import SingleObjectCodec

TICKS = 200_000
BLOCK = 1000
TOPIC = "market.ticks"
KINDS = {TOPIC: "MarketTick", "reference.instruments": "Instrument"}


class _Drop(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        return None


class NullSink(DynamicSink[Any]):
    """Discards everything (measures the flow, not an output)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop()


def messages() -> list[KafkaSourceMessage]:
    """Reference data, then TICKS encoded ticks of the simulated market (13 instruments)."""
    sim = MarketSimulator(seed=3)
    codec = SingleObjectCodec()
    offsets = itertools.count()
    refs = [
        KafkaSourceMessage(
            None, codec.encode("Instrument", r), "reference.instruments", [], None, next(offsets), 0
        )
        for r in sim.instruments()
    ]
    ticks = [
        KafkaSourceMessage(None, codec.encode("MarketTick", t), TOPIC, [], None, next(offsets), 0)
        for t in sim.ticks(count=TICKS, tick_interval_ns=1_000_000)
    ]
    return refs + ticks


def blocks(msgs: list[KafkaSourceMessage]) -> list[MessageBlock]:
    """The messages as the Kafka source emits them: one block per poll of 1,000."""
    return [b for b in as_blocks(msgs) if isinstance(b, MessageBlock) for b in _split(b, BLOCK)]


def _split(block: MessageBlock, n: int) -> list[MessageBlock]:
    out = []
    while len(block) > n:
        head, block = block.split(n)
        out.append(head)
    return [*out, block]


def pretrade(items: list[Any]) -> None:
    """The real flow: decode, validate, instrument kernels, marks and snapshots."""
    sinks = PretradeSinks(NullSink(), NullSink(), NullSink())
    config = EngineConfig(wait_for_data=True)
    run_main(build_pretrade_flow(TestingSource(items), sinks, config, SingleObjectCodec(), KINDS))


def decode_only(msgs: list[KafkaSourceMessage]) -> None:
    """Baseline: the same input decoded by a Bytewax flow that does nothing else."""
    codec = SingleObjectCodec()
    flow = Dataflow("decode_only")
    stream = op.input("in", flow, TestingSource(msgs, 1000))
    decoded = op.map("decode", stream, lambda m: codec.decode(KINDS[m.topic], m.value))
    op.output("out", decoded, NullSink())
    run_main(flow)


def main() -> None:
    """Measure both and write bench/results/feature_stage.{json,md}."""
    msgs = messages()
    items = blocks(msgs)
    pretrade(blocks(msgs[:20_000]))  # warm the Numba cache and imports
    ours = best_of(3, lambda: pretrade(items))
    base = best_of(3, lambda: decode_only(msgs))
    rate, base_rate = TICKS / ours, TICKS / base
    write_results(
        "feature_stage",
        {
            "ticks": TICKS,
            "instruments": 13,
            "pretrade_ticks_per_s": round(rate),
            "decode_only_ticks_per_s": round(base_rate),
            "ratio_vs_decode_only": round(rate / base_rate, 3),
            "target_ticks_per_s": 150_000,
        },
        [
            ("pre-trade flow, 1 worker (ticks/s)", f"{rate:,.0f}"),
            ("decode-only Bytewax flow, same run (ticks/s)", f"{base_rate:,.0f}"),
            ("ratio (flow / decode-only)", f"{rate / base_rate:.2f}"),
            ("target (issue 3)", "150,000 ticks/s"),
        ],
    )


if __name__ == "__main__":
    main()
