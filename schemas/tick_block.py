"""Batch decoding of MarketTick messages into columns, in one Numba call per batch.

The fast path reads the single-object encoding of the *current* MarketTick schema
(``C3 01`` + fingerprint + body) straight from a buffer of concatenated messages and
checks the same rules as :func:`operators.validate.validate`. A message it cannot take
(another writer schema, non-ASCII text, a payload that breaks a rule, anything odd) is
flagged, and the caller decodes that one with the generic codec, which gives the exact
error and reason code. So the fast path only ever accepts what the generic path accepts,
with the same values.

Instruments are told apart by a 64-bit FNV-1a hash of the id's bytes; the caller checks
that equal hashes have equal bytes (:func:`same_ids`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from operators.validate import MAX_ID_LEN, MAX_TS_NS, MAX_VALUE, MIN_TS_NS, MIN_VALUE

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
HEADER_LEN = 10


class TickColumns(NamedTuple):
    """Decoded ticks, one row per message; rows with ``ok`` False need the generic codec."""

    ok: np.ndarray  # bool
    ts: np.ndarray  # int64
    bid: np.ndarray
    ask: np.ndarray
    last: np.ndarray
    size: np.ndarray
    yld: np.ndarray  # NaN when the tick carries no yield
    id_start: np.ndarray  # int64, offset of the instrument id in the buffer
    id_len: np.ndarray  # int64
    id_hash: np.ndarray  # uint64


@njit(cache=True)
def fnv1a(buf: np.ndarray, start: int, length: int) -> np.uint64:
    """64-bit FNV-1a hash of ``buf[start:start + length]``."""
    h = FNV_OFFSET
    for i in range(start, start + length):
        h = (h ^ np.uint64(buf[i])) * FNV_PRIME
    return h


@njit(cache=True)
def _varint(buf: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos``: (value, next position), next position -1 when malformed."""
    shift = 0
    acc = np.uint64(0)
    while pos < end and shift < 64:
        b = buf[pos]
        pos += 1
        acc |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            value = np.int64(acc >> np.uint64(1)) ^ -np.int64(acc & np.uint64(1))
            return int(value), pos
        shift += 7
    return 0, -1


@njit(cache=True)
def _double(buf: np.ndarray, pos: int, scratch: np.ndarray, raw: np.ndarray) -> float:
    """Little-endian IEEE double at ``pos`` (the caller checked 8 bytes are there).

    ``raw`` is ``scratch`` (one float64) viewed as bytes.
    """
    for k in range(8):
        raw[k] = buf[pos + k]
    return scratch[0]


@njit(cache=True)
def _ascii(buf: np.ndarray, start: int, length: int) -> bool:
    high = 0
    for i in range(start, start + length):
        high |= buf[i]
    return high < 0x80


@njit(cache=True)
def _decode_all(
    buf: np.ndarray,
    bounds: np.ndarray,
    header: np.ndarray,
    ok: np.ndarray,
    ts: np.ndarray,
    prices: np.ndarray,
    id_start: np.ndarray,
    id_len: np.ndarray,
    id_hash: np.ndarray,
    min_ts: int,
    max_ts: int,
    max_id: int,
) -> None:
    scratch = np.empty(1, np.float64)
    raw = scratch.view(np.uint8)
    inf = np.inf
    for r in range(bounds.shape[0] - 1):
        pos, end = bounds[r], bounds[r + 1]
        ok[r] = False
        if end - pos < HEADER_LEN:
            continue
        same = True
        for k in range(HEADER_LEN):
            if buf[pos + k] != header[k]:
                same = False
                break
        if not same:
            continue
        pos += HEADER_LEN
        n, pos = _varint(buf, pos, end)  # instrument_id
        if pos < 0 or n < 1 or n > max_id or pos + n > end or not _ascii(buf, pos, n):
            continue
        id_start[r], id_len[r] = pos, n
        id_hash[r] = fnv1a(buf, pos, n)
        pos += n
        t, pos = _varint(buf, pos, end)  # ts_event
        if pos < 0 or pos + 32 > end or not min_ts <= t < max_ts:
            continue
        ts[r] = t
        for k in range(4):  # bid, ask, last, size
            prices[r, k] = _double(buf, pos + 8 * k, scratch, raw)
        pos += 32
        branch, pos = _varint(buf, pos, end)  # yield: null | double
        if pos < 0 or branch < 0 or branch > 1:
            continue
        y = np.nan
        if branch == 1:
            if pos + 8 > end:
                continue
            y = _double(buf, pos, scratch, raw)
            pos += 8
            if not -inf < y < inf:
                continue
        prices[r, 4] = y
        branch, pos = _varint(buf, pos, end)  # venue: null | string
        if pos < 0 or branch < 0 or branch > 1:
            continue
        if branch == 1:
            n, pos = _varint(buf, pos, end)
            if pos < 0 or n < 0 or pos + n > end or not _ascii(buf, pos, n):
                continue
            pos += n
        if pos != end:  # trailing bytes
            continue
        bid, ask, last, size = prices[r, 0], prices[r, 1], prices[r, 2], prices[r, 3]
        lo, hi = MIN_VALUE, MAX_VALUE  # NaN fails every comparison
        ok[r] = lo <= bid <= ask <= hi and lo <= last <= hi and 0 <= size <= hi


def decode_ticks(values: list[bytes | None], header: bytes) -> tuple[np.ndarray, TickColumns]:
    """Decode ``values`` (single-object encoded MarketTicks); the buffer and the columns."""
    n = len(values)
    blobs = values if None not in values else [v or b"" for v in values]
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=n), out=bounds[1:])  # type: ignore[arg-type]
    buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)  # type: ignore[arg-type]
    ok = np.zeros(n, dtype=np.bool_)
    ts = np.zeros(n, dtype=np.int64)
    prices = np.zeros((n, 5), dtype=np.float64)
    id_start = np.zeros(n, dtype=np.int64)
    id_len = np.zeros(n, dtype=np.int64)
    id_hash = np.zeros(n, dtype=np.uint64)
    _decode_all(
        buf,
        bounds,
        np.frombuffer(header, dtype=np.uint8),
        ok,
        ts,
        prices,
        id_start,
        id_len,
        id_hash,
        MIN_TS_NS,
        MAX_TS_NS,
        MAX_ID_LEN,
    )
    bid, ask, last, size, yld = (np.ascontiguousarray(prices[:, k]) for k in range(5))
    cols = TickColumns(ok, ts, bid, ask, last, size, yld, id_start, id_len, id_hash)
    return buf, cols


@njit(cache=True)
def same_ids(buf: np.ndarray, rows: np.ndarray, first: np.ndarray, starts: np.ndarray,
             lengths: np.ndarray) -> bool:  # fmt: skip
    """Whether every row's id bytes equal those of its group's first row (no hash clash)."""
    for k in range(rows.shape[0]):
        r, f = rows[k], first[k]
        if lengths[r] != lengths[f]:
            return False
        for i in range(lengths[r]):
            if buf[starts[r] + i] != buf[starts[f] + i]:
                return False
    return True


def id_hash(instrument_id: str) -> np.uint64:
    """The hash :func:`decode_ticks` gives an id (for rows decoded by the generic codec)."""
    raw = np.frombuffer(instrument_id.encode(), dtype=np.uint8)
    return fnv1a(raw, 0, raw.shape[0])
