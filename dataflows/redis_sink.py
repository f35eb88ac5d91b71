"""Redis state sink: pipelined, idempotent hash writes that never move back in event time.

Every partition keeps a mirror of the latest write of every key it has written. The key
space is bounded by the reference data and the control targets (``instrument:<id>``,
``reference:<id>``, ``book:<portfolio>``, ``trading_state:<scope>:<target>``,
``regime:<scope>``), so the mirror is too. Each pipeline also refreshes a marker key of
the partition (``SET marker 1 EX ttl GET``): when the marker is gone, Redis lost its data
(a restart without persistence, a flush, a failover to an empty replica), and the whole
mirror is sent again. It is also sent again after any failed write, since Redis may have
restarted while it was unreachable. Writes stay guarded by event time, so re-sending is
idempotent and never moves state back.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataflows.settings import redacted_url
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
MAX_MIRROR_KEYS = 1_000_000
MARKER_INFIX = "_sink_marker:"
"""Marker keys are ``prefix + MARKER_INFIX + <partition id>``: not state, skip them."""
MARKER_TTL_S = 3600


def ts_text(ts: int) -> str:
    """Event time as stored in Redis."""
    return f"{ts:020d}"


def is_marker(key: str, prefix: str = "") -> bool:
    """True for a sink's liveness marker (not part of the flow's state)."""
    return key.startswith(prefix + MARKER_INFIX)


def redis_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client with short timeouts, so a dead server never stalls the flow for long."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 0),  # the sink retries by itself, without blocking the flow
    )


def check_redis(url: str, timeout: float = 5.0) -> None:
    """Raise InfrastructureError unless Redis answers PING within ``timeout``."""
    client = redis_client(url, timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        safe = redacted_url(url)
        raise InfrastructureError(
            f"cannot reach Redis at {safe} within {timeout:g}s: {exc}. Check"
            " RISKSTREAM_REDIS_URL, or unset it to start a local redis-server (demo)."
        ) from None
    finally:
        client.close()


def _newer(held: StateWrite | None, item: StateWrite) -> bool:
    return held is None or held.ts_event <= item.ts_event


class _RedisPartition(StatelessSinkPartition[StateWrite]):
    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis_client(url)
        self._prefix = prefix
        self._script: Any = self._client.register_script(GUARDED_HSET)
        self._marker = f"{prefix}{MARKER_INFIX}{uuid.uuid4().hex}"
        self._mirror: dict[str, StateWrite] = {}
        self._dirty: dict[str, StateWrite] = {}
        self._resync = False
        self._retry_at = 0.0
        self.resyncs = 0
        """How many times the whole mirror was sent again (Redis lost data or was down)."""

    def write_batch(self, items: list[StateWrite]) -> None:
        for item in items:  # coalesce: the newest write per key wins
            if _newer(self._mirror.get(item.key), item):
                self._mirror[item.key] = item
                self._dirty[item.key] = item
        self._bound_mirror()
        if not self._dirty and not self._resync:
            return
        if time.monotonic() < self._retry_at:
            return
        try:
            self._flush()
        except redis.RedisError as exc:
            failed = len(self._mirror) if self._resync else len(self._dirty)
            metrics.STATE_WRITE_FAILURES.inc(failed)
            log.warning("redis write failed (%d keys kept for retry): %s", failed, exc)
            self._resync = True  # it may come back empty: send everything once it answers
            self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _flush(self) -> None:
        """Send the dirty keys (everything when resyncing) and check the marker."""
        writes = self._mirror if self._resync else self._dirty
        marker_was_there = self._send(writes)
        sent = len(writes)
        if not marker_was_there and not self._resync and len(self._mirror) > len(writes):
            log.warning("redis lost its data: sending all %d keys again", len(self._mirror))
            self._send(self._mirror)
            sent += len(self._mirror)
            self.resyncs += 1
        elif self._resync:
            log.info("redis answers again: sent all %d keys", len(self._mirror))
            self.resyncs += 1
        metrics.STATE_WRITES.inc(sent)
        self._dirty.clear()
        self._resync = False

    def _send(self, writes: dict[str, StateWrite]) -> bool:
        """Send one pipeline (marker, then each guarded write); True if the marker was set."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._marker, "1", ex=MARKER_TTL_S, get=True)
        for w in writes.values():
            args = [ts_text(w.ts_event)]
            for name, value in w.fields.items():
                args += [name, value]
            self._script(keys=[self._prefix + w.key], args=args, client=pipe)
        replies = pipe.execute()
        return replies[0] is not None

    def _bound_mirror(self) -> None:
        while len(self._mirror) > MAX_MIRROR_KEYS:  # the key space is bounded: never in practice
            key = next(iter(self._mirror))
            self._mirror.pop(key)
            self._dirty.pop(key, None)

    def close(self) -> None:
        if self._dirty or self._resync:
            self._retry_at = 0.0
            self.write_batch([])
        self._client.close()


class RedisStateSink(DynamicSink[StateWrite]):
    """Writes each StateWrite as a hash under ``prefix + key``, guarded by event time.

    Writes are coalesced per batch and sent in one pipeline. Each partition mirrors the
    latest write of every key; when Redis was unreachable or lost its data (its marker key
    is gone) the whole mirror is sent again, so Redis converges to the flow's state.
    Decisions never wait for Redis.
    """

    def __init__(self, url: str, prefix: str = "riskstream:") -> None:
        self.url = url
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"RedisStateSink(prefix={self.prefix!r})"

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.prefix)
