"""The command line fails fast and clearly, and works against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dataflows.embedded import free_port, pid_alive
from tests.integration.conftest import consume, env_of

CLI = [sys.executable, "-m", "dataflows.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30):
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc, time.monotonic() - started


def clean_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    return env | kw


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--workers", "0"], "must be > 0"),
        (["produce", "--source", "nowhere"], "invalid choice"),
        (["demo", "--tick-rate", "fast"], "invalid float"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_argument_when_given_exits_nonzero_with_usage(args, needle):
    proc, elapsed = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 15


def test_bad_setting_when_given_names_the_variable():
    env = clean_env(RISKSTREAM_LIMITS__CONCENTRATION="7", RISKSTREAM_KAFKA_BOOTSTRAP="x:1")
    proc, _ = run_cli("run", env=env)
    assert proc.returncode == 2
    assert "RISKSTREAM_LIMITS__CONCENTRATION" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_broker_when_running_fails_within_15_seconds():
    env = clean_env(
        RISKSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        RISKSTREAM_REDIS_URL="redis://127.0.0.1:1/0",
        RISKSTREAM_METRICS_PORT="0",
    )
    proc, elapsed = run_cli("run", env=env)
    assert proc.returncode == 2
    assert "cannot reach Kafka" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 15


def test_unreachable_redis_when_running_fails_within_15_seconds(settings):
    env = env_of(settings) | {"RISKSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc, elapsed = run_cli("run", env=env)
    assert proc.returncode == 2
    assert "cannot reach Redis" in proc.stderr
    assert elapsed < 15


def test_control_without_key_when_sent_says_how_to_configure(settings):
    env = env_of(settings) | {"RISKSTREAM_CONTROL_KEYS": "{}"}
    proc, _ = run_cli("control", "halt", env=env)
    assert proc.returncode == 2
    assert "RISKSTREAM_CONTROL_KEYS" in proc.stderr


def test_control_halt_when_sent_reaches_the_topic_signed(settings):
    proc, _ = run_cli(
        "control",
        "halt",
        "--scope",
        "portfolio",
        "--target",
        "PF-9",
        "--reason",
        "drill",
        env=env_of(settings),
    )
    assert proc.returncode == 0, proc.stderr
    [cmd] = consume(settings, "control", "ControlCommand", 1)
    assert (cmd["action"], cmd["scope"], cmd["target"]) == ("HALT", "PORTFOLIO", "PF-9")
    assert len(cmd["signature"]) == 64


def test_produce_when_sim_publishes_all_kinds(settings):
    proc, _ = run_cli(
        "produce",
        "--duration",
        "2",
        "--max-speed",
        "--proposal-rate",
        "50",
        env=env_of(settings),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Instrument" in proc.stdout and "MarketTick" in proc.stdout
    assert "TradeProposal" in proc.stdout and "Execution" in proc.stdout


def test_produce_when_real_dataset_publishes_sp500_history(settings):
    proc, _ = run_cli("produce", "--source", "sp500", env=env_of(settings), timeout=120)
    assert proc.returncode == 0, proc.stderr
    [inst] = consume(settings, "instruments", "Instrument", 1)
    assert inst["instrument_id"] == "SP500"
    ticks = consume(settings, "ticks", "MarketTick", 20)
    assert min(t["ts_event"] for t in ticks) < 1_000_000_000 * 1_000_000_000  # before 2001-09


def test_run_when_interrupted_stops_cleanly(settings):
    proc = subprocess.Popen([*CLI, "run"], env=env_of(settings), stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not pid_alive(proc.pid)
