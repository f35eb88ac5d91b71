"""Control security: forged, unsigned, replayed, expired and unknown-key commands are
refused, counted and dead-lettered without touching the trading state; key rotation."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY
from pydantic import SecretStr

from dataflows.app import codec_for
from dataflows.control_cli import signed_command
from dataflows.embedded import free_port
from dataflows.kafka_io import Publisher, follow
from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from dataflows.settings import Settings
from operators.config import ControlKeys, EngineConfig
from operators.control import verify
from operators.errors import ConfigError
from operators.records import Decided, StateWrite
from schemas.codec import SingleObjectCodec
from tests.factories import (
    INPUT_KINDS,
    KEY,
    SECOND,
    T0,
    control,
    instrument,
    message,
    proposal,
    tick,
)
from tests.integration.conftest import broker, consume, env_of, publish, redis_server, settings
from tests.integration.test_live_run import live_market, now_ns, wait_for_state

__all__ = ["broker", "redis_server", "settings"]  # fixtures used by the live test

OLD_ID, NEW_ID = "k2025", "k2026"
OLD_KEY, NEW_KEY = b"old-hmac-key-2025", b"new-hmac-key-2026"
ROTATING = ControlKeys({OLD_ID: OLD_KEY, NEW_ID: NEW_KEY})
FENCE = (("risk.control", 0), ("trades.executed", 0))
KEYS_ONE = ControlKeys({"default": KEY})


def refused(reason: str) -> float:
    """Current value of riskstream_control_refused_total{reason}."""
    return REGISTRY.get_sample_value("riskstream_control_refused_total", {"reason": reason}) or 0.0


def accepted(key_id: str) -> float:
    """Current value of riskstream_control_accepted_total{key_id}."""
    value = REGISTRY.get_sample_value("riskstream_control_accepted_total", {"key_id": key_id})
    return value or 0.0


def run_flow(msgs: list[Any], keys: ControlKeys) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """Run the in-memory pre-trade flow: decisions by proposal id, dead letters, Redis writes."""
    scores: list[Decided] = []
    dlq: list[Any] = []
    state: list[StateWrite] = []
    config = EngineConfig(control=keys, fence=FENCE, wait_for_data=True)
    flow = build_pretrade_flow(
        TestingSource(msgs),
        PretradeSinks(TestingSink(scores), TestingSink(dlq), TestingSink(state)),
        config,
        SingleObjectCodec(),
        INPUT_KINDS,
    )
    run_main(flow)
    return {d.record["proposal_id"]: d.record for d in scores}, dlq, state


def market() -> list[Any]:
    return [message("Instrument", instrument()), message("MarketTick", tick(ts_event=T0))]


def after(ts: int, pid: str) -> list[Any]:
    """A tick then a proposal at ``ts``: the proposal is judged on the state as of ``ts``."""
    return [
        message("MarketTick", tick(ts_event=ts)),
        message("TradeProposal", proposal(proposal_id=pid, ts_event=ts)),
        message("MarketTick", tick(ts_event=ts + SECOND)),
    ]


def trading_writes(state: list[StateWrite]) -> list[StateWrite]:
    return [w for w in state if w.key.startswith("trading_state:")]


# --- every kind of refusal, through the whole in-memory flow -------------------------------------

HALT_AT = T0 + SECOND
HOSTILE = {
    "forged": ("BAD_SIGNATURE", lambda: [message("ControlCommand", control(key=b"attacker"))]),
    "unsigned": ("UNSIGNED_CONTROL", lambda: [message("ControlCommand", control(key=None))]),
    "unknown-key": (
        "UNKNOWN_KEY",
        lambda: [message("ControlCommand", control(key=b"k-of-a-retired-id", key_id="k2019"))],
    ),
    "expired": (
        "EXPIRED_CONTROL",  # signed and well-formed, but published 61 s after its ts_event
        lambda: [
            message(
                "ControlCommand",
                control(ts_event=HALT_AT),
                kafka_ts_ns=HALT_AT + 61 * SECOND,
            )
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_halt_when_flow_runs_is_refused_counted_dead_lettered_and_changes_nothing(case):
    code, commands = HOSTILE[case]
    hostile = commands()
    before = refused(code)

    scores, dlq, state = run_flow([*market(), *hostile, *after(T0 + 2 * SECOND, "P")], KEYS_ONE)

    assert [d.record["error_code"] for d in dlq] == [code]
    letter = dlq[0].record
    assert letter["step"] == "control_gate"
    assert letter["payload"] == hostile[0].value  # the original bytes, for forensics
    assert letter["source_topic"] == "risk.control"
    assert refused(code) == before + 1
    assert scores["P"]["decision"] == "APPROVE"
    assert scores["P"]["trading_state"] == "ACTIVE"
    assert trading_writes(state) == []


def test_genuine_halt_when_flow_runs_rejects_the_next_proposal():
    """The control for the test above: the same HALT, properly signed, does take effect."""
    before = accepted("default")

    scores, dlq, state = run_flow(
        [
            *market(),
            message("ControlCommand", control(ts_event=HALT_AT)),
            *after(T0 + 2 * SECOND, "P"),
        ],
        KEYS_ONE,
    )

    assert dlq == []
    assert scores["P"]["trading_state"] == "HALTED"
    assert scores["P"]["decision"] == "REJECT"
    assert {w.fields["state"] for w in trading_writes(state)} == {"HALTED"}  # from every shard
    assert accepted("default") == before + 1


def test_replayed_halt_when_flow_runs_after_resume_is_refused_and_trading_stays_active():
    halt = control(command_id="H", nonce="n-halt", ts_event=T0 + SECOND)
    resume = control(command_id="R", action="RESUME", ts_event=T0 + 2 * SECOND)
    # Same nonce as the HALT, a later time: what a captured-and-edited command would need.
    re_signed = control(command_id="H2", nonce="n-halt", ts_event=T0 + 3 * SECOND)
    before = refused("REPLAYED_CONTROL")

    scores, dlq, state = run_flow(
        [
            *market(),
            message("ControlCommand", halt),
            message("ControlCommand", resume),
            message("ControlCommand", halt, kafka_ts_ns=T0 + 3 * SECOND),  # byte-identical replay
            message("ControlCommand", re_signed),
            *after(T0 + 4 * SECOND, "P"),
        ],
        KEYS_ONE,
    )

    assert [d.record["error_code"] for d in dlq] == ["REPLAYED_CONTROL"] * 2
    assert refused("REPLAYED_CONTROL") == before + 2
    assert scores["P"]["decision"] == "APPROVE"
    assert scores["P"]["trading_state"] == "ACTIVE"
    assert max(trading_writes(state), key=lambda w: w.ts_event).fields["state"] == "ACTIVE"


# --- key rotation ------------------------------------------------------------------------------


def test_rotation_when_both_keys_configured_accepts_old_and_new_key_ids():
    before = accepted(OLD_ID), accepted(NEW_ID)
    halt = control(key=OLD_KEY, key_id=OLD_ID, ts_event=T0 + SECOND)
    resume = control(key=NEW_KEY, key_id=NEW_ID, action="RESUME", ts_event=T0 + 3 * SECOND)

    scores, dlq, _ = run_flow(
        [
            *market(),
            message("ControlCommand", halt),
            *after(T0 + 2 * SECOND, "during-halt"),
            message("ControlCommand", resume),
            *after(T0 + 4 * SECOND, "after-resume"),
        ],
        ROTATING,
    )

    assert dlq == []
    assert scores["during-halt"]["trading_state"] == "HALTED"
    assert scores["after-resume"]["trading_state"] == "ACTIVE"
    assert (accepted(OLD_ID), accepted(NEW_ID)) == (before[0] + 1, before[1] + 1)


def test_rotation_when_old_key_removed_refuses_commands_signed_with_it():
    before = refused("UNKNOWN_KEY")
    halt = control(key=OLD_KEY, key_id=OLD_ID, ts_event=T0 + SECOND)

    scores, dlq, _ = run_flow(
        [*market(), message("ControlCommand", halt), *after(T0 + 2 * SECOND, "P")],
        ControlKeys({NEW_ID: NEW_KEY}),
    )

    assert [d.record["error_code"] for d in dlq] == ["UNKNOWN_KEY"]
    assert refused("UNKNOWN_KEY") == before + 1
    assert scores["P"]["trading_state"] == "ACTIVE"


def test_rotation_when_new_key_signs_under_old_key_id_is_a_bad_signature():
    halt = control(key=NEW_KEY, key_id=OLD_ID, ts_event=T0 + SECOND)

    _, dlq, _ = run_flow([*market(), message("ControlCommand", halt)], ROTATING)

    assert [d.record["error_code"] for d in dlq] == ["BAD_SIGNATURE"]


def rotating_settings(key_id: str | None = None, **keys: bytes) -> Settings:
    env = {"control_keys": {k: v.decode() for k, v in keys.items()}}
    return Settings(**env, **({"control_key_id": key_id} if key_id else {}))


@pytest.mark.parametrize(("key_id", "key"), [(OLD_ID, OLD_KEY), (NEW_ID, NEW_KEY)])
def test_signed_command_when_key_id_chosen_signs_with_that_key(key_id, key):
    s = rotating_settings(**{OLD_ID: OLD_KEY, NEW_ID: NEW_KEY})

    by_argument = signed_command(s, "HALT", key_id=key_id)
    by_setting = signed_command(
        rotating_settings(key_id, **{OLD_ID: OLD_KEY, NEW_ID: NEW_KEY}), "HALT"
    )

    for cmd in (by_argument, by_setting):
        assert cmd["key_id"] == key_id
        verify(cmd, cmd["ts_event"], ControlKeys({key_id: key}))  # raises unless signed by key


def test_signed_command_when_key_id_removed_raises_config_error_naming_known_ids():
    s = rotating_settings(OLD_ID, **{NEW_ID: NEW_KEY})

    with pytest.raises(ConfigError) as err:
        signed_command(s, "HALT")

    assert OLD_ID in str(err.value) and NEW_ID in str(err.value)
    assert NEW_KEY.decode() not in str(err.value)


# --- live: `riskstream run` against the real broker ----------------------------------------------


@pytest.fixture
def rotating_run(settings: Settings) -> Iterator[tuple[Settings, int]]:
    """``riskstream run`` with two valid keys (a rotation in progress) and metrics on."""
    s = settings.model_copy(
        update={
            "control_keys": {
                OLD_ID: SecretStr(OLD_KEY.decode()),
                NEW_ID: SecretStr(NEW_KEY.decode()),
            }
        }
    )
    port = free_port()
    env = env_of(s) | {"RISKSTREAM_METRICS_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield s, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli_control(s: Settings, key_id: str, action: str) -> None:
    """``riskstream control ACTION`` signing with ``key_id``, as an operator would."""
    env = env_of(s) | {"RISKSTREAM_CONTROL_KEY_ID": key_id}
    done = subprocess.run(
        [sys.executable, "-m", "dataflows.cli", "control", action, "--reason", "rotation drill"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def published_halt(s: Settings, key_id: str, timeout: float = 15.0) -> bytes:
    """The raw bytes of the first HALT signed with ``key_id`` on the control topic."""
    codec = codec_for(s)
    deadline = time.monotonic() + timeout
    for _, value, _ in follow(s, s.topics.name("control")):
        if value is not None:
            cmd = codec.decode("ControlCommand", value)
            if cmd["action"] == "HALT" and cmd["key_id"] == key_id and cmd["signature"]:
                return value
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no HALT signed with {key_id} on the control topic")


def scrape(port: int, wanted: list[str], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        if all(w in text for w in wanted) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@pytest.mark.integration
def test_live_run_when_attacked_during_a_key_rotation_obeys_only_genuine_commands(rotating_run):
    s, port = rotating_run
    live_market(s)
    publish(s, [("TradeProposal", proposal(proposal_id="p0", ts_event=now_ns()))])
    assert consume(s, "scores", "RiskScore", 1)[0]["decision"] == "APPROVE"  # flow is up

    # Hostile commands, stamped by the broker client at produce time (as a real attacker's).
    pub = Publisher(s, codec_for(s))
    t = now_ns()
    hostile = {
        "BAD_SIGNATURE": control(key=b"attacker", key_id=NEW_ID, ts_event=t),
        "UNSIGNED_CONTROL": control(key=None, key_id=NEW_ID, ts_event=t),
        "UNKNOWN_KEY": control(key=b"whatever", key_id="k2019", ts_event=t),
        "EXPIRED_CONTROL": control(key=NEW_KEY, key_id=NEW_ID, ts_event=t - 120 * SECOND),
    }
    for cmd in hostile.values():
        pub.send("control", "ControlCommand", cmd, "GLOBAL")
    assert pub.flush() == 0
    letters = consume(s, "dlq", "DeadLetter", 4)
    assert sorted(d["error_code"] for d in letters) == sorted(hostile)
    publish(s, [("MarketTick", tick(ts_event=now_ns()))])
    publish(s, [("TradeProposal", proposal(proposal_id="p1", ts_event=now_ns()))])
    p1 = {r["proposal_id"]: r for r in consume(s, "scores", "RiskScore", 2)}["p1"]
    assert (p1["decision"], p1["trading_state"]) == ("APPROVE", "ACTIVE")

    # The operator halts with the old key and resumes with the new one: both obeyed.
    cli_control(s, OLD_ID, "halt")
    wait_for_state(s, "HALTED")
    cli_control(s, NEW_ID, "resume")
    wait_for_state(s, "ACTIVE")

    # Replaying the genuine HALT's exact bytes is refused; trading stays active.
    halt_bytes = published_halt(s, OLD_ID)
    pub.producer.produce(s.topics.name("control"), halt_bytes, b"GLOBAL")
    assert pub.flush() == 0
    letters = consume(s, "dlq", "DeadLetter", 5)
    [replayed] = [d for d in letters if d["error_code"] == "REPLAYED_CONTROL"]
    assert replayed["payload"] == halt_bytes
    client = redis.Redis.from_url(s.redis_url.get_secret_value(), decode_responses=True)
    assert client.hget(f"{s.redis_prefix}trading_state:GLOBAL:", "state") == "ACTIVE"

    text = scrape(port, ['riskstream_control_refused_total{reason="REPLAYED_CONTROL"} 1.0'])
    for code in [*hostile, "REPLAYED_CONTROL"]:
        assert f'riskstream_control_refused_total{{reason="{code}"}} 1.0' in text
    assert f'riskstream_control_accepted_total{{key_id="{OLD_ID}"}} 1.0' in text
    assert f'riskstream_control_accepted_total{{key_id="{NEW_ID}"}} 1.0' in text
    assert 'riskstream_dlq_total{reason="REPLAYED_CONTROL"} 1.0' in text
