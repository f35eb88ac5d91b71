"""The HTTP endpoint of a riskstream process: Prometheus metrics, liveness and readiness.

* ``/metrics``: the Prometheus exposition (``prometheus_client``).
* ``/healthz`` (liveness): 200 while every dataflow worker keeps looping. Each worker runs a
  :class:`HeartbeatSource` partition that beats every 50 ms from inside the
  Bytewax worker loop; a worker stuck in a step stops beating, and after
  ``RISKSTREAM_LIVENESS_TIMEOUT_S`` the answer is 503. Before the first beat it is 503
  (``starting``): start-up probes cover that time.
* ``/readyz`` (readiness): 200 when the dataflow has started, the broker and Redis answer
  and the live models are loaded; otherwise 503 with a JSON body naming each check's
  problem. Checks are cached for a couple of seconds, so probes never pile up.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client.exposition import MetricsHandler

from dataflows.settings import redacted_url
from operators.errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], str | None]
"""A readiness check: None when fine, else what is wrong."""

OK = "ok"


class Health:
    """Heartbeats of the dataflow workers and readiness checks, for the probe endpoints."""

    def __init__(
        self,
        liveness_timeout_s: float = 30.0,
        *,
        cache_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.cache_s = cache_s
        self.clock = clock
        self.beats: dict[int, float] = {}
        self.checks: dict[str, Check] = {}
        self._cached: tuple[float, dict[str, str]] | None = None
        self._lock = threading.Lock()

    def beat(self, worker: int) -> None:
        """Worker ``worker``'s loop is running now."""
        self.beats[worker] = self.clock()

    def add_check(self, name: str, check: Check) -> None:
        """Make ``/readyz`` depend on ``check``."""
        self.checks[name] = check

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for ``/healthz``."""
        if not self.beats:
            return 503, {"status": "starting", "problem": "the dataflow has not started yet"}
        now = self.clock()
        ages = {str(w): round(now - t, 3) for w, t in sorted(self.beats.items())}
        stale = {w: a for w, a in ages.items() if a > self.liveness_timeout_s}
        body: dict[str, Any] = {"status": OK, "heartbeat_age_s": ages}
        if stale:
            body["status"] = "stalled"
            body["problem"] = (
                f"worker(s) {', '.join(stale)} made no progress for over"
                f" {self.liveness_timeout_s:g} s"
            )
            return 503, body
        return 200, body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for ``/readyz``: every check's result."""
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.cache_s:
                self._cached = (now, self._run_checks())
            results = dict(self._cached[1])
        results["dataflow"] = OK if self.beats else "the dataflow has not started yet"
        ready = all(r == OK for r in results.values())
        return (200 if ready else 503), {
            "status": "ready" if ready else "not ready",
            "checks": dict(sorted(results.items())),
        }

    def _run_checks(self) -> dict[str, str]:
        results = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a check must answer, not raise
                problem = f"check failed: {exc!r}"
            results[name] = OK if problem is None else problem
        return results


# ------------------------------------------------------------------------ heartbeat source

BEAT_EVERY_S = 0.05
"""How often a worker beats. Often, though liveness needs far less: each input partition
has its own Bytewax epoch clock, advanced only when it is polled, and every partition
waits at an epoch boundary for the slowest one, so a heartbeat polled once a second held
the Kafka partitions up by up to a second at every boundary (with recovery's 5 s epochs)."""


class _HeartbeatPartition(StatelessSourcePartition[None]):
    def __init__(self, health: Health, worker: int, stop: threading.Event, every_s: float):
        self.health = health
        self.worker = worker
        self.stop = stop
        self.every = timedelta(seconds=every_s)

    def next_batch(self) -> list[None]:
        if self.stop.is_set():
            raise StopIteration
        self.health.beat(self.worker)
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + self.every


class HeartbeatSource(DynamicSource[None]):
    """One partition per worker that beats ``health`` from the worker loop; emits nothing.

    It ends when ``stop`` is set, so it never keeps a stopping flow alive.
    """

    def __init__(
        self, health: Health, stop: threading.Event, every_s: float = BEAT_EVERY_S
    ) -> None:
        self.health = health
        self.stop = stop
        self.every_s = every_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HeartbeatPartition:
        return _HeartbeatPartition(self.health, worker_index, self.stop, self.every_s)


class _Discard(StatelessSinkPartition[None]):
    def write_batch(self, items: list[None]) -> None:
        pass


class _DiscardSink(DynamicSink[None]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard()


def add_heartbeat(
    flow: Dataflow, health: Health, stop: threading.Event, every_s: float = BEAT_EVERY_S
) -> None:
    """Beat ``health`` from every worker of ``flow`` until ``stop`` is set.

    The heartbeat stream goes to a sink that discards it: Bytewax runs no input whose
    stream reaches no output.
    """
    beats = op.input("heartbeat", flow, HeartbeatSource(health, stop, every_s))
    op.output("heartbeat_out", beats, _DiscardSink())


# ------------------------------------------------------------------------ checks


def broker_check(client_config: dict[str, str], timeout_s: float = 1.5) -> Check:
    """The broker answers a metadata request within ``timeout_s``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin: AdminClient | None = None
    where = client_config.get("bootstrap.servers", "")

    def check() -> str | None:
        nonlocal admin
        if admin is None:
            admin = AdminClient(dict[str, Any](client_config))
        try:
            admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            return f"cannot reach Kafka at {where} within {timeout_s:g} s: {exc}"
        return None

    return check


def redis_check(url: str, timeout_s: float = 1.5) -> Check:
    """Redis answers PING within ``timeout_s``."""
    import redis

    from dataflows.redis_sink import redis_client

    client = redis_client(url, timeout_s)
    where = redacted_url(url)

    def check() -> str | None:
        try:
            client.ping()
        except redis.RedisError as exc:
            return f"cannot reach Redis at {where} within {timeout_s:g} s: {exc}"
        return None

    return check


def models_check(problems: dict[str, str]) -> Check:
    """The live models loaded at start-up (``problems``: why each one could not)."""
    text = "; ".join(problems[name] for name in sorted(problems))
    return lambda: text or None


# ------------------------------------------------------------------------ server


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(MetricsHandler):
    health: Health | None = None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz") and self.health is not None:
            probe = self.health.liveness if path == "/healthz" else self.health.readiness
            status, body = probe()
            self._send_json(status, body)
        elif path in ("/", "/metrics"):
            super().do_GET()
        else:
            self._send_json(404, {"status": "not found", "paths": self._paths()})

    def _paths(self) -> list[str]:
        return ["/metrics", "/healthz", "/readyz"] if self.health is not None else ["/metrics"]

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_metrics(
    port: int, host: str = "127.0.0.1", health: Health | None = None
) -> ThreadingHTTPServer | None:
    """Serve /metrics (and /healthz, /readyz with ``health``) on ``host:port`` in a thread.

    Port 0 turns the endpoint off (None); a taken port is a configuration error.
    """
    if not port:
        return None
    handler = type("RiskstreamHandler", (_Handler,), {"health": health})
    server_class = _Server6 if ":" in host else ThreadingHTTPServer
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on port {port}: {exc}; set RISKSTREAM_METRICS_PORT"
            " to a free port, or 0 to turn metrics off"
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (probes: /healthz, /readyz)", host, port)
    return server
