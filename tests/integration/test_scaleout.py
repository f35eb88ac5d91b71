"""Two processes give the same decisions as one process, on the same input (real broker)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from bench.scaleout_bench import canonical_decisions, publish, run_cluster
from dataflows.embedded import free_port
from dataflows.kafka_io import ensure_topics
from dataflows.producer import ProduceOptions
from tests.factories import KEY, T0, control, proposal
from tests.integration.conftest import consume, env_of
from tests.integration.conftest import publish as publish_records
from tests.integration.test_live_run import live_market, now_ns
from tests.integration.test_probes_live import wait_for


def test_replay_on_two_processes_when_compared_to_one_gives_identical_decisions(settings):
    settings = settings.model_copy(update={"topic_partitions": 4})
    ensure_topics(settings, settings.topics.all())
    opts = ProduceOptions(tick_rate=500, proposal_rate=30, portfolios=5, seed=13, duration_s=8)
    _, proposals = publish(settings, opts)
    commands = [
        ("ControlCommand", control(key=KEY, action="HALT", ts_event=T0 + 3 * 10**9)),
        ("ControlCommand", control(key=KEY, action="RESUME", ts_event=T0 + 5 * 10**9)),
    ]
    publish_records(settings, commands)
    scores = settings.topics.prefix + "scores"

    one = run_cluster(settings, 1, f"{scores}.one")
    two = run_cluster(settings, 2, f"{scores}.two")

    assert one.events == two.events > 2_000
    assert one.decisions == two.decisions == proposals > 150
    a = canonical_decisions(settings, one.out_topic, proposals)
    b = canonical_decisions(settings, two.out_topic, proposals)
    assert len(set(a)) == proposals
    assert a == b


def test_run_with_two_processes_when_started_is_ready_on_both_ports_and_decides(settings):
    port = free_port()
    env = env_of(settings) | {"RISKSTREAM_METRICS_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run", "--processes", "2"], env=env
    )
    try:
        for p in (port, port + 1):
            wait_for(f"http://127.0.0.1:{p}/readyz", 200, 90)
        live_market(settings)
        publish_records(
            settings, [("TradeProposal", proposal(proposal_id="p2", ts_event=now_ns()))]
        )
        [score] = consume(settings, "scores", "RiskScore", 1)
        assert score["proposal_id"] == "p2" and score["decision"] == "APPROVE"
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 30
