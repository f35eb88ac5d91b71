"""Ticks from Kafka messages to one columnar ``TickBatch`` per instrument.

Every tick message of a parse batch is decoded in one call (:mod:`schemas.tick_block`);
the few the fast path leaves (another writer schema, an invalid tick, ...) go through
the generic codec and validation one by one, which dead-letters the bad ones with their
reason. Ticks keep their arrival order within each instrument.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import chain

import numpy as np

from operators.deadletter import dead_letter
from operators.errors import CodecError, InvalidRecord
from operators.records import DeadLetterItem, Inbound, MessageBlock, Record, Source, TickBatch
from operators.validate import validate
from schemas.codec import Codec
from schemas.tick_block import TickColumns, decode_ticks, id_hash, same_ids

_PRICE_FIELDS = ("bid", "ask", "last", "size")


def tick_batches(
    blocks: Sequence[MessageBlock], codec: Codec, now: int
) -> list[TickBatch | DeadLetterItem]:
    """Decode, validate and group the tick messages of ``blocks``."""
    values = list(chain.from_iterable(b.values for b in blocks))
    keys = list(chain.from_iterable(b.keys for b in blocks))
    topics = tuple(dict.fromkeys(b.topic for b in blocks))
    origin = _origin(blocks, topics)
    header = codec.single_object_header("MarketTick")
    buf, cols = decode_ticks(values, header if header is not None else b"")
    names: dict[int, str] = {}
    clash = False
    out: list[TickBatch | DeadLetterItem] = []
    for row in np.flatnonzero(~cols.ok).tolist():
        source = Source(topics[origin[row, 0]], *(int(x) for x in origin[row, 1:]))
        fallback = _generic(codec, values[row], keys[row], source)
        if isinstance(fallback, DeadLetterItem):
            out.append(fallback)
            continue
        _fill(cols, row, fallback)
        clash |= (
            names.setdefault(int(cols.id_hash[row]), fallback["instrument_id"])
            != fallback["instrument_id"]
        )
    groups = None if clash else _groups(buf, cols, names)
    if groups is None:  # two ids share a hash: group by the decoded ids instead
        groups = _groups_by_id(codec, values, cols)
    for instrument_id, rows in groups:
        pick = operator.itemgetter(*rows.tolist())
        out.append(
            TickBatch(
                instrument_id,
                cols.ts[rows],
                cols.bid[rows],
                cols.ask[rows],
                cols.last[rows],
                cols.size[rows],
                cols.yld[rows],
                topics,
                origin[rows],
                _as_list(pick(keys), len(rows)),
                _as_list(pick(values), len(rows)),
            )
        )
    return out


def _as_list(picked: object, n: int) -> list[bytes | None]:
    """``itemgetter`` gives the item itself for one index, a tuple for several."""
    return [picked] if n == 1 else list(picked)  # type: ignore[call-overload,list-item]


def _origin(blocks: Sequence[MessageBlock], topics: tuple[str, ...]) -> np.ndarray:
    """Rows of (topic index, partition, offset, Kafka timestamp) for every message."""
    parts = []
    for b in blocks:
        rows = np.empty((len(b), 4), dtype=np.int64)
        rows[:, 0] = topics.index(b.topic)
        rows[:, 1] = b.partition
        rows[:, 2] = b.offsets
        rows[:, 3] = b.timestamps_ns
        parts.append(rows)
    return np.concatenate(parts)


def _generic(
    codec: Codec, value: bytes | None, key: bytes | None, source: Source
) -> Record | DeadLetterItem:
    """One tick through the generic codec and validation."""
    record: Record = {}
    try:
        record = codec.decode("MarketTick", value)
        validate("MarketTick", record)
    except (CodecError, InvalidRecord) as exc:
        letter = dead_letter(
            source, exc.code, f"parse: {exc}", "parse", record.get("ts_event"), key, value
        )
        return DeadLetterItem(letter)
    return record


def _fill(cols: TickColumns, row: int, record: Record) -> None:
    cols.ok[row] = True
    cols.ts[row] = record["ts_event"]
    for name in _PRICE_FIELDS:
        getattr(cols, name)[row] = record[name]
    yld = record.get("yield")
    cols.yld[row] = np.nan if yld is None else yld
    cols.id_len[row] = -1  # not in the buffer
    cols.id_hash[row] = id_hash(record["instrument_id"])


def _groups(
    buf: np.ndarray, cols: TickColumns, names: dict[int, str]
) -> list[tuple[str, np.ndarray]] | None:
    """(instrument id, rows in arrival order) per instrument; None on a hash clash."""
    good = np.flatnonzero(cols.ok)
    if not len(good):
        return []
    hashes, inverse = np.unique(cols.id_hash[good], return_inverse=True)
    rows_by_group = np.split(
        good[np.argsort(inverse, kind="stable")], np.cumsum(np.bincount(inverse))[:-1]
    )
    fast = good[cols.id_len[good] >= 0]
    fast_first = np.empty(len(hashes), dtype=np.int64)
    for g, rows in enumerate(rows_by_group):
        in_buf = rows[cols.id_len[rows] >= 0]
        fast_first[g] = in_buf[0] if len(in_buf) else -1
    group_of_fast = fast_first[np.searchsorted(hashes, cols.id_hash[fast])]
    if not same_ids(buf, fast, group_of_fast, cols.id_start, cols.id_len):
        return None
    out = []
    for g, rows in enumerate(rows_by_group):
        f = int(fast_first[g])
        name = (
            bytes(buf[cols.id_start[f] : cols.id_start[f] + cols.id_len[f]]).decode()
            if f >= 0
            else names[int(hashes[g])]
        )
        if f >= 0 and names.get(int(hashes[g]), name) != name:
            return None
        out.append((name, rows))
    return out


def _groups_by_id(
    codec: Codec, values: list[bytes | None], cols: TickColumns
) -> list[tuple[str, np.ndarray]]:
    """Grouping by the generic codec's ids (only when two ids share a 64-bit hash)."""
    by_id: dict[str, list[int]] = {}
    for row in np.flatnonzero(cols.ok).tolist():
        by_id.setdefault(codec.decode("MarketTick", values[row])["instrument_id"], []).append(row)
    return [(name, np.asarray(rows, dtype=np.int64)) for name, rows in by_id.items()]


def tick_batch_of(item: Inbound) -> TickBatch:
    """A one-tick batch from a decoded tick."""
    r, src = item.record, item.source
    yld = r.get("yield")
    bid, ask, last, size = (np.array([r[name]], dtype=np.float64) for name in _PRICE_FIELDS)
    return TickBatch(
        r["instrument_id"],
        np.array([r["ts_event"]], dtype=np.int64),
        bid,
        ask,
        last,
        size,
        np.array([np.nan if yld is None else yld]),
        (src.topic,),
        np.array([[0, src.partition, src.offset, src.timestamp_ns]], dtype=np.int64),
        [item.key],
        [item.raw],
    )
