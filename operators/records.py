"""Items that travel between steps of the pre-trade flow."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input record came from."""

    topic: str
    partition: int = -1
    offset: int = -1
    timestamp_ns: int = 0
    """Kafka record timestamp (producer or broker time), 0 when unknown."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decoded, validated input record."""

    kind: str
    """Record name: MarketTick, Instrument, TradeProposal, Execution or ControlCommand."""
    record: Record
    source: Source
    received_ns: int = 0
    """Wall-clock time the flow consumed it (latency only, never decisions)."""
    key: bytes | None = None
    raw: bytes | None = None
    """The original bytes, kept for the dead-letter topic."""
    orders_in_window: int = 0
    """Proposals: its portfolio's proposals in the order-rate window, itself included, in
    its partition's order (``operators.order_rate``)."""


@dataclass(frozen=True, slots=True)
class DeadLetterItem:
    """An input the flow could not use, bound for the dead-letter topic."""

    record: Record
    """A DeadLetter record (see schemas/DeadLetter.avsc)."""


@dataclass(frozen=True, slots=True)
class MarketView:
    """An instrument's state as of a proposal's ts_event."""

    instrument: Record | None
    ts_last: int | None = None
    """ts_event of the last tick at or before the proposal."""
    last: float | None = None
    bid: float | None = None
    ask: float | None = None
    features: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PricedProposal:
    """A proposal joined with its instrument's market state, bound for its shard."""

    proposal: Record
    market: MarketView
    source: Source
    received_ns: int
    stale: bool = False
    key: bytes | None = None
    raw: bytes | None = None
    orders_in_window: int = 0
    """See ``Inbound.orders_in_window``."""


@dataclass(frozen=True, slots=True)
class Mark:
    """An instrument's price and volatility at a bar close, broadcast to every shard."""

    instrument_id: str
    ts_event: int
    """Bar end, UTC epoch ns."""
    price: float
    """Bar close."""
    daily_vol: float
    spread_bps: float = math.nan
    """Mean quoted spread of the bar's ticks."""
    volume: float = 0.0
    bar_yield: float = math.nan
    """Yield of the bar's last tick that carried one (bonds)."""
    log_return: float = math.nan
    """ln(close / previous close)."""
    ewma_var: float = math.nan
    """RiskMetrics EWMA variance of per-bar log returns (NaN while warming up)."""
    part: tuple[str, int] | None = None
    """Topic and partition of the ticks that closed the bar."""


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A Redis hash write guarded by event time: applied only if not older than the stored one."""

    key: str
    ts_event: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Decided:
    """A RiskScore record and the wall-clock time the proposal was consumed."""

    record: Record
    received_ns: int


@dataclass(frozen=True, slots=True)
class MessageBlock:
    """Consecutive messages of one topic partition, as columns: one item per poll."""

    topic: str
    partition: int
    offsets: list[int]
    timestamps_ns: list[int]
    """Kafka record timestamps, 0 when unknown."""
    keys: list[bytes | None]
    values: list[bytes | None]

    def __len__(self) -> int:
        return len(self.offsets)

    def source(self, i: int) -> Source:
        """Where message ``i`` came from."""
        return Source(self.topic, self.partition, self.offsets[i], self.timestamps_ns[i])

    def split(self, n: int) -> tuple[MessageBlock, MessageBlock]:
        """The first ``n`` messages and the rest."""
        t, p = self.topic, self.partition
        off, stamps, keys, vals = self.offsets, self.timestamps_ns, self.keys, self.values
        return (
            MessageBlock(t, p, off[:n], stamps[:n], keys[:n], vals[:n]),
            MessageBlock(t, p, off[n:], stamps[n:], keys[n:], vals[n:]),
        )


@dataclass(frozen=True, slots=True)
class TickBatch:
    """The ticks of one instrument from one parsed batch, as columns, in arrival order.

    ``yld`` is NaN for ticks without a yield. ``origin`` rows (topic index, partition,
    offset, Kafka timestamp), ``keys`` and ``raws`` say where each tick came from, for the
    dead-letter topic.
    """

    instrument_id: str
    ts: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    last: np.ndarray
    size: np.ndarray
    yld: np.ndarray
    topics: tuple[str, ...]
    origin: np.ndarray
    keys: list[bytes | None]
    raws: list[bytes | None]
    kind: str = "MarketTick"

    def __len__(self) -> int:
        return len(self.ts)

    def source(self, i: int) -> Source:
        """Where tick ``i`` came from."""
        topic, partition, offset, stamp = (int(x) for x in self.origin[i])
        return Source(self.topics[topic], partition, offset, stamp)

    def partition(self) -> tuple[str, int]:
        """Topic and partition of its first tick (an instrument's ticks share one)."""
        return self.topics[int(self.origin[0][0])], int(self.origin[0][1])


@dataclass(frozen=True, slots=True)
class AutoControl:
    """A ControlCommand riskstream issued itself (automatic REDUCE_ONLY), for risk.control."""

    record: Record


END_OF_TIME = 2**63 - 1
"""Event time of 'no more data' (a bounded read reached its end)."""


@dataclass(frozen=True, slots=True)
class SourceIdle:
    """A source partition had nothing new: caught up at wall-clock ``ts``, or at END_OF_TIME."""

    topic: str
    partition: int
    ts: int


@dataclass(frozen=True, slots=True)
class Progress:
    """For each ``(topic, partition, ts)``: no record below ``ts`` is still to come there."""

    kind: str
    """Record name of the topics (``ControlCommand``, ``Execution``, ``Instrument`` or
    ``TradeProposal``): the lane it follows."""
    parts: tuple[tuple[str, int, int], ...]
    idle: bool = False
    """From idle markers (wall clock, or the end), not from the records' event times."""


PROPOSAL = "TradeProposal"
REFERENCE = "Instrument"
"""Record name of trade proposals, whose progress goes to the instrument step only."""
