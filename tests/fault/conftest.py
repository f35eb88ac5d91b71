"""Fault tests: real broker and redis-server, ``riskstream run`` as a child process.

Fixtures ``broker``, ``redis_server`` and ``settings`` are those of the integration tests.
The helpers here are generic: a paced feeder of the simulated market, a child flow process
that can be killed, a collector of a topic's raw records, Redis and metrics snapshots.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataflows.app import codec_for
from dataflows.kafka_io import Publisher, consumer_config, follow
from dataflows.producer import KEY_FIELD, ROLE, ProduceOptions, now_ns, simulated_events
from dataflows.redis_sink import is_marker
from dataflows.settings import Settings
from operators.config import NS
from schemas.codec import Codec
from tests.integration.conftest import broker, env_of, redis_server, settings

__all__ = ["broker", "redis_server", "settings"]

WALL_CLOCK = ("ts_decided", "latency_us")
"""RiskScore fields that depend on when a decision was made, not on what was decided."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fault" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll ``check`` until it holds; the seconds it took (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


class Feeder(threading.Thread):
    """Publishes the seeded simulated market paced by event time (event time = wall clock).

    It runs for ``opts.duration_s`` of event time, or until ``finish()`` when that is None.
    Proposals of the last ``quiet_tail_s`` are left out, so every proposal is followed by
    ticks of its instrument (a live flow then decides it without waiting for the timeout).
    ``fill_every`` > 0 also publishes a fill of every N-th proposal, 1 µs after it.
    """

    def __init__(
        self, settings: Settings, opts: ProduceOptions, quiet_tail_s: float = 1.5,
        fill_every: int = 0, also: Settings | None = None,
    ) -> None:  # fmt: skip
        """``also``: a second namespace that gets every record too (a reference run's)."""
        super().__init__(daemon=True, name="feeder")
        self.settings = settings
        self.also = also
        self.opts = opts
        self.quiet_tail_s = quiet_tail_s
        self.fill_every = fill_every
        self.proposal_ids: list[str] = []
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.finishing = threading.Event()
        self._tail_ns = int(quiet_tail_s * NS)

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # surfaced by join_checked()
            self.error = exc

    def join_checked(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """End the feed: no proposal after now, ticks for ``quiet_tail_s`` more, then stop."""
        self.finishing.set()

    def _feed(self) -> None:
        pubs = [Publisher(s, codec_for(s)) for s in (self.settings, self.also) if s is not None]
        start = now_ns()
        wall0 = time.monotonic()
        last_proposal = None if self.opts.duration_s is None else (
            start - start % NS + int((self.opts.duration_s - self.quiet_tail_s) * NS)
        )  # fmt: skip
        last_price: dict[str, float] = {}
        for kind, rec in simulated_events(self.opts, start):
            if self.stop.is_set():
                break
            ahead = (rec["ts_event"] - start) / NS - (time.monotonic() - wall0)
            if ahead > 0.002:
                time.sleep(ahead)
            if last_proposal is None and self.finishing.is_set():
                last_proposal = rec["ts_event"]
            if last_proposal is not None and rec["ts_event"] > last_proposal + self._tail_ns:
                break
            if kind == "MarketTick":
                last_price[rec["instrument_id"]] = rec["last"]
            if kind == "TradeProposal":
                if last_proposal is not None and rec["ts_event"] > last_proposal:
                    continue
                self.proposal_ids.append(rec["proposal_id"])
            self._send(pubs, kind, rec)
            n = len(self.proposal_ids)
            if kind == "TradeProposal" and self.fill_every and n % self.fill_every == 0:
                price = last_price.get(rec["instrument_id"])
                if price is not None:
                    self._send(pubs, "Execution", fill_of(rec, price))
        assert all(pub.flush(30) == 0 for pub in pubs)

    def _send(self, pubs: list[Publisher], kind: str, rec: dict[str, Any]) -> None:
        for pub in pubs:
            pub.send(ROLE[kind], kind, rec, rec[KEY_FIELD.get(kind, "portfolio_id")])
        self.counts[kind] = self.counts.get(kind, 0) + 1


def fill_of(proposal: dict[str, Any], price: float) -> dict[str, Any]:
    """A fill of ``proposal`` at ``price``, 1 µs after it."""
    return {
        "execution_id": f"FILL-{proposal['proposal_id']}",
        "portfolio_id": proposal["portfolio_id"],
        "instrument_id": proposal["instrument_id"],
        "side": proposal["side"],
        "quantity": proposal["quantity"],
        "price": price,
        "proposal_id": proposal["proposal_id"],
        "ts_event": proposal["ts_event"] + 1_000,
    }


class FlowProcess:
    """``riskstream run`` as a child process that can be stopped or killed and restarted."""

    def __init__(
        self, settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.env = env_of(settings) | (env or {})
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []
        """time.monotonic() of every start."""

    def start(self) -> FlowProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dataflows.cli", "run", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        self.starts.append(time.monotonic())
        return self

    def kill9(self) -> None:
        """SIGKILL: no flush, no snapshot, no goodbye."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT (graceful: answers what is held, flushes sinks); the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"the flow did not stop in {timeout:g} s") from None
        return int(proc.returncode)

    def assert_running(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Received:
    """One record of a topic, as it arrived."""

    at: float
    """time.monotonic() when the collector saw it."""
    key: bytes | None
    value: bytes


class Collector(threading.Thread):
    """Reads every record of a topic from the beginning, in a thread, as raw bytes."""

    def __init__(self, settings: Settings, role: str) -> None:
        super().__init__(daemon=True, name=f"collect-{role}")
        self.settings = settings
        self.topic = settings.topics.name(role)
        self.records: list[Received] = []
        self.halt = threading.Event()

    def run(self) -> None:
        for key, value, _ in follow(self.settings, self.topic, poll_s=0.05):
            if self.halt.is_set():
                return
            if value is not None:
                self.records.append(Received(time.monotonic(), key, value))

    def close(self) -> None:
        self.halt.set()
        self.join(10)


def decode_scores(settings: Settings, records: list[Received]) -> list[dict[str, Any]]:
    codec = codec_for(settings)
    return [codec.decode("RiskScore", r.value) for r in records]


def without_wall_clock(codec: Codec, score: dict[str, Any]) -> bytes:
    """The Avro bytes of ``score`` with ``ts_decided`` and ``latency_us`` zeroed."""
    return codec.encode("RiskScore", score | {"ts_decided": 0, "latency_us": 0.0})


def redis_state(settings: Settings, prefix: str | None = None) -> dict[str, dict[str, str]]:
    """Every state hash under the prefix (sink markers left out), keyed without the prefix."""
    prefix = settings.redis_prefix if prefix is None else prefix
    url = settings.redis_url.get_secret_value() if settings.redis_url else ""
    client = redis.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 0))
    try:
        keys = [k for k in client.scan_iter(f"{prefix}*", count=1000) if not is_marker(k, prefix)]
        return {k[len(prefix) :]: client.hgetall(k) for k in keys}
    finally:
        client.close()


def copy_topics(src: Settings, dst: Settings, roles: list[str]) -> int:
    """Copy every record of ``roles`` from src's topics to dst's: same partition, key, bytes."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from dataflows.kafka_io import producer_config

    consumer = Consumer(
        {"group.id": "copy", "enable.auto.commit": False, "enable.partition.eof": True}
        | consumer_config(src)
    )
    producer = Producer(producer_config(dst))
    copied = 0
    try:
        for role in roles:
            topic = src.topics.name(role)
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in parts])
            left = set(parts)
            while left:
                for msg in consumer.consume(1000, 1.0):
                    if msg.error() is not None:
                        left.discard(msg.partition())
                        continue
                    producer.produce(
                        dst.topics.name(role),
                        msg.value(),
                        msg.key(),
                        partition=msg.partition(),
                        timestamp=msg.timestamp()[1],
                    )
                    producer.poll(0)
                    copied += 1
        assert producer.flush(30) == 0
    finally:
        consumer.close()
    return copied


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics page, as ``name{labels}`` -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def total(sample: dict[str, float], name: str) -> float:
    """Sum of every series of metric ``name`` (all label values)."""
    return sum(v for k, v in sample.items() if k == name or k.startswith(name + "{"))


def read_topic(settings: Settings, role: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of a topic now, partition by partition in offset order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"group.id": "read", "enable.auto.commit": False, "enable.partition.eof": True}
        | consumer_config(settings)
    )
    topic = settings.topics.name(role)
    out: list[tuple[bytes | None, bytes]] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        left = set(parts)
        while left:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    left.discard(msg.partition())
                elif msg.value() is not None:
                    out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def namespaced(settings: Settings, tag: str) -> Settings:
    """The same settings with topics and Redis keys of their own (``tag``), topics created."""
    from dataflows.kafka_io import ensure_topics

    topics = settings.topics.model_copy(update={"prefix": f"{settings.topics.prefix}{tag}."})
    out = settings.model_copy(
        update={"topics": topics, "redis_prefix": f"{tag}-{settings.redis_prefix}"}
    )
    ensure_topics(out, out.topics.all())
    return out


