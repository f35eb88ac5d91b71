"""Instrument history kept behind the proposals' frontier: never evicted past it, grown up to
a cap, and proposals priced as of their own time however far ticks run ahead (issues 6, 9)."""

from __future__ import annotations

import math
import pickle
import random
from bisect import bisect_right
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import metrics
from operators.config import EngineConfig
from operators.ingest import parse_batch
from operators.instrument import TICK_HISTORY, InstrumentLogic, InstrumentState
from operators.kernels.history import NO_FLOOR, BarHistory, TickHistory
from operators.records import (
    END_OF_TIME,
    PROPOSAL,
    Inbound,
    PricedProposal,
    Progress,
    Source,
    SourceIdle,
    TickBatch,
)
from operators.routing import all_instrument_keys, instrument_shard_key, to_instruments
from schemas.codec import SingleObjectCodec
from tests.factories import INPUT_KINDS, SECOND, T0, instrument, message, proposal

TOPIC = "trade.proposals"
PARTS = ((TOPIC, 0), (TOPIC, 1))
MS = 1_000_000


# --- helpers ---------------------------------------------------------------------------------


class Reference:
    """Every tick ever inserted, in event-time order (after equal times)."""

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.last: list[float] = []

    def add(self, ts: int, last: float) -> None:
        i = bisect_right(self.ts, ts)
        self.ts.insert(i, ts)
        self.last.insert(i, last)

    def as_of(self, ts: int) -> tuple[int, float] | None:
        i = bisect_right(self.ts, ts)
        return (self.ts[i - 1], self.last[i - 1]) if i else None


def found(hist: TickHistory, ts: int) -> tuple[int, float] | None:
    got = hist.as_of(ts)
    return None if got is None else (got[0], float(got[1][2]))


def columns(ts: list[int], last: list[float]) -> tuple[np.ndarray, ...]:
    t = np.array(ts, dtype=np.int64)
    p = np.array(last, dtype=np.float64)
    return t, p - 0.01, p + 0.01, p, np.full(len(ts), np.nan)


def tick_batch(ts: np.ndarray, last: np.ndarray, iid: str = "AAPL") -> TickBatch:
    n = len(ts)
    origin = np.zeros((n, 4), dtype=np.int64)
    return TickBatch(
        iid, ts.astype(np.int64), last - 0.01, last + 0.01, last, np.full(n, 100.0),
        np.full(n, np.nan), ("market.ticks",), origin, [None] * n, [None] * n,
    )  # fmt: skip


def ask(partition: int, ts: int, pid: str, iid: str = "AAPL") -> Inbound:
    rec = proposal(proposal_id=pid, ts_event=ts, instrument_id=iid)
    return Inbound(PROPOSAL, rec, Source(TOPIC, partition, 0, ts), 0)


def reference(iid: str = "AAPL") -> Inbound:
    rec = instrument(instrument_id=iid, symbol=iid)
    return Inbound("Instrument", rec, Source("reference.instruments", 0, 0, rec["ts_event"]), 0)


def progress(partition: int, ts: int, idle: bool = False) -> Progress:
    return Progress(PROPOSAL, ((TOPIC, partition, ts),), idle)


def market(n: int, start: int = T0, step: int = 10 * MS, seed: int = 1) -> TickBatch:
    """``n`` ticks of a random walk from ``start``, ``step`` apart (100 bars a second)."""
    rng = np.random.default_rng(seed)
    ts = start + step * np.arange(n, dtype=np.int64)
    return tick_batch(ts, 100.0 + np.cumsum(rng.normal(0, 0.05, n)))


def priced(out: Any) -> list[PricedProposal]:
    return [o for o in out if isinstance(o, PricedProposal)]


def misses(reason: str) -> float:
    return metrics.HISTORY_MISSES.labels(reason)._value.get()


