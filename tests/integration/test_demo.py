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


def test_demo_when_run_for_a_while_streams_decisions_replays_them_exactly_and_cleans_up():
    """``--verify-replay``: the demo's input replayed gives the live decisions, field for
    field, ``stale`` included. A loaded host must not make a live input late or a decision
    stale: the wait bound is 2 s, and an idle partition counts as caught up to 0.5 s before
    its last empty poll (a fill stamped at publication can reach the broker tens of ms
    later when the demo's threads compete for the GIL)."""
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
            "--verify-replay",
        ],
        env=demo_env() | {"RISKSTREAM_MAX_WAIT_MS": "2000", "RISKSTREAM_IDLE_MARGIN_MS": "500"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 150
    lines = [line for line in out.splitlines() if " -> " in line]
    assert len(lines) > 50
    assert any("TRADING_HALTED" in line for line in lines)
    assert "HALT GLOBAL sent" in out and "RESUME GLOBAL sent" in out
    assert "replayed the demo's input" in out and " 0 mismatches" in out
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
