"""The order-rate count of every proposal, taken in its partition's order.

A portfolio's proposals in the last ``order_window_s`` of event time must not depend on
when each one reached its shard: proposals of one portfolio are priced by different
instruments, and with several processes by different workers, so they reach the shard
in any order. Here, keyed by proposal partition and before any wait, they come in the
partition's order, which every run reads the same: each proposal is counted against the
proposals of its portfolio read before it (its own partition's order, which is one
portfolio's whole order when proposals are keyed by portfolio, as producers should). A
proposal read again (a duplicate, or a repeat after a restart) gets the count it got.

Progress of the partition passes through in order, after the proposals it follows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeGuard

from bytewax.operators import StatefulBatchLogic

from operators.config import EngineConfig
from operators.records import PROPOSAL, Inbound, Progress
from operators.risk_model import OrderRate
from operators.snapshot import freeze, thaw

RateIn = Inbound | Progress


def proposal_lane(item: object) -> TypeGuard[RateIn]:
    """Proposals and their topic's progress (counted here before the instrument step)."""
    return isinstance(item, Inbound | Progress) and item.kind == PROPOSAL


def by_partition(item: RateIn) -> list[tuple[str, RateIn]]:
    """Each proposal, and each partition's progress on its own, keyed by its partition."""
    if isinstance(item, Progress):
        return [(f"{t}:{p}", replace(item, parts=((t, p, ts),))) for t, p, ts in item.parts]
    return [(f"{item.source.topic}:{item.source.partition}", item)]


@dataclass
class RateState:
    """Per portfolio the proposals' event times, and the count each proposal got."""

    rates: dict[str, OrderRate] = field(default_factory=dict)
    counted: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)
    """proposal id -> (ts_event, count), oldest first."""


class OrderRateLogic(StatefulBatchLogic[RateIn, RateIn, bytes]):
    """Stamps ``orders_in_window`` on every proposal of one partition, in its order."""

    def __init__(self, config: EngineConfig, state: bytes | RateState | None) -> None:
        self.window_ns = int(config.limits.order_window_s * 1e9)
        self.recoverable = config.recoverable
        self.state = thaw(state, RateState) if state is not None else RateState()

    def on_batch(self, values: list[RateIn]) -> tuple[Iterable[RateIn], bool]:
        out = [v if isinstance(v, Progress) else self._count(v) for v in values]
        return out, StatefulBatchLogic.RETAIN

    def _count(self, item: Inbound) -> Inbound:
        p, st = item.record, self.state
        pid, ts = p["proposal_id"], p["ts_event"]
        seen = st.counted.get(pid)
        if seen is None:
            rate = st.rates.setdefault(p["portfolio_id"], OrderRate(self.window_ns))
            seen = st.counted[pid] = (ts, rate.admit(ts, pid))
            self._forget(ts)
        return replace(item, orders_in_window=seen[1])

    def _forget(self, newest: int) -> None:
        """Drop counts of proposals two windows older than the newest (never read again)."""
        counted = self.state.counted
        while counted and next(iter(counted.values()))[0] < newest - 2 * self.window_ns:
            counted.popitem(last=False)

    def snapshot(self) -> bytes:
        return freeze(self.state, self.recoverable)