def plain(p: PricedProposal) -> tuple[Any, ...]:
    v = p.market
    feats = {k: ("nan" if math.isnan(x) else x) for k, x in sorted(v.features.items())}
    return (p.proposal["proposal_id"], v.ts_last, v.last, v.bid, v.ask, feats, p.stale)


def aapl(lg: InstrumentLogic) -> InstrumentState:
    return lg.state.instruments["AAPL"]


# --- TickHistory ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    keep=st.sampled_from([1, 4, 16]),
    cap=st.sampled_from([16, 64, 100_000]),
)
def test_tick_history_when_evicted_behind_a_frontier_answers_exactly_at_or_after_it(
    seed: int, keep: int, cap: int
) -> None:
    rng = random.Random(seed)
    hist, ref = TickHistory(keep, cap), Reference()
    frontier = 0
    for _ in range(rng.randrange(1, 30)):
        n = rng.randrange(1, 60)
        ts = [ref_ts + rng.randrange(-30, 30) for ref_ts in range(frontier, frontier + 5 * n, 5)]
        last = [rng.random() for _ in ts]
        cols = columns(ts, last)
        hist.insert(*cols, 0, n)
        for t, p in zip(ts, last, strict=True):
            if t >= hist.floor or hist.floor == NO_FLOOR:
                ref.add(t, p)  # below the floor: never kept, as documented
        frontier += rng.randrange(0, 4 * n)
        hist.evict(frontier)
        for probe in range(frontier - 200, frontier + 5 * n + 60, 3):
            if hist.reaches(probe):  # never silently wrong
                assert found(hist, probe) == ref.as_of(probe), probe
        if len(ref.ts) <= cap:  # the cap did not bite: the frontier is always reached
            assert all(hist.reaches(t) for t in range(frontier, frontier + 50))
        assert len(hist) >= min(keep, len(ref.ts)) or len(ref.ts) > cap


def test_tick_history_when_frontier_held_grows_past_its_initial_buffer() -> None:
    hist = TickHistory(16, cap=1_000_000)
    ts, bid, ask, last, yld = columns(list(range(50_000)), [float(i) for i in range(50_000)])
    for lo in range(0, 50_000, 777):
        hist.insert(ts, bid, ask, last, yld, lo, min(lo + 777, 50_000))
        hist.evict(0)  # the frontier stays at the first tick

    assert len(hist) == 50_000
    assert (
        hist.reaches(0) and found(hist, 0) == (0, 0.0) and found(hist, 49_999) == (49_999, 49_999.0)
    )
    assert hist.nbytes <= 2 * 50_000 * 40

    hist.evict(49_000)  # the frontier moves: back down to what it needs, at least ``keep``
    assert (
        len(hist) == 1_000
        and not hist.reaches(48_999)
        and found(hist, 49_000) == (49_000, 49_000.0)
    )
    assert hist.nbytes == 2 * 1_000 * 40  # memory given back


def test_tick_history_when_over_its_cap_drops_the_oldest_and_says_so() -> None:
    hist = TickHistory(4, cap=100)
    hist.insert(*columns(list(range(1000)), [float(i) for i in range(1000)]), 0, 1000)

    assert len(hist) == 100
    assert hist.floor == 899
    assert not hist.reaches(899) and hist.reaches(900)
    hist.insert(*columns([5], [5.0]), 0, 1)  # below the floor: not kept
    assert len(hist) == 100 and hist.oldest() == 900


def test_tick_history_when_pickled_keeps_floor_and_ticks() -> None:
    hist = TickHistory(4, cap=1000)
    hist.insert(*columns(list(range(0, 5000, 5)), [float(i) for i in range(1000)]), 0, 1000)
    hist.evict(2500)

    back = pickle.loads(pickle.dumps(hist))

    assert (len(back), back.floor, back.cap, back.keep) == (len(hist), hist.floor, 1000, 4)
    for probe in range(2400, 5100, 7):
        assert back.reaches(probe) == hist.reaches(probe)
        assert found(back, probe) == found(hist, probe)
    back.insert(*columns(list(range(5000, 9000, 5)), [1.0] * 800), 0, 800)
    assert found(back, 8995) == (8995, 1.0)


