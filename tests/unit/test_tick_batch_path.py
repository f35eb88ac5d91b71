"""The columnar tick path gives what the record-by-record path gives.

The batch decoder against the generic codec and validation; batch bar building and the
tick history against one tick at a time; ``InstrumentLogic`` on one ``TickBatch`` against
the same ticks fed one by one.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import deque
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.config import EngineConfig
from operators.errors import CodecError, InvalidRecord
from operators.ingest import parse_batch
from operators.instrument import InstrumentLogic
from operators.kernels.bars import RUN_CLOSE, RUN_DONE, RUN_LATE, BarBuilder
from operators.kernels.history import TickHistory
from operators.records import DeadLetterItem, Inbound, Mark, Source, StateWrite, TickBatch
from operators.tick_ingest import tick_batch_of
from operators.validate import validate
from schemas.codec import SingleObjectCodec
from schemas.tick_block import decode_ticks
from tests.factories import SECOND, T0, instrument, message, tick

CODEC = SingleObjectCodec()
HEADER = CODEC.single_object_header("MarketTick") or b""
KINDS = {"market.ticks": "MarketTick", "reference.instruments": "Instrument"}


def generic(value: bytes) -> dict[str, Any] | None:
    """The record the generic path accepts, or None."""
    try:
        record = CODEC.decode("MarketTick", value)
        validate("MarketTick", record)
    except (CodecError, InvalidRecord):
        return None
    return record


def fast_row(value: bytes) -> dict[str, Any] | None:
    """The record the batch decoder accepts, or None (left to the generic path)."""
    buf, c = decode_ticks([value], HEADER)
    if not c.ok[0]:
        return None
    name = bytes(buf[c.id_start[0] : c.id_start[0] + c.id_len[0]]).decode()
    y = float(c.yld[0])
    return {
        "instrument_id": name,
        "ts_event": int(c.ts[0]),
        "bid": float(c.bid[0]),
        "ask": float(c.ask[0]),
        "last": float(c.last[0]),
        "size": float(c.size[0]),
        "yield": None if math.isnan(y) else y,
    }


def without_venue(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: v for k, v in record.items() if k != "venue"}


GOOD = CODEC.encode("MarketTick", tick(venue="XNAS", **{"yield": 0.041}))


@pytest.mark.parametrize(
    "value",
    [
        GOOD,
        CODEC.encode("MarketTick", tick()),
        CODEC.encode("MarketTick", tick(bid=math.nan)),
        CODEC.encode("MarketTick", tick(bid=0.0)),
        CODEC.encode("MarketTick", tick(bid=101.0, ask=100.0)),
        CODEC.encode("MarketTick", tick(size=-1.0)),
        CODEC.encode("MarketTick", tick(size=math.inf)),
        CODEC.encode("MarketTick", tick(ts_event=0)),
        CODEC.encode("MarketTick", tick(instrument_id="")),
        CODEC.encode("MarketTick", tick(instrument_id="X" * 257)),
        CODEC.encode("MarketTick", tick(instrument_id="Ü-1")),  # non-ASCII: generic path
        CODEC.encode("MarketTick", tick(venue="Zürich")),
        CODEC.encode("MarketTick", tick(**{"yield": math.inf})),
        GOOD[:-1],
        GOOD + b"\x00",
        b"",
        b"\xc3\x01" + b"\x00" * 8,
    ],
)
def test_decode_ticks_when_fast_path_accepts_generic_path_gives_same_record(value: bytes) -> None:
    fast = fast_row(value)
    if fast is not None:
        assert fast == without_venue(generic(value))


def test_decode_ticks_when_record_is_plain_accepts_it() -> None:
    assert fast_row(GOOD) == without_venue(generic(GOOD))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, len(GOOD) + 3),
)
def test_decode_ticks_when_bytes_are_mutated_never_accepts_what_generic_rejects(
    flips: list[tuple[int, int]], cut: int
) -> None:
    value = bytearray(GOOD)
    for pos, mask in flips:
        value[pos] ^= mask
    data = bytes(value[:cut]) if cut <= len(GOOD) else bytes(value) + b"\x01" * (cut - len(GOOD))
    fast = fast_row(data)
    if fast is not None:
        assert fast == without_venue(generic(data))


def test_parse_batch_when_ticks_mix_fast_generic_and_bad_keeps_arrival_order_per_instrument():
    older_writer = CODEC.encode("MarketTick", tick(ts_event=T0 + 2, venue="Zürich", last=100.2))
    msgs = [
        message("MarketTick", tick(ts_event=T0 + 1, last=100.1)),
        message("MarketTick", raw=older_writer),  # generic path (non-ASCII venue)
        message("MarketTick", tick(instrument_id="MSFT", ts_event=T0 + 3)),
        message("MarketTick", tick(ts_event=T0 + 4, bid=math.nan)),  # dead letter
        message("MarketTick", tick(ts_event=T0 + 5, last=100.5)),
    ]
    out = parse_batch(msgs, KINDS, CODEC, EngineConfig())
    batches = {o.instrument_id: o for o in out if isinstance(o, TickBatch)}
    [letter] = [o for o in out if isinstance(o, DeadLetterItem)]
    assert letter.record["error_code"] == "INVALID_PRICE"
    assert letter.record["source_offset"] == msgs[3].offset
    aapl = batches["AAPL"]
    assert aapl.ts.tolist() == [T0 + 1, T0 + 2, T0 + 5]
    assert aapl.last.tolist() == [100.1, 100.2, 100.5]
    assert [aapl.source(i).offset for i in range(3)] == [msgs[i].offset for i in (0, 1, 4)]
    assert aapl.raws == [msgs[i].value for i in (0, 1, 4)]
    assert batches["MSFT"].ts.tolist() == [T0 + 3]


# --- bars and history ------------------------------------------------------------------------


def columns(ticks: list[tuple[int, float]]) -> tuple[np.ndarray, ...]:
    ts = np.array([t for t, _ in ticks], dtype=np.int64)
    last = np.array([p for _, p in ticks])
    return (
        ts,
        last,
        np.full(len(ticks), 10.0),
        last - 0.01,
        last + 0.01,
        np.full(len(ticks), np.nan),
    )


def shuffled_stream(seed: int, n: int, jitter_ns: int) -> list[tuple[int, float]]:
    """Ticks every 100 ms, each stamped up to ``jitter_ns`` later than its place in line."""
    rng = random.Random(seed)
    return [
        (T0 + i * SECOND // 10 + rng.randrange(jitter_ns), 100 + rng.random()) for i in range(n)
    ]


@pytest.mark.parametrize(
    ("interval", "lateness"), [(SECOND, 0), (SECOND, 3 * SECOND), (7 * SECOND, SECOND)]
)
def test_add_run_when_given_a_stream_equals_adding_tick_by_tick(
    interval: int, lateness: int
) -> None:
    ticks = shuffled_stream(seed=7, n=400, jitter_ns=lateness + interval + SECOND // 2)
    one, many = BarBuilder(interval, lateness), BarBuilder(interval, lateness)
    expected, late_one = [], 0
    for ts, p in ticks:
        res = one.add(ts, p, 10.0, p - 0.01, p + 0.01)
        expected += res.closed
        late_one += res.late
    cols = columns(ticks)
    got, late_many, i = [], 0, 0
    while i < len(ticks):
        i, code, closed = many.add_run(*cols, i)
        got += closed
        if code == RUN_LATE:
            late_many, i = late_many + 1, i + 1
        else:
            assert code in (RUN_DONE, RUN_CLOSE)
    assert repr(got) == repr(expected) and late_many == late_one  # repr: NaN equals NaN
    assert repr(many.flush()) == repr(one.flush())
    assert late_one > 0 and len(expected) > 5  # the case is not trivial


class DequeHistory:
    """The former deque-based history, as the reference."""

    def __init__(self, cap: int) -> None:
        self.ts: deque[int] = deque(maxlen=cap)
        self.rows: deque[float] = deque(maxlen=cap)
        self.cap = cap

    def add(self, ts: int, row: float) -> None:
        i = bisect_right(self.ts, ts)
        if i == len(self.ts):
            self.ts.append(ts)
            self.rows.append(row)
        elif i or len(self.ts) < self.cap:
            if len(self.ts) == self.cap:
                self.ts.popleft()
                self.rows.popleft()
                i -= 1
            self.ts.insert(i, ts)
            self.rows.insert(i, row)

    def as_of(self, ts: int) -> tuple[int, float] | None:
        i = bisect_right(self.ts, ts)
        return (self.ts[i - 1], self.rows[i - 1]) if i else None


@pytest.mark.parametrize("seed", range(5))
def test_tick_history_when_ticks_come_out_of_order_matches_deque_reference(seed: int) -> None:
    rng = random.Random(seed)
    ref, hist = DequeHistory(16), TickHistory(16, cap=16)
    ts = np.array([1000 + i * 10 + rng.randrange(-60, 60) for i in range(300)], dtype=np.int64)
    last = np.arange(300, dtype=np.float64)
    for j in range(300):
        ref.add(int(ts[j]), float(last[j]))
    lo = 0
    while lo < 300:
        hi = min(300, lo + rng.randrange(1, 40))
        hist.insert(ts, last, last, last, last, lo, hi)
        lo = hi
    assert len(hist) == len(ref.ts)
    for probe in range(900, 4200, 7):
        found = hist.as_of(probe)
        want = ref.as_of(probe)
        assert (None if found is None else (found[0], float(found[1][2]))) == want


# --- the instrument step ---------------------------------------------------------------------


def inbound(record: dict[str, Any], offset: int) -> Inbound:
    return Inbound("MarketTick", record, Source("market.ticks", 0, offset, 0), 0, None, b"x")


def comparable(items: list[Any]) -> list[Any]:
    out = []
    for o in items:
        if isinstance(o, DeadLetterItem):
            out.append({k: v for k, v in o.record.items() if k != "ts_failed"})
        elif isinstance(o, (Mark, StateWrite)):
            out.append(repr(o))
    return out


def test_instrument_logic_when_fed_one_batch_equals_tick_by_tick() -> None:
    config = EngineConfig(bar_interval_ns=SECOND, lateness_ns=2 * SECOND)
    ticks = shuffled_stream(seed=7, n=600, jitter_ns=2 * SECOND + SECOND // 2)
    records = [tick(ts_event=ts, last=p, bid=p - 0.01, ask=p + 0.01) for ts, p in ticks]
    records[50]["yield"] = -2.0  # rejected by the bar builder: INVALID_YIELD
    items = [inbound(r, i) for i, r in enumerate(records)]
    ref = Inbound("Instrument", instrument(), Source("reference.instruments"), 0)

    one = InstrumentLogic(config, None)
    one.on_batch([ref])
    expected = [o for item in items for o in one.on_batch([item])[0]]

    many = InstrumentLogic(config, None)
    many.on_batch([ref])
    batch = tick_batch_of(items[0])
    cols = [
        np.concatenate([getattr(tick_batch_of(i), n) for i in items])
        for n in ("ts", "bid", "ask", "last", "size", "yld", "origin")
    ]
    merged = TickBatch(
        "AAPL", *cols[:6], batch.topics, cols[6], [None] * len(items), [b"x"] * len(items)
    )
    got = list(many.on_batch([merged])[0])

    assert comparable(got) == comparable(expected)
    assert sum(isinstance(o, DeadLetterItem) for o in got) > 1  # late ticks and the bad yield
    assert sum(isinstance(o, Mark) for o in got) > 10
