"""The pre-trade dataflow: wiring only; the logic lives in ``operators``.

Run it with ``riskstream run``, or ``python -m bytewax.run dataflows.pretrade:flow``
(the flow is then built from ``RISKSTREAM_*`` settings when the attribute is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from operators.config import EngineConfig
from operators.control_gate import ControlGateLogic
from operators.ingest import parse_batch
from operators.instrument import InstrumentLogic
from operators.market import MarketConfig, MarketLogic, RegimeOut, regime_write
from operators.order_rate import OrderRateLogic, by_partition, proposal_lane
from operators.portfolio import ShardLogic
from operators.records import (
    AutoControl,
    DeadLetterItem,
    Decided,
    Inbound,
    Mark,
    Progress,
    StateWrite,
)
from operators.routing import (
    is_control_lane,
    is_decoded,
    is_execution_lane,
    is_reference,
    only,
    to_instruments,
    to_shards,
)
from schemas.codec import Codec


@dataclass(frozen=True)
class PretradeSinks:
    """Where the flow's outputs go (regime events are dropped without a sink)."""

    scores: Sink[Decided]
    dead_letters: Sink[DeadLetterItem]
    state: Sink[StateWrite]
    regimes: Sink[RegimeOut] | None = None
    controls: Sink[AutoControl] | None = None
    """Automatic control commands (REDUCE_ONLY triggers), for the audit trail."""


def build_pretrade_flow(
    source: Source[Any],
    sinks: PretradeSinks,
    config: EngineConfig,
    codec: Codec,
    input_kinds: dict[str, str],
) -> Dataflow:
    """Input messages (Kafka-like: topic, partition, offset, key, value) to decisions."""
    flow = Dataflow("pretrade")
    messages = op.input("input", flow, source)
    parse = partial(parse_batch, kinds=input_kinds, codec=codec, config=config)
    decoded = op.branch("decoded", op.flat_map_batch("parse", messages, parse), is_decoded)
    control = op.branch("control_lane", decoded.trues, is_control_lane)
    commands = cast("Stream[Inbound | Progress]", control.trues)  # commands and their progress
    fills = op.branch("execution_lane", control.falses, is_execution_lane)
    market = fills.falses  # records, ticks, reference and proposal progress

    gate = op.stateful_batch(
        "control_gate",
        op.key_on("control_key", commands, lambda _: "control"),
        lambda s: ControlGateLogic(config, s),
    )
    gated = op.branch("gate_ok", op.map("gate_values", gate, lambda kv: kv[1]), is_decoded)

    # proposals and their progress: counted for the order rate in each partition's order
    lanes = op.branch("proposal_lane", market, proposal_lane)
    counted = op.stateful_batch(
        "order_rate",
        op.flat_map("rate_route", lanes.trues, by_partition),
        lambda s: OrderRateLogic(config, s),
    )
    instrument_in = op.merge(
        "instrument_in", lanes.falses, op.map("rate_values", counted, lambda kv: kv[1])
    )
    # records, ticks and proposal progress: one path, so each partition's order is kept
    to_instrument = partial(to_instruments, shards=config.instrument_shards)
    by_instrument = op.stateful_batch(
        "instrument",
        op.flat_map("instrument_route", instrument_in, to_instrument),
        lambda s: InstrumentLogic(config, s),
    )
    priced = op.map("instrument_values", by_instrument, lambda kv: kv[1])

    index, rate, credit = config.market_ids
    market_config = MarketConfig(index_id=index, rate_id=rate, credit_id=credit)
    market_out = op.map(
        "market_values",
        op.stateful_batch(
            "market",
            op.key_on("market_key", op.filter_map("marks", priced, only(Mark)), lambda _: "market"),
            lambda s: MarketLogic(market_config, s),
        ),
        lambda kv: kv[1],
    )
    regime_events = op.filter_map("regime_events", market_out, only(RegimeOut))
    if sinks.regimes is not None:
        op.output("regimes_out", regime_events, sinks.regimes)

    shard_inputs = op.merge(
        "shard_inputs",
        priced,
        gated.trues,
        fills.trues,
        op.filter("references", market, is_reference),
        op.filter("model_outputs", market_out, lambda x: not isinstance(x, RegimeOut)),
    )
    shard_in = op.flat_map("to_shards", shard_inputs, partial(to_shards, config=config))
    shard_out = op.map(
        "shard_values",
        op.stateful_batch("shard", shard_in, lambda s: ShardLogic(config, s)),
        lambda kv: kv[1],
    )

    states = op.merge(
        "state_writes",
        op.filter_map("instrument_states", priced, only(StateWrite)),
        op.filter_map("shard_states", shard_out, only(StateWrite)),
        op.map("regime_states", regime_events, regime_write),
    )
    dead = op.merge(
        "dead_letters",
        cast("Stream[DeadLetterItem]", decoded.falses),
        cast("Stream[DeadLetterItem]", gated.falses),
        op.filter_map("instrument_dead", priced, only(DeadLetterItem)),
        op.filter_map("shard_dead", shard_out, only(DeadLetterItem)),
    )
    op.output("scores_out", op.filter_map("decided", shard_out, only(Decided)), sinks.scores)
    if sinks.controls is not None:
        automatic = op.filter_map("automatic_controls", shard_out, only(AutoControl))
        op.output("controls_out", automatic, sinks.controls)
    op.output("dlq_out", dead, sinks.dead_letters)
    op.output("state_out", states, sinks.state)
    return flow


def __getattr__(name: str) -> Dataflow:
    """``dataflows.pretrade:flow`` for ``python -m bytewax.run``, built from settings on access."""
    if name != "flow":
        raise AttributeError(name)
    from dataflows.app import kafka_flow
    from dataflows.settings import load_settings

    return kafka_flow(load_settings())
