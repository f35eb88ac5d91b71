"""Real infrastructure for integration tests: one broker and one redis-server per session."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bytewax.testing import run_main

from dataflows.app import codec_for, kafka_flow
from dataflows.embedded import EmbeddedBroker, EmbeddedRedis
from dataflows.kafka_io import Publisher, ensure_topics, follow
from dataflows.settings import Settings
from tests.factories import KEY

ROLE_OF = {
    "MarketTick": "ticks",
    "Instrument": "instruments",
    "TradeProposal": "proposals",
    "Execution": "executions",
    "ControlCommand": "control",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as r:
        yield r


@pytest.fixture
def settings(broker: EmbeddedBroker, redis_server: EmbeddedRedis) -> Settings:
    """Settings with topics and Redis keys unique to the test."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka_bootstrap=broker.bootstrap,
        redis_url=redis_server.url,
        topics={"prefix": f"t{tag}."},
        redis_prefix=f"t{tag}:",
        control_keys={"default": KEY.decode()},
        metrics_port=0,
        topic_partitions=2,
        bars_per_day=1.0,  # the simulator's convention: one bar is one trading day
    )
    ensure_topics(s, s.topics.all())
    return s


def publish(settings: Settings, items: list[tuple[str, dict[str, Any]]], raw: bool = False) -> None:
    """Produce (kind, record) pairs, or (kind, bytes) with ``raw``, in order."""
    pub = Publisher(settings, codec_for(settings))
    for kind, record in items:
        if isinstance(record, bytes):
            topic = settings.topics.name(ROLE_OF[kind])
            pub.producer.produce(topic, record, b"raw", timestamp=1)
        else:
            key = record.get("portfolio_id") or record.get("instrument_id") or "GLOBAL"
            pub.send(ROLE_OF[kind], kind, record, key, event_timestamp=True)
    assert pub.flush() == 0


def consume(settings: Settings, role: str, kind: str, n: int, timeout: float = 30.0) -> list[dict]:
    """The first ``n`` records of a topic (fails after ``timeout`` with what arrived)."""
    codec = codec_for(settings)
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    for _, value, _ in follow(settings, settings.topics.name(role)):
        if value is not None:
            out.append(codec.decode(kind, value))
        if len(out) >= n:
            return out
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"expected {n} {kind} records on {role}, got {len(out)}")


def run_to_end(settings: Settings) -> None:
    """Run the real Kafka flow over everything on the input topics, then stop (replay mode)."""
    run_main(kafka_flow(settings, tail=False, wait_for_data=True))


def env_of(settings: Settings) -> dict[str, str]:
    """RISKSTREAM_* variables that reproduce ``settings`` in a child process."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    env.update(
        RISKSTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        RISKSTREAM_REDIS_URL=settings.redis_url.get_secret_value() if settings.redis_url else "",
        RISKSTREAM_TOPICS__PREFIX=settings.topics.prefix,
        RISKSTREAM_REDIS_PREFIX=settings.redis_prefix,
        RISKSTREAM_CONTROL_KEYS=json.dumps(
            {k: v.get_secret_value() for k, v in settings.control_keys.items()}
        ),
        RISKSTREAM_METRICS_PORT=str(settings.metrics_port),
        RISKSTREAM_TOPIC_PARTITIONS=str(settings.topic_partitions),
        RISKSTREAM_MAX_WAIT_MS=str(settings.max_wait_ms),
        # the bootstrap compiled the kernels into the on-disk cache: a child's warm-up would
        # only cost time (the broker-outage test runs with it)
        RISKSTREAM_WARM_UP="false",
    )
    return env


@pytest.fixture
def live_flow(settings: Settings) -> Iterator[Any]:
    """``riskstream run`` in a child process, stopped with SIGINT after the test."""
    with running_flow(settings) as proc:
        yield proc


@contextlib.contextmanager
def running_flow(settings: Settings) -> Iterator[Any]:
    """``riskstream run`` in a child process, stopped with SIGINT at the end."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run"],
        env=env_of(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