# --- BarHistory -------------------------------------------------------------------------------


def test_bar_history_when_evicted_keeps_the_bar_the_frontier_needs_and_the_minimum() -> None:
    bars = BarHistory(keep=8, cap=1000)
    for i in range(1, 101):
        bars.append(i * SECOND, {"bar_close": float(i), "rsi_14": math.nan})

    assert bars.evict(50 * SECOND + 1) == 49  # bar 50 (end <= the frontier) stays
    assert bars.as_of(50 * SECOND + 5) == {"bar_close": 50.0}  # NaN features left out
    assert bars.reaches(50 * SECOND) and not bars.reaches(50 * SECOND - 1)
    assert bars.evict(10**12) == 51 - 8 and len(bars) == 8
    last = bars.last()
    assert last["bar_close"] == 100.0 and math.isnan(last["rsi_14"])  # NaN kept in the newest
    assert bars.last_end() == 100 * SECOND


def test_bar_history_when_over_its_cap_drops_the_oldest_and_pickles() -> None:
    bars = BarHistory(keep=2, cap=5)
    for i in range(1, 21):
        bars.append(i, {"x": float(i)})

    back = pickle.loads(pickle.dumps(bars))

    assert len(back) == 5 and not back.reaches(15) and back.reaches(16)
    assert back.as_of(17) == {"x": 17.0}
    back.append(21, {"x": 21.0})
    assert back.last() == {"x": 21.0} and len(back) == 5


# --- the instrument step ----------------------------------------------------------------------


def held_back_logic(**kw: Any) -> InstrumentLogic:
    """An instrument shard whose partition 0 runs far ahead and partition 1 reported at T0+1s."""
    lg = InstrumentLogic(EngineConfig(proposal_parts=PARTS, **kw), None)
    far = T0 + 10**6 * SECOND
    lg.on_batch([reference(), progress(1, T0 + SECOND), progress(0, far, idle=True)])
    return lg


def test_proposal_after_20000_more_ticks_when_frontier_held_gets_the_same_price_and_features():
    early = market(4_000)  # 40 s of ticks, 100 a second
    later = market(20_000, start=T0 + 40 * SECOND, seed=2)
    when = T0 + 35 * SECOND + 5 * MS  # between two ticks

    first = held_back_logic()
    first.on_batch([early])
    [a] = priced(first.on_batch([ask(1, when, "P-1")])[0])

    behind = held_back_logic()
    behind.on_batch([early])
    for lo in range(0, 20_000, 1_000):  # the other partition's reader races ahead
        behind.on_batch([_slice(later, lo, lo + 1_000)])
    [b] = priced(behind.on_batch([ask(1, when, "P-1")])[0])

    assert plain(a) == plain(b)
    assert (b.market.ts_last, b.stale) == (T0 + 35 * SECOND, False)
    assert {"rsi_14", "rvol_20", "bar_close", "daily_vol"} <= set(b.market.features)
    assert len(aapl(behind).ticks) > 20_000  # kept back to the frontier, past the minimum


def _slice(batch: TickBatch, lo: int, hi: int) -> TickBatch:
    return tick_batch(batch.ts[lo:hi], batch.last[lo:hi])


def test_eviction_when_the_frontier_moves_never_passes_it_and_returns_to_the_minimum():
    lg = held_back_logic()
    lg.on_batch([market(30_000)])  # 300 s
    ist = aapl(lg)
    assert len(ist.ticks) == 29_900 and ist.holds(T0 + SECOND, 0)  # from the tick at T0+1s

    lg.on_batch([progress(1, T0 + 200 * SECOND), market(10, start=T0 + 300 * SECOND)])

    assert ist.holds(T0 + 200 * SECOND, 0) and not ist.holds(T0 + 199 * SECOND, 0)
    assert ist.ticks.oldest() == T0 + 200 * SECOND
    lg.on_batch([progress(1, END_OF_TIME), market(10, start=T0 + 301 * SECOND)])
    assert len(ist.ticks) == TICK_HISTORY
    assert ist.ticks.nbytes == 2 * TICK_HISTORY * 40  # the grown buffer was given back
    assert len(ist.bars) >= 1


