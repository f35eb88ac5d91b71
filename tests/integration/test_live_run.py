"""``riskstream run`` as a live process: controls take effect on the proposals after them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from tests.factories import KEY, control, instrument, proposal, tick
from tests.integration.conftest import consume, publish


def now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


def wait_for_state(settings, expected: str, timeout: float = 15.0) -> None:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    key = f"{settings.redis_prefix}trading_state:GLOBAL:"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.hget(key, "state") == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} never became {expected}: {client.hgetall(key)}")


def live_market(settings) -> None:
    t = now_ns()
    publish(
        settings, [("Instrument", instrument(ts_event=t - 10**9)), ("MarketTick", tick(ts_event=t))]
    )


def test_halt_then_resume_when_live_changes_the_next_decisions(settings, live_flow):
    live_market(settings)
    publish(settings, [("TradeProposal", proposal(proposal_id="before", ts_event=now_ns()))])
    assert consume(settings, "scores", "RiskScore", 1)[0]["decision"] == "APPROVE"

    publish(settings, [("ControlCommand", control(key=KEY, action="HALT", ts_event=now_ns()))])
    wait_for_state(settings, "HALTED")
    publish(settings, [("MarketTick", tick(ts_event=now_ns()))])
    publish(settings, [("TradeProposal", proposal(proposal_id="halted", ts_event=now_ns()))])

    publish(settings, [("ControlCommand", control(key=KEY, action="RESUME", ts_event=now_ns()))])
    wait_for_state(settings, "ACTIVE")
    publish(settings, [("MarketTick", tick(ts_event=now_ns()))])
    publish(settings, [("TradeProposal", proposal(proposal_id="resumed", ts_event=now_ns()))])

    scores = {s["proposal_id"]: s for s in consume(settings, "scores", "RiskScore", 3)}
    assert scores["halted"]["decision"] == "REJECT"
    assert [r["code"] for r in scores["halted"]["reasons"] if r["hard"]] == ["TRADING_HALTED"]
    assert scores["resumed"]["decision"] == "APPROVE"


def test_forged_halt_when_live_changes_nothing(settings, live_flow):
    live_market(settings)
    publish(
        settings,
        [("ControlCommand", control(key=b"not-the-key", action="HALT", ts_event=now_ns()))],
    )
    [letter] = consume(settings, "dlq", "DeadLetter", 1)
    assert letter["error_code"] == "BAD_SIGNATURE"
    publish(settings, [("TradeProposal", proposal(proposal_id="p", ts_event=now_ns()))])
    assert consume(settings, "scores", "RiskScore", 1)[0]["decision"] == "APPROVE"


def test_metrics_when_running_count_messages_decisions_and_dead_letters(settings):
    import subprocess
    import sys
    import urllib.request

    from dataflows.embedded import free_port
    from tests.integration.conftest import env_of

    port = free_port()
    env = env_of(settings) | {"RISKSTREAM_METRICS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "dataflows.cli", "run"], env=env)
    try:
        live_market(settings)
        publish(
            settings, [("TradeProposal", b"junk"), ("TradeProposal", proposal(ts_event=now_ns()))]
        )
        consume(settings, "scores", "RiskScore", 1)
        consume(settings, "dlq", "DeadLetter", 1)
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            if (
                'riskstream_dlq_total{reason="BAD_MAGIC"} 1.0' in text
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(15)
    proposals = settings.topics.name("proposals")
    assert f'riskstream_messages_total{{topic="{proposals}"}} 2.0' in text
    assert 'riskstream_decisions_total{decision="APPROVE"} 1.0' in text
    assert 'riskstream_dlq_total{reason="BAD_MAGIC"} 1.0' in text
    assert "riskstream_decision_latency_seconds_count 1.0" in text
    assert f'riskstream_input_lag_messages{{partition="0",topic="{proposals}"}}' in text
