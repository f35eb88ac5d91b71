"""Integration tests of dataflows.embedded against the real Tansu broker and redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataflows.embedded import EmbeddedBroker, EmbeddedRedis, EmbeddedStack, free_port, pid_alive
from operators.errors import InfrastructureError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as running:
        yield running


def topic_name() -> str:
    return f"test-embedded-{uuid.uuid4().hex[:12]}"


def redis_client(server: EmbeddedRedis, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: redis-py 8 otherwise retries 3 times with backoff."""
    return redis.Redis.from_url(
        server.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def wait_until_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def metadata_ok(bootstrap: str, timeout: float) -> bool:
    try:
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_broker_start_when_started_is_ready_within_seconds_and_round_trips_a_message() -> None:
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        ready = time.monotonic() - started
        topic = topic_name()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        producer.produce(topic, key=b"k1", value=b"hello", partition=0)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "unused-assign-only",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        try:
            message = None
            deadline = time.monotonic() + 10
            while message is None and time.monotonic() < deadline:
                message = consumer.poll(0.2)
        finally:
            consumer.close()

    assert ready < 5.0
    assert broker.ready_seconds is not None and broker.ready_seconds < 5.0
    assert message is not None and message.error() is None
    assert (message.key(), message.value()) == (b"k1", b"hello")


def test_redis_start_when_started_answers_ping_set_get(redis_server: EmbeddedRedis) -> None:
    client = redis_client(redis_server)

    assert client.ping() is True
    assert client.set("risk:k", "v1") is True
    assert client.get("risk:k") == b"v1"
    assert redis_server.ready_seconds is not None and redis_server.ready_seconds < 5.0
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("dir")["dir"] == str(redis_server.tmp_dir)


@pytest.mark.parametrize("kind", [EmbeddedBroker, EmbeddedRedis])
def test_stop_when_running_leaves_no_process_and_no_temp_dir(
    kind: type[EmbeddedBroker] | type[EmbeddedRedis],
) -> None:
    server = kind().start()
    pid, tmp = server.pid, server.tmp_dir
    assert pid is not None and tmp is not None
    assert pid_alive(pid) and tmp.is_dir()

    server.stop()
    server.stop()  # idempotent

    assert not pid_alive(pid)
    assert not Path(f"/proc/{pid}").exists()
    assert not tmp.exists()
    assert server.pid is None and not server.running


@pytest.mark.parametrize("kind", [EmbeddedBroker, EmbeddedRedis])
def test_stop_when_paused_still_terminates_quickly(
    kind: type[EmbeddedBroker] | type[EmbeddedRedis],
) -> None:
    server = kind().start()
    pid = server.pid
    assert pid is not None
    server.pause()

    started = time.monotonic()
    server.stop()

    assert time.monotonic() - started < 3.0  # SIGTERM + SIGCONT, no SIGKILL grace needed
    assert not pid_alive(pid)


@pytest.mark.parametrize("kind", ["EmbeddedRedis", "EmbeddedBroker"])
def test_child_dies_when_parent_is_sigkilled(kind: str) -> None:
    parent = run_child(
        "import json, sys, time\n"
        f"from dataflows.embedded import {kind}\n"
        f"s = {kind}().start()\n"
        "print(json.dumps({'pid': s.pid, 'dir': str(s.tmp_dir)}), flush=True)\n"
        "time.sleep(120)\n"
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read() if parent.stderr else ""
        info = json.loads(line)
        child_pid, tmp = int(info["pid"]), Path(info["dir"])
        assert pid_alive(child_pid)

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)

        assert wait_until_gone(child_pid, 5.0), f"{kind} pid {child_pid} outlived its parent"
        # No atexit ran, so the temp dir stays until the next start() sweeps it.
        assert tmp.is_dir()
        EmbeddedRedis().start().stop()
        assert not tmp.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_atexit_when_parent_exits_without_stop_removes_processes_and_dirs() -> None:
    parent = run_child(
        "import json\n"
        "from dataflows.embedded import EmbeddedStack\n"
        "s = EmbeddedStack().start()\n"
        "print(json.dumps({'pids': [s.broker.pid, s.redis.pid],\n"
        "    'dirs': [str(s.broker.tmp_dir), str(s.redis.tmp_dir)]}), flush=True)\n"
    )
    out, err = parent.communicate(timeout=30)
    assert parent.returncode == 0, err
    info = json.loads(out)

    for pid in info["pids"]:
        assert wait_until_gone(pid, 5.0)
    for directory in info["dirs"]:
        assert not Path(directory).exists()


def test_broker_pause_when_paused_times_out_and_resume_serves_again(
    broker: EmbeddedBroker,
) -> None:
    broker.pause()
    try:
        assert not metadata_ok(broker.bootstrap, timeout=1.0)
    finally:
        broker.resume()

    assert metadata_ok(broker.bootstrap, timeout=5.0)


def test_redis_pause_when_paused_times_out_and_resume_serves_again(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis_client(redis_server, timeout=0.5)
    client.set("k", "before")
    redis_server.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            client.get("k")
    finally:
        redis_server.resume()

    assert redis_client(redis_server).get("k") == b"before"


def test_redis_restart_when_running_keeps_port_and_serves_an_empty_db(
    redis_server: EmbeddedRedis,
) -> None:
    port, old_pid, url = redis_server.port, redis_server.pid, redis_server.url
    client = redis_client(redis_server)
    client.set("k", "v")

    redis_server.restart()

    assert (redis_server.port, redis_server.url) == (port, url)
    assert redis_server.pid != old_pid and old_pid is not None and not pid_alive(old_pid)
    # redis-py notices the dead pooled connection and reconnects; no persistence: data gone.
    assert client.get("k") is None
    assert client.set("k", "again") and client.get("k") == b"again"


def test_redis_start_when_no_redis_server_on_path_raises_mentioning_apt_get(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    server = EmbeddedRedis()

    with pytest.raises(InfrastructureError, match="apt-get install") as info:
        server.start()

    assert "RISKSTREAM_REDIS_URL" in str(info.value)
    assert server.tmp_dir is None and server.pid is None


def test_broker_start_when_fixed_port_is_taken_raises_with_log_tail(
    broker: EmbeddedBroker,
) -> None:
    second = EmbeddedBroker(port=broker.port)

    with pytest.raises(InfrastructureError, match="port in use") as info:
        second.start(timeout=10)

    assert "AddrInUse" in str(info.value)
    assert "\x1b[" not in str(info.value)
    assert second.tmp_dir is None
    assert metadata_ok(broker.bootstrap, timeout=5.0)  # the first broker is unharmed


def test_stack_when_used_as_context_manager_exposes_both_and_stops_both() -> None:
    with EmbeddedStack() as stack:
        pids = [stack.broker.pid, stack.redis.pid]
        assert stack.bootstrap.startswith("127.0.0.1:")
        assert stack.redis_url.startswith("redis://127.0.0.1:")
        assert metadata_ok(stack.bootstrap, timeout=5.0)
        assert redis.Redis.from_url(stack.redis_url).ping()

    for pid in pids:
        assert pid is not None and not pid_alive(pid)


def test_stack_when_redis_fails_stops_the_broker(tmp_path: Path) -> None:
    blocker = EmbeddedRedis().start()
    try:
        stack = EmbeddedStack(redis=EmbeddedRedis(port=blocker.port))
        with pytest.raises(InfrastructureError, match="port in use"):
            stack.start()
        assert stack.broker.pid is None and stack.broker.tmp_dir is None
    finally:
        blocker.stop()


def test_free_port_when_used_by_a_server_is_then_taken() -> None:
    port = free_port()
    with EmbeddedRedis(port=port) as server:
        assert server.port == port
        assert redis_client(server).ping()


def test_broker_stop_when_a_client_is_still_connected_is_fast(broker: EmbeddedBroker) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic_name(), b"x", partition=0)
    assert producer.flush(10) == 0
    pid = broker.pid
    assert pid is not None

    started = time.monotonic()
    broker.stop()

    assert time.monotonic() - started < 2.0  # SIGTERM would wait ~5 s for the client
    assert not pid_alive(pid)
    del producer