def test_eviction_when_a_partition_never_reported_keeps_everything_up_to_the_cap():
    lg = InstrumentLogic(EngineConfig(proposal_parts=PARTS), None)
    lg.on_batch([reference(), progress(0, T0 + 10**6 * SECOND)])  # partition 1: nothing yet

    lg.on_batch([market(10_000)])

    assert len(aapl(lg).ticks) == 10_000 and aapl(lg).ticks.floor == NO_FLOOR


def test_eviction_when_proposals_wait_keeps_what_they_need():
    lg = held_back_logic(wait_for_data=True)
    lg.on_batch([market(100)])
    lg.on_batch([ask(1, T0 + 5 * SECOND, "waits")])  # no tick after it yet: waits
    assert aapl(lg).pending

    out, _ = lg.on_batch([progress(1, END_OF_TIME), market(10_000, start=T0 + 2 * SECOND)])

    [p] = priced(out)
    assert (p.market.ts_last, p.stale) == (T0 + 5 * SECOND, False)


def test_proposal_when_its_tick_is_past_the_cap_is_stale_without_market_data_and_counted():
    before = misses("evicted")
    lg = InstrumentLogic(EngineConfig(proposal_parts=PARTS, tick_history_cap=5_000), None)
    lg.on_batch([reference(), market(20_000)])

    [p] = priced(lg.on_batch([ask(1, T0 + 3 * SECOND, "P-old")])[0])

    assert p.stale is True
    assert (p.market.ts_last, p.market.last, p.market.features) == (None, None, {})
    assert p.market.instrument is not None
    assert misses("evicted") == before + 1


def test_late_proposal_is_priced_as_of_its_partition_progress_stale_and_counted():
    before = misses("late")
    lg = held_back_logic()
    lg.on_batch([market(2_000)])
    lg.on_batch([progress(1, T0 + 10 * SECOND)])  # its partition is past T0+10s

    [p] = priced(lg.on_batch([ask(1, T0 + 3 * SECOND, "P-late")])[0])
    [q] = priced(lg.on_batch([ask(0, T0 + 3 * SECOND, "P-on-time")])[0])

    assert (p.market.ts_last, p.stale) == (T0 + 10 * SECOND, True)
    assert (q.market.ts_last, q.stale) == (
        T0 + 3 * SECOND,
        False,
    )  # partition 0 has no data progress
    assert misses("late") == before + 1


@pytest.mark.parametrize("split", [False, True])
def test_late_proposal_when_batches_are_cut_differently_is_priced_the_same(split: bool):
    """Whether the earlier proposal of its partition came in the same parse batch or not."""
    codec = SingleObjectCodec()
    config = EngineConfig(proposal_parts=((TOPIC, 0),), lateness_ns=SECOND)
    msgs = [
        message("Instrument", instrument()),
        message("TradeProposal", proposal(proposal_id="A", ts_event=T0 + 9 * SECOND)),
        message("TradeProposal", proposal(proposal_id="B", ts_event=T0 + 3 * SECOND)),
    ]
    batches = [msgs[:2], msgs[2:]] if split else [msgs]
    lg = InstrumentLogic(config, None)
    lg.on_batch([market(2_000)])
    out: list[Any] = []
    for batch in batches:
        parsed = parse_batch(batch, INPUT_KINDS, codec, config)
        out += lg.on_batch(
            [x for x in parsed if not isinstance(x, Progress) or x.kind == PROPOSAL]
        )[0]
    out += lg.on_eof()[0]

    got = {p.proposal["proposal_id"]: (p.market.ts_last, p.stale) for p in priced(out)}
    assert got == {"A": (T0 + 9 * SECOND, False), "B": (T0 + 8 * SECOND, True)}


