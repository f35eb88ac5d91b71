"""The order-rate step: counts in partition order, repeats get their first count."""

from __future__ import annotations

import pickle
from typing import Any

from operators.config import EngineConfig, Limits
from operators.order_rate import OrderRateLogic, by_partition, proposal_lane
from operators.records import PROPOSAL, Inbound, Progress, Source
from tests.factories import SECOND, T0, proposal

CONFIG = EngineConfig(limits=Limits(order_window_s=60.0))


def ask(pid: str, ts: int, portfolio: str = "PF-1", partition: int = 0) -> Inbound:
    p = proposal(proposal_id=pid, portfolio_id=portfolio, ts_event=ts)
    return Inbound(PROPOSAL, p, Source("trade.proposals", partition, 0, ts))


def counts(logic: OrderRateLogic, *items: Any) -> list[Any]:
    out, _ = logic.on_batch(list(items))
    return [o.orders_in_window if isinstance(o, Inbound) else o for o in out]


def test_count_when_proposals_come_in_partition_order_counts_those_read_before_in_the_window():
    logic = OrderRateLogic(CONFIG, None)

    got = counts(
        logic,
        ask("A", T0),
        ask("B", T0 + 10 * SECOND),
        ask("X", T0 + 11 * SECOND, portfolio="PF-2"),
        ask("C", T0 + 60 * SECOND),  # A is exactly one window older: out
        ask("D", T0 + 30 * SECOND),  # read after C: counts A and B (at or before it), not C
    )

    assert got == [1, 2, 1, 2, 3]


def test_count_when_a_proposal_is_read_again_gives_the_count_it_got_first():
    logic = OrderRateLogic(CONFIG, None)
    counts(logic, ask("A", T0), ask("B", T0 + SECOND))

    restored = OrderRateLogic(CONFIG, pickle.loads(logic.snapshot()))

    assert counts(restored, ask("A", T0), ask("B", T0 + SECOND), ask("C", T0 + 2 * SECOND)) == [
        1,
        2,
        3,
    ]


def test_progress_when_routed_is_split_per_partition_and_passes_through_in_order():
    progress = Progress(PROPOSAL, (("trade.proposals", 0, T0), ("trade.proposals", 1, T0 + 1)))
    keyed = by_partition(progress)
    logic = OrderRateLogic(CONFIG, None)

    out = counts(logic, ask("A", T0), keyed[0][1], ask("B", T0 + 1))

    assert [k for k, _ in keyed] == ["trade.proposals:0", "trade.proposals:1"]
    assert [v.parts for _, v in keyed] == [
        (("trade.proposals", 0, T0),),
        (("trade.proposals", 1, T0 + 1),),
    ]
    assert out == [1, keyed[0][1], 2]
    assert by_partition(ask("C", T0, partition=3))[0][0] == "trade.proposals:3"


def test_lane_when_asked_takes_proposals_and_their_progress_only():
    fill = Inbound("Execution", {}, Source("trades.executed"))

    assert proposal_lane(ask("A", T0))
    assert proposal_lane(Progress(PROPOSAL, ()))
    assert not proposal_lane(fill)
    assert not proposal_lane(Progress("Execution", ()))