INPUT_ROLES = ["instruments", "ticks", "proposals", "executions"]
"""The input topics the feeder writes (controls are left out: the flow writes its own)."""


def reference_run(settings: Settings, tag: str = "ref") -> Settings:
    """Copy the inputs to a namespace of their own and run the flow over them once, in
    replay mode (waits for data, never for the clock): the uninterrupted reference."""
    from bytewax.testing import run_main

    from dataflows.app import kafka_flow

    ref = namespaced(settings, tag)
    copy_topics(settings, ref, INPUT_ROLES)
    run_main(kafka_flow(ref, tail=False, wait_for_data=True))
    return ref


class MetricsSampler(threading.Thread):
    """Scrapes a /metrics page every ``every_s`` in a thread: (time.monotonic(), sample).

    A scrape that fails (the process is starting or gone) is skipped, not recorded.
    """

    def __init__(self, port: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True, name=f"metrics-{port}")
        self.port = port
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            try:
                sample = scrape(self.port)
            except OSError:
                continue
            self.samples.append((time.monotonic(), sample))

    def close(self) -> None:
        self.halt.set()
        self.join(10)

    def series(self, name: str) -> list[tuple[float, float]]:
        """(time, sum over every label set of ``name``) of every sample so far."""
        return [(at, total(sample, name)) for at, sample in list(self.samples)]
