"""After a restart from recovery state, the trading-state gauge shows the restored state."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from operators import metrics
from operators.config import EngineConfig
from operators.portfolio import ShardLogic
from operators.records import Inbound, Source
from tests.factories import KEYS, SECOND, T0, control

CONFIG = EngineConfig(control=KEYS)
GAUGE = "riskstream_trading_state"


def cmd(**kw: Any) -> Inbound:
    c = control(**kw)
    return Inbound("ControlCommand", c, Source("risk.control", 0, 0, c["ts_event"]))


def gauge(scope: str, target: str) -> float | None:
    return REGISTRY.get_sample_value(GAUGE, {"scope": scope, "target": target})


def test_restore_when_halted_and_reduce_only_sets_the_gauge_without_a_new_command():
    before = ShardLogic(CONFIG, None)
    before.on_batch(
        [
            cmd(action="HALT", scope="GLOBAL", target="", ts_event=T0 + SECOND),
            cmd(action="REDUCE_ONLY", scope="PORTFOLIO", target="PF-G1", ts_event=T0 + SECOND),
            # later in event time, earlier in arrival: the state in force is RESUME's
            cmd(action="RESUME", scope="INSTRUMENT", target="GX", ts_event=T0 + 3 * SECOND),
            cmd(action="HALT", scope="INSTRUMENT", target="GX", ts_event=T0 + 2 * SECOND),
        ]
    )
    snapshot = before.snapshot()
    # a fresh process: the gauge reads what a restarted process would read before restore
    for scope, target in (("GLOBAL", ""), ("PORTFOLIO", "PF-G1"), ("INSTRUMENT", "GX")):
        metrics.TRADING_STATE.labels(scope, target).set(0)

    ShardLogic(CONFIG, snapshot)

    assert gauge("GLOBAL", "") == 2.0
    assert gauge("PORTFOLIO", "PF-G1") == 1.0
    assert gauge("INSTRUMENT", "GX") == 0.0


def test_fresh_start_without_state_leaves_the_gauge_alone():
    metrics.TRADING_STATE.labels("PORTFOLIO", "PF-G2").set(2)

    ShardLogic(CONFIG, None)

    assert gauge("PORTFOLIO", "PF-G2") == 2.0
