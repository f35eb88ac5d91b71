"""``riskstream demo``: decisions within 60 s, and nothing left running afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataflows.embedded import free_port


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    return env | {"RISKSTREAM_METRICS_PORT": str(free_port())}


def children_of_ports(output: str) -> list[int]:
    """PIDs of processes still listening on the ports the demo said it started."""
    ports = re.findall(r"127\.0\.0\.1:(\d+)", output)
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(f":{p}" in cmd or f" {p}" in cmd.replace("\0", " ") for p in ports) and (
            "tansu" in cmd or "redis-server" in cmd
        ):
            pids.append(int(proc.name))
    return pids


def test_demo_when_run_for_a_while_streams_decisions_and_cleans_up():
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataflows.cli",
            "demo",
            "--duration",
            "25",
            "--halt-at",
            "10",
            "--halt-for",
            "4",
            "--proposal-rate",
            "10",
        ],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 90
    lines = [line for line in out.splitlines() if " -> " in line]
    assert len(lines) > 50
    assert any("TRADING_HALTED" in line for line in lines)
    assert "HALT GLOBAL sent" in out and "RESUME GLOBAL sent" in out
    assert "Traceback" not in proc.stderr
    assert children_of_ports(out) == []


def test_demo_when_interrupted_stops_everything_it_started():
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "demo", "--halt-at", "0"],
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_decision_after = None
    seen: list[str] = []
    started = time.monotonic()
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if " -> " in line:
            first_decision_after = time.monotonic() - started
            break
    assert first_decision_after is not None and first_decision_after < 60
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    out = "".join(seen) + rest
    assert proc.returncode == 0, err[-2000:]
    assert "demo finished" in out
    finished = next(line for line in out.splitlines() if line.startswith("demo finished"))
    assert "demo finished: 0 decisions" not in finished  # the summary counts what was shown
    assert children_of_ports(out) == []
