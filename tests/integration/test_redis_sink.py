"""The Redis state sink against a real redis-server."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataflows.embedded import EmbeddedRedis
from dataflows.redis_sink import RedisStateSink, check_redis, ts_text
from operators import metrics
from operators.records import StateWrite


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 0))


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


def test_redis_down_when_writing_counts_failures_and_converges_after_restart():
    with EmbeddedRedis() as server:
        part = RedisStateSink(server.url, "outage:").build("s", 0, 1)
        part.write_batch([StateWrite("a", 1, {"v": "1"})])
        before = metrics.STATE_WRITE_FAILURES._value.get()
        server.pause()
        try:
            part.write_batch([StateWrite("a", 2, {"v": "2"}), StateWrite("b", 2, {"v": "x"})])
        finally:
            server.resume()
        assert metrics.STATE_WRITE_FAILURES._value.get() > before
        server.restart()  # data lost: the sink must rewrite what it holds
        part._retry_at = 0.0  # skip the back-off instead of sleeping in the test
        part.write_batch([])
        c = client(server.url)
        assert c.hget("outage:a", "v") == "2"
        assert c.hget("outage:b", "v") == "x"


def test_unreachable_redis_when_checked_raises_a_clear_error():
    import pytest

    from operators.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match=r"cannot reach Redis at 127\.0\.0\.1:1"):
        check_redis("redis://user:secret@127.0.0.1:1/0", timeout=1)