def test_instrument_shard_when_pickled_keeps_progress_and_histories():
    lg = held_back_logic()
    lg.on_batch([market(6_000)])

    back = InstrumentLogic(lg.config, lg.snapshot())

    assert back.frontier == lg.frontier == T0 + SECOND
    assert back.state.proposed == lg.state.proposed
    assert len(aapl(back).ticks) == 5_900  # from the tick at the frontier
    a = priced(lg.on_batch([ask(1, T0 + 2 * SECOND, "x")])[0])
    b = priced(back.on_batch([ask(1, T0 + 2 * SECOND, "x")])[0])
    assert [plain(p) for p in a] == [plain(p) for p in b]


# --- proposal progress and routing ------------------------------------------------------------


def test_parse_batch_when_proposals_come_emits_their_progress_last_for_instruments_only():
    config = EngineConfig(lateness_ns=SECOND)
    msgs = [
        message("TradeProposal", proposal(ts_event=T0 + 5 * SECOND)),
        message("TradeProposal", proposal(ts_event=T0 + 7 * SECOND)),
        message("TradeProposal", proposal(ts_event=T0 + 6 * SECOND)),  # within the lateness
    ]

    out = parse_batch(msgs, INPUT_KINDS, SingleObjectCodec(), config)

    assert [type(o).__name__ for o in out] == ["Inbound"] * 3 + ["Progress"]
    assert out[-1] == Progress(PROPOSAL, ((TOPIC, 0, T0 + 6 * SECOND),))


def test_parse_batch_when_a_proposal_is_behind_its_partition_tells_before_it():
    msgs = [
        message("TradeProposal", proposal(proposal_id="a", ts_event=T0 + 5 * SECOND)),
        message("TradeProposal", proposal(proposal_id="b", ts_event=T0 + 2 * SECOND)),
    ]

    out = parse_batch(msgs, INPUT_KINDS, SingleObjectCodec(), EngineConfig())

    assert out[1] == Progress(PROPOSAL, ((TOPIC, 0, T0 + 5 * SECOND),))
    assert out[2].record["proposal_id"] == "b"
    assert out[-1] == Progress(PROPOSAL, ((TOPIC, 0, T0 + 5 * SECOND),))


def test_parse_batch_when_proposal_partition_idle_reports_idle_progress():
    live = parse_batch([SourceIdle(TOPIC, 3, T0)], INPUT_KINDS, SingleObjectCodec(), EngineConfig())
    replay_idle = [SourceIdle(TOPIC, 3, T0), SourceIdle(TOPIC, 4, END_OF_TIME)]
    replay = parse_batch(
        replay_idle, INPUT_KINDS, SingleObjectCodec(), EngineConfig(wait_for_data=True)
    )

    assert live == [
        Progress(PROPOSAL, ((TOPIC, 3, T0 - EngineConfig().idle_margin_ns),), idle=True)
    ]
    assert replay == [Progress(PROPOSAL, ((TOPIC, 4, END_OF_TIME),), idle=True)]


def test_to_instruments_broadcasts_proposal_and_reference_progress_and_keys_the_rest_by_crc32():
    keys = list(all_instrument_keys(16))
    item = progress(0, T0)
    reference = Progress("Instrument", (("reference.instruments", 0, T0),))

    assert [k for k, _ in to_instruments(item, 16)] == keys
    assert [k for k, _ in to_instruments(reference, 16)] == keys
    assert to_instruments(Progress("Execution", (("trades.executed", 0, T0),)), 16) == []
    assert to_instruments(ask(0, T0, "p"), 16) == [
        (instrument_shard_key("AAPL", 16), ask(0, T0, "p"))
    ]
    assert instrument_shard_key("AAPL", 16) == "instrument-012"  # crc32, not the salted hash()
    assert {instrument_shard_key(f"SIM-EQ{i:02d}", 16) for i in range(40)} <= set(keys)
