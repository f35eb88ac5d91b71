"""Typed, frozen parameters of the pure operators (built from Settings by the flow)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

NS = 1_000_000_000
FRACTIONS = ("concentration", "max_adv_share", "max_drawdown")


@dataclass(frozen=True)
class Limits:
    """Per-portfolio hard limits; ``SET_LIMIT`` control commands override single fields."""

    concentration: float = 0.25
    """Largest share of portfolio value in one instrument after the trade."""
    max_order_notional: float = 5_000_000.0
    """Largest notional of one order, in currency."""
    max_adv_share: float = 0.10
    """Largest order quantity as a share of the instrument's average daily volume."""
    price_collar: float = 0.10
    """Largest relative distance of a limit price from the last trade (fat-finger check)."""
    var_budget: float = 250_000.0
    """Largest marginal 1-day 95% VaR one order may add to its book, in currency."""
    max_gross_notional: float = 100_000_000.0
    """Largest sum of |position notional| of the book after the trade."""
    max_net_notional: float = 50_000_000.0
    """Largest |sum of position notional| of the book after the trade."""
    max_drawdown: float = 0.10
    """Drawdown of portfolio value from its peak that switches the portfolio to REDUCE_ONLY."""
    var_limit: float = 1_000_000.0
    """Portfolio 1-day 95% VaR above which the portfolio is switched to REDUCE_ONLY."""
    max_orders: float = 120.0
    """Most proposals one portfolio may send in ``order_window_s`` of event time."""
    order_window_s: float = 60.0
    """The order-rate window; a deployment setting (the count is taken before the shards,
    see ``operators.order_rate``), which ``SET_LIMIT`` cannot change."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Names a ``SET_LIMIT`` command may change."""
        return tuple(f.name for f in fields(cls) if f.name != "order_window_s")

    @classmethod
    def problem(cls, name: str, value: float | None) -> str | None:
        """Why ``value`` cannot be limit ``name`` (None when it can)."""
        if name not in cls.names():
            return f"unknown limit {name!r}; known: {', '.join(cls.names())}"
        if value is None or not math.isfinite(value) or value <= 0:
            return f"{name} must be a finite number > 0, got {value!r}"
        if name in FRACTIONS and value > 1:
            return f"{name} is a fraction and must be <= 1, got {value!r}"
        return None

    def with_value(self, name: str, value: float) -> Limits:
        """A copy with one limit changed."""
        return replace(self, **{name: float(value)})


@dataclass(frozen=True)
class ControlKeys:
    """HMAC keys by key id; two ids may be valid at once during a key rotation."""

    keys: dict[str, bytes] = field(default_factory=dict)
    max_age_ns: int = 60 * NS
    """Largest distance between a command's ts_event and its Kafka timestamp."""

    def __repr__(self) -> str:
        return f"ControlKeys(key_ids={sorted(self.keys)}, max_age_ns={self.max_age_ns})"


@dataclass(frozen=True)
class EngineConfig:
    """Everything the pre-trade operators need; no I/O, no environment."""

    limits: Limits = field(default_factory=Limits)
    control: ControlKeys = field(default_factory=ControlKeys)
    portfolio_capital: float = 10_000_000.0
    """Cash of a portfolio before its first execution."""
    shards: int = 8
    """Number of portfolio shard keys (control commands and marks go to each)."""
    ewma_lambda: float = 0.94
    bar_interval_ns: int = 1 * NS
    bars_per_day: float | None = None
    """Bars in one trading day; None: 6.5 hours of bars (a simulator may compress a day)."""
    stale_after_ns: int = 30 * NS
    """Market data older than this at a proposal's ts_event gives STALE_MARKET_DATA."""
    max_wait_ns: int = 250_000_000
    """Live runs: how long (wall clock) a proposal waits for ticks up to its ts_event."""
    wait_for_data: bool = False
    """Replays: wait for data (never for the wall clock) before deciding."""
    recoverable: bool = True
    """Snapshots carry the state (Bytewax recovery). False (no recovery configured, and
    replays): snapshots are empty, which spares a copy of every touched key per epoch."""
    var_confidence_z: float = 1.6448536269514722
    """z of the one-sided VaR confidence (95%)."""
    market_ids: tuple[str, ...] = ("SIM-IDX", "SIM-UST-10Y", "SIM-IG-7Y")
    """Instruments the market step builds regime bars from (index, rate bond, credit bond)."""
    proxy_daily_vol: float = 0.05
    """Conservative daily volatility for instruments the risk model cannot size yet."""
    fence: tuple[tuple[str, int], ...] = ()
    """(topic, partition) of every control and execution partition: a proposal is decided
    only once each has progressed past its ts_event (empty: no fence)."""
    fence_kinds: tuple[str, ...] = ("ControlCommand", "Execution", "Instrument")
    lateness_ns: int = 0
    """How far records may be out of order within one partition (event time)."""
    idle_margin_ns: int = 10_000_000
    """Live: a caught-up partition counts as progressed to wall clock minus this."""
    proposal_parts: tuple[tuple[str, int], ...] = ()
    """(topic, partition) of every proposal partition: instrument history is evicted only
    behind the progress of all of them (empty: unknown, history kept up to the caps)."""
    reference_parts: tuple[tuple[str, int], ...] = ()
    """(topic, partition) of every reference-data partition: a proposal for an instrument
    without reference data is answered once all of them passed its time (empty: unknown;
    it then waits like any proposal, live up to ``reference_wait_ns``)."""
    reference_wait_ns: int = 2_000_000_000
    """Live: how long (wall clock) a proposal for an instrument without reference data waits
    for it (at start-up the reference partitions can be read after the proposals')."""
    instrument_shards: int = 16
    """Number of instrument shard keys (proposal progress goes to each)."""
    tick_history_cap: int = 262_144
    """Most ticks one instrument keeps while the proposals' frontier holds eviction back
    (about 10 MiB); beyond it the oldest go and a proposal needing them is stale."""
    bar_history_cap: int = 16_384
    """Most bar-close feature rows one instrument keeps likewise (about 4 MiB)."""
