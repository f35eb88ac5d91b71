"""Keys and routes between the steps of the pre-trade flow."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache, lru_cache
from typing import TypeGuard, TypeVar

from operators import metrics
from operators.config import EngineConfig
from operators.market import RegimeUpdate, VolForecast
from operators.portfolio import ShardIn, all_shard_keys, shard_key
from operators.records import (
    PROPOSAL,
    REFERENCE,
    DeadLetterItem,
    Decided,
    Inbound,
    Mark,
    PricedProposal,
    Progress,
    TickBatch,
)


def is_decoded(item: object) -> TypeGuard[Inbound | Progress | TickBatch]:
    """True for decoded records and progress markers, False for dead letters."""
    return not isinstance(item, DeadLetterItem)


def is_inbound(item: object) -> TypeGuard[Inbound]:
    """True for decoded records (what passed the control gate)."""
    return isinstance(item, Inbound)


def is_control_lane(item: Inbound | Progress | TickBatch) -> bool:
    """Control commands and their topic's progress: through the gate, then to every shard."""
    return item.kind == "ControlCommand"


def is_execution_lane(item: Inbound | Progress | TickBatch) -> bool:
    """Executions and their topic's progress go straight to the shards."""
    return item.kind == "Execution"


def is_reference(item: Inbound | Progress | TickBatch) -> bool:
    """Reference data and its topic's progress, which the shards need too.

    Fills need the face value; replays close a covariance bar only once every instrument
    of the bar is known.
    """
    return item.kind == REFERENCE


InstrumentIn = Inbound | TickBatch | Progress


@lru_cache(maxsize=1 << 16)
def instrument_shard_key(instrument_id: str, shards: int) -> str:
    """The instrument shard of an instrument: CRC-32, the same in every process."""
    return f"instrument-{zlib.crc32(instrument_id.encode()) % shards:03d}"


@cache
def all_instrument_keys(shards: int) -> tuple[str, ...]:
    """Every instrument shard key."""
    return tuple(f"instrument-{i:03d}" for i in range(shards))


def to_instruments(
    item: Inbound | Progress | TickBatch, shards: int
) -> list[tuple[str, InstrumentIn]]:
    """Ticks, reference data and proposals to their instrument's shard.

    Proposal progress and reference-data progress from records go to every instrument
    shard (other progress: portfolio shards only; reference records carry as-of times
    older than their publication, so wall-clock idle progress says nothing of them). One
    function for all of them, so a record and the progress after it in its partition
    reach an instrument shard in that order.
    """
    if isinstance(item, Progress):
        if item.kind != PROPOSAL and (item.kind != REFERENCE or item.idle):
            return []
        return [(key, item) for key in all_instrument_keys(shards)]
    iid = item.instrument_id if isinstance(item, TickBatch) else str(item.record["instrument_id"])
    return [(instrument_shard_key(iid, shards), item)]


T = TypeVar("T")


def only(kind: type[T]) -> Callable[[object], T | None]:
    """A filter_map function keeping the items of one type."""
    return lambda item: item if isinstance(item, kind) else None


def to_shards(item: object, config: EngineConfig) -> list[tuple[str, ShardIn]]:
    """Proposals and fills to their portfolio's shard; everything shared to every shard."""
    if isinstance(item, PricedProposal):
        return [(shard_key(item.proposal["portfolio_id"], config.shards), item)]
    if isinstance(item, Inbound) and item.kind == "Execution":
        return [(shard_key(item.record["portfolio_id"], config.shards), item)]
    if isinstance(item, Mark | Progress | Inbound | RegimeUpdate | VolForecast):
        return [(key, item) for key in all_shard_keys(config.shards)]
    return []


def count_decisions(items: list[Decided]) -> None:
    """Decision metrics, counted once per produced batch."""
    for d in items:
        r = d.record
        metrics.DECISIONS.labels(r["decision"]).inc()
        for reason in r["reasons"]:
            metrics.REASONS.labels(reason["code"]).inc()
        metrics.DECISION_LATENCY.observe(r["latency_us"] / 1e6)


def count_dead_letters(items: list[DeadLetterItem]) -> None:
    """Dead-letter metrics by reason code."""
    for d in items:
        metrics.DEAD_LETTERS.labels(d.record["error_code"]).inc()
