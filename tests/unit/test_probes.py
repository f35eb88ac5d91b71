"""Liveness and readiness: the Health object, the HTTP endpoint and the heartbeat source."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.embedded import free_port
from dataflows.metrics_server import (
    Health,
    add_heartbeat,
    models_check,
    redis_check,
    serve_metrics,
)
from operators.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- Health -------------------------------------------------------------------------------


def test_liveness_when_no_beat_yet_is_starting_503():
    status, body = Health(30.0, clock=Clock()).liveness()
    assert status == 503 and body["status"] == "starting"


def test_liveness_when_every_worker_beat_recently_is_200_with_ages():
    clock = Clock()
    health = Health(30.0, clock=clock)
    health.beat(0)
    clock.now += 5
    health.beat(1)
    status, body = health.liveness()
    assert status == 200
    assert body == {"status": "ok", "heartbeat_age_s": {"0": 5.0, "1": 0.0}}


def test_liveness_when_one_worker_stalls_past_the_timeout_is_503_naming_it():
    clock = Clock()
    health = Health(30.0, clock=clock)
    health.beat(0)
    health.beat(1)
    clock.now += 31
    health.beat(1)
    status, body = health.liveness()
    assert status == 503 and body["status"] == "stalled"
    assert "worker(s) 0 made no progress for over 30 s" in body["problem"]


def test_readiness_when_all_checks_pass_and_flow_started_is_200():
    health = Health(clock=Clock())
    health.add_check("broker", lambda: None)
    health.add_check("models", models_check({}))
    health.beat(0)
    status, body = health.readiness()
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {"broker": "ok", "dataflow": "ok", "models": "ok"},
    }


def test_readiness_when_checks_fail_is_503_with_each_problem():
    def boom() -> str | None:
        raise RuntimeError("kaput")

    health = Health(clock=Clock())
    health.add_check("redis", lambda: "cannot reach Redis")
    health.add_check("broker", boom)
    health.add_check("models", models_check({"regime_tft": "refusing regime_tft"}))
    status, body = health.readiness()
    assert status == 503 and body["status"] == "not ready"
    assert body["checks"] == {
        "broker": "check failed: RuntimeError('kaput')",
        "dataflow": "the dataflow has not started yet",
        "models": "refusing regime_tft",
        "redis": "cannot reach Redis",
    }


def test_readiness_when_asked_again_within_the_cache_time_reuses_results():
    clock = Clock()
    calls: list[float] = []
    health = Health(clock=clock, cache_s=2.0)
    health.add_check("broker", lambda: calls.append(clock.now))
    health.readiness()
    clock.now += 1
    health.readiness()
    clock.now += 1.5
    health.readiness()
    assert calls == [1000.0, 1002.5]


def test_redis_check_when_nothing_listens_names_the_server():
    port = free_port()
    problem = redis_check(f"redis://:secret@127.0.0.1:{port}/0", timeout_s=0.5)()
    assert problem is not None and f"127.0.0.1:{port}/0" in problem
    assert "secret" not in problem


# --- HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Any:
    health = Health(30.0)
    port = free_port()
    server = serve_metrics(port, "127.0.0.1", health)
    assert server is not None
    yield f"http://127.0.0.1:{port}", health
    server.shutdown()
    server.server_close()


def test_endpoint_serves_metrics_and_json_probes(endpoint: Any):
    base, health = endpoint
    status, text = get(f"{base}/metrics")
    assert status == 200 and b"riskstream_decisions_total" in text

    status, body = get(f"{base}/healthz")
    assert status == 503 and json.loads(body)["status"] == "starting"
    health.add_check("redis", lambda: "cannot reach Redis at x")
    health.beat(0)
    assert get(f"{base}/healthz")[0] == 200
    status, body = get(f"{base}/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["redis"] == "cannot reach Redis at x"
    assert get(f"{base}/nope")[0] == 404


def test_endpoint_when_port_taken_is_a_config_error(endpoint: Any):
    base, _ = endpoint
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="RISKSTREAM_METRICS_PORT"):
        serve_metrics(port, "127.0.0.1", None)
    assert serve_metrics(0) is None


# --- heartbeat in a real dataflow ---------------------------------------------------------


def test_heartbeat_source_beats_from_the_worker_loop_and_ends_on_stop():
    health = Health(30.0)
    stop = threading.Event()
    flow = Dataflow("hb")
    out: list[int] = []
    op.output("out", op.input("in", flow, TestingSource([1, 2, 3])), TestingSink(out))
    add_heartbeat(flow, health, stop, every_s=0.05)
    runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 20
    while not health.beats and time.monotonic() < deadline:
        time.sleep(0.01)
    first = dict(health.beats)
    time.sleep(0.3)
    assert runner.is_alive(), "the heartbeat keeps a live flow running"
    assert health.beats[0] > first[0], "it beats again"
    stop.set()
    runner.join(20)
    assert not runner.is_alive(), "the flow ends once stop is set"
    assert out == [1, 2, 3]
