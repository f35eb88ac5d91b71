"""The Redis state sink against a real redis-server."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataflows.embedded import EmbeddedRedis
from dataflows.redis_sink import RedisStateSink, check_redis, is_marker, ts_text
from operators import metrics
from operators.records import StateWrite


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 0))


def state(url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every state hash under ``prefix`` (markers left out), by key without the prefix."""
    c = client(url)
    keys = [k for k in c.scan_iter(f"{prefix}*") if not is_marker(k, prefix)]
    return {k[len(prefix) :]: c.hgetall(k) for k in keys}


def script_calls(url: str) -> int:
    stats = client(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_older_write_when_applied_after_newer_does_not_move_state_back(redis_server):
    part = RedisStateSink(redis_server.url, "guard:").build("s", 0, 1)
    part.write_batch([StateWrite("book:PF", 200, {"cash": "2"})])
    part.write_batch([StateWrite("book:PF", 100, {"cash": "1"})])
    part.write_batch([StateWrite("book:PF", 200, {"cash": "2"})])  # a replay: idempotent
    assert client(redis_server.url).hgetall("guard:book:PF") == {
        "cash": "2",
        "ts_event": ts_text(200),
    }


def test_batch_when_it_has_several_writes_per_key_keeps_the_newest(redis_server):
    part = RedisStateSink(redis_server.url, "coalesce:").build("s", 0, 1)
    part.write_batch([StateWrite("k", 3, {"v": "c"}), StateWrite("k", 1, {"v": "a"})])
    assert client(redis_server.url).hget("coalesce:k", "v") == "c"


def test_batch_when_redis_kept_its_data_sends_only_the_changed_keys(redis_server):
    part = RedisStateSink(redis_server.url, "cheap:").build("s", 0, 1)
    part.write_batch([StateWrite(f"k{i}", 1, {"v": "a"}) for i in range(50)])
    before = script_calls(redis_server.url)
    part.write_batch([StateWrite("k1", 2, {"v": "b"}), StateWrite("k2", 0, {"v": "old"})])
    assert script_calls(redis_server.url) - before == 1  # k2's older write is not even sent
    assert part.resyncs == 0


def test_redis_down_when_writing_counts_failures_and_converges_after_restart():
    with EmbeddedRedis() as server:
        part = RedisStateSink(server.url, "outage:").build("s", 0, 1)
        part.write_batch([StateWrite("a", 1, {"v": "1"}), StateWrite("kept", 1, {"v": "k"})])
        before = metrics.STATE_WRITE_FAILURES._value.get()
        server.pause()
        try:
            part.write_batch([StateWrite("a", 2, {"v": "2"}), StateWrite("b", 2, {"v": "x"})])
        finally:
            server.resume()
        assert metrics.STATE_WRITE_FAILURES._value.get() > before
        server.restart()  # data lost: the sink must rewrite everything it wrote
        part._retry_at = 0.0  # skip the back-off instead of sleeping in the test
        part.write_batch([])
        assert state(server.url, "outage:") == {
            "a": {"v": "2", "ts_event": ts_text(2)},
            "b": {"v": "x", "ts_event": ts_text(2)},
            "kept": {"v": "k", "ts_event": ts_text(1)},
        }


def test_redis_restart_when_unnoticed_the_next_batch_restores_every_key():
    with EmbeddedRedis() as server:
        part = RedisStateSink(server.url, "lost:").build("s", 0, 1)
        part.write_batch([StateWrite(f"k{i}", 5, {"v": str(i)}) for i in range(20)])
        server.restart()  # between two batches: no write failed
        part.write_batch([StateWrite("k0", 6, {"v": "new"})])
        got = state(server.url, "lost:")
        assert len(got) == 20
        assert got["k0"] == {"v": "new", "ts_event": ts_text(6)}
        assert got["k19"] == {"v": "19", "ts_event": ts_text(5)}
        assert part.resyncs == 1


def test_redis_killed_when_restarted_converges_to_the_uninterrupted_state():
    import os
    import signal

    with EmbeddedRedis() as server:
        part = RedisStateSink(server.url, "kill:").build("s", 0, 1)
        reference = RedisStateSink(server.url, "ref:").build("s", 0, 1)
        batches = [[StateWrite(f"k{i}", n * 10 + i, {"v": f"{n}.{i}"}) for i in range(5)]
                   for n in range(6)]  # fmt: skip
        failures = metrics.STATE_WRITE_FAILURES._value.get()
        for n, batch in enumerate(batches):
            if n == 2:
                assert server.pid is not None
                os.killpg(server.pid, signal.SIGKILL)
            if n == 4:
                server.restart()
                part._retry_at = 0.0
            part.write_batch(batch)
        assert metrics.STATE_WRITE_FAILURES._value.get() > failures
        for batch in batches:
            reference.write_batch(batch)
        assert state(server.url, "kill:") == state(server.url, "ref:")
        assert len(state(server.url, "kill:")) == 5


def test_marker_key_when_written_lives_under_the_prefix_with_a_ttl(redis_server):
    part = RedisStateSink(redis_server.url, "mark:").build("s", 0, 1)
    part.write_batch([StateWrite("k", 1, {"v": "1"})])
    c = client(redis_server.url)
    markers = [k for k in c.scan_iter("mark:*") if is_marker(k, "mark:")]
    assert len(markers) == 1
    assert 0 < c.ttl(markers[0]) <= 3600


def test_unreachable_redis_when_checked_raises_a_clear_error():
    import pytest

    from operators.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1"):
        check_redis("redis://user:secret@127.0.0.1:1/0", timeout=1)
