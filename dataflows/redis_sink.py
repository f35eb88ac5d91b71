"""Redis state sink: pipelined, idempotent hash writes that never move back in event time."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators import metrics
from operators.errors import InfrastructureError
from operators.records import StateWrite

log = logging.getLogger(__name__)

TS_FIELD = "ts_event"
# Event times are stored zero-padded to 20 digits so that Lua compares them as strings
# (nanosecond epochs do not fit a Lua double exactly).
GUARDED_HSET = """
local current = redis.call('HGET', KEYS[1], 'ts_event')
if current and current > ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ts_event', ARGV[1], unpack(ARGV, 2))
return 1
"""
RETRY_AFTER_S = 1.0
MAX_PENDING_KEYS = 100_000


def ts_text(ts: int) -> str:
    """Event time as stored in Redis."""
    return f"{ts:020d}"


def redis_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client with short timeouts, so a dead server never stalls the flow for long."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10
    )


def check_redis(url: str, timeout: float = 5.0) -> None:
    """Raise InfrastructureError unless Redis answers PING within ``timeout``."""
    client = redis_client(url, timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        safe = url.split("@")[-1]
        raise InfrastructureError(
            f"cannot reach Redis at {safe} within {timeout:g}s: {exc}. Check"
            " RISKSTREAM_REDIS_URL, or unset it to start a local redis-server (demo)."
        ) from None
    finally:
        client.close()


class _RedisPartition(StatelessSinkPartition[StateWrite]):
    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis_client(url)
        self._prefix = prefix
        self._script: Any = self._client.register_script(GUARDED_HSET)
        self._pending: dict[str, StateWrite] = {}
        self._retry_at = 0.0

    def write_batch(self, items: list[StateWrite]) -> None:
        for item in items:  # coalesce: the newest write per key wins
            held = self._pending.get(item.key)
            if held is None or held.ts_event <= item.ts_event:
                self._pending[item.key] = item
        if time.monotonic() < self._retry_at:
            self._bound_pending()
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for w in self._pending.values():
                args = [ts_text(w.ts_event)]
                for name, value in w.fields.items():
                    args += [name, value]
                self._script(keys=[self._prefix + w.key], args=args, client=pipe)
            pipe.execute()
        except redis.RedisError as exc:
            metrics.STATE_WRITE_FAILURES.inc(len(self._pending))
            log.warning("redis write failed (%d keys kept for retry): %s", len(self._pending), exc)
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self._bound_pending()
            return
        metrics.STATE_WRITES.inc(len(self._pending))
        self._pending.clear()

    def _bound_pending(self) -> None:
        while len(self._pending) > MAX_PENDING_KEYS:
            self._pending.pop(next(iter(self._pending)))

    def close(self) -> None:
        if self._pending:
            self._retry_at = 0.0
            self.write_batch([])
        self._client.close()


class RedisStateSink(DynamicSink[StateWrite]):
    """Writes each StateWrite as a hash under ``prefix + key``, guarded by event time.

    Writes are coalesced per batch and sent in one pipeline. When Redis is down the
    latest write of every key is kept and retried, so decisions never wait for Redis and
    Redis converges once it is back.
    """

    def __init__(self, url: str, prefix: str = "riskstream:") -> None:
        self.url = url
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"RedisStateSink(prefix={self.prefix!r})"

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.prefix)
