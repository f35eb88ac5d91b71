"""Every state class pickles and behaves the same afterwards; snapshot() is a deep copy."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import pytest

from operators.config import EngineConfig, Limits
from operators.control_gate import ControlGateLogic, GateState
from operators.instrument import InstrumentLogic, InstrumentShard
from operators.portfolio import Book, ShardLogic, ShardState, TimeLog
from operators.records import (
    Decided,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    Source,
)
from tests.factories import KEYS, SECOND, T0, control, execution, instrument, proposal, tick

CONFIG = EngineConfig(control=KEYS)
WALL_CLOCK = {"ts_decided", "latency_us", "ts_failed"}


def roundtrip(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


def plain(obj: Any) -> Any:
    """Dataclasses and containers as plain values, NaN comparable, wall-clock fields dropped."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (
            type(obj).__name__,
            plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}),
        )
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k not in WALL_CLOCK}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj


def inb(kind: str, record: dict[str, Any], received_ns: int = 0) -> Inbound:
    return Inbound(kind, record, Source(kind, 0, 0, record["ts_event"]), received_ns)


def px(ts: int, last: float) -> Inbound:
    return inb("MarketTick", tick(ts_event=ts, bid=last - 0.01, ask=last + 0.01, last=last))


# --- instrument side ----------------------------------------------------------------------------

_EARLY = [
    inb("Instrument", instrument()),
    *(px(T0 + i * 400_000_000, 100.0 + (i % 5)) for i in range(12)),
    px(T0 + 150_000_000, 99.0),  # late tick
    inb("TradeProposal", proposal(proposal_id="waits", ts_event=T0 + 10 * SECOND)),
]
_LATER = [
    *(px(T0 + 5 * SECOND + i * 450_000_000, 103.0 - (i % 3)) for i in range(12)),
    inb("TradeProposal", proposal(proposal_id="later", ts_event=T0 + 6 * SECOND)),
]
_PROBES = [T0 - 1, T0, T0 + 150_000_000, T0 + 2 * SECOND, T0 + 4_400_000_000, T0 + 20 * SECOND]


def _instrument_logic() -> InstrumentLogic:
    lg = InstrumentLogic(CONFIG, None)
    lg.on_batch(list(_EARLY))
    return lg


def test_instrument_state_when_pickled_gives_same_views():
    shard = _instrument_logic().state

    restored_shard = roundtrip(shard)

    assert isinstance(restored_shard, InstrumentShard)
    live, restored = shard.instruments["AAPL"], restored_shard.instruments["AAPL"]
    for ts in _PROBES:
        assert plain(restored.view_as_of(ts, 0)) == plain(live.view_as_of(ts, 0))
    assert restored.watermark == live.watermark
    assert [p.item.record["proposal_id"] for p in restored.pending] == ["waits"]


def test_instrument_state_when_pickled_continues_with_same_outputs():
    live = _instrument_logic()
    restored = InstrumentLogic(CONFIG, roundtrip(live.state))

    out_live, _ = live.on_batch(list(_LATER))
    out_restored, _ = restored.on_batch(list(_LATER))

    assert plain(list(out_restored)) == plain(list(out_live))
    assert any(isinstance(o, PricedProposal) for o in out_live)
    assert any(isinstance(o, Mark) for o in out_live)


def test_instrument_logic_when_snapshot_taken_later_updates_do_not_change_it():
    lg = _instrument_logic()

    snap = pickle.loads(lg.snapshot())  # snapshots are pickled bytes
    frozen = pickle.dumps(snap)
    lg.on_batch(list(_LATER))
    lg.state.instruments["AAPL"].instrument["lot_size"] = 1000.0  # in-place edit of the record

    assert pickle.dumps(snap) == frozen
    assert snap is not lg.state
    assert snap.instruments["AAPL"].instrument["lot_size"] == 1.0


# --- portfolio side -----------------------------------------------------------------------------


def _fill(**kw: Any) -> Inbound:
    return inb("Execution", execution(**kw))


def _ref(instrument_id: str) -> Inbound:
    return inb("Instrument", instrument(instrument_id=instrument_id, symbol=instrument_id))


def _ask(**kw: Any) -> PricedProposal:
    p = proposal(**kw)
    view = MarketView(instrument(), p["ts_event"] - SECOND, 100.0, 100.0, 100.0, {})
    return PricedProposal(p, view, Source("trade.proposals"), 0)


def _cmd(**kw: Any) -> Inbound:
    return inb("ControlCommand", control(**kw))


_SHARD_EARLY = [
    _ref("AAPL"),
    _ref("MSFT"),
    _fill(execution_id="E1", quantity=1_000.0, ts_event=T0),
    _fill(
        execution_id="E2", instrument_id="MSFT", quantity=50.0, price=300.0, ts_event=T0 + SECOND
    ),
    _fill(execution_id="E3", side="SELL", quantity=200.0, ts_event=T0 + 3 * SECOND),
    Mark("MSFT", T0 + 2 * SECOND, 310.0, 0.015),
    Mark("MSFT", T0 + 4 * SECOND, 310.0, 0.015),  # the bar the proposals below wait for
    Mark("AAPL", T0 + 4 * SECOND, 100.0, 0.01),  # (every instrument with reference data)
    _cmd(action="REDUCE_ONLY", scope="PORTFOLIO", target="PF-2", ts_event=T0),
    _cmd(action="HALT", scope="INSTRUMENT", target="TSLA", ts_event=T0 + SECOND),
    _cmd(
        action="SET_LIMIT",
        scope="PORTFOLIO",
        target="PF-1",
        limit_name="concentration",
        limit_value=0.1,
        ts_event=T0,
    ),
    _ask(proposal_id="P-seen", ts_event=T0 + 4 * SECOND),
    # a fill without reference data yet, and a proposal of its portfolio that waits for it
    _fill(execution_id="E-held", portfolio_id="PF-9", instrument_id="NEWCO", ts_event=T0),
    _ask(proposal_id="P-wait", portfolio_id="PF-9", ts_event=T0 + 2 * SECOND),
]


def _shard_logic() -> ShardLogic:
    lg = ShardLogic(CONFIG, None)
    lg.on_batch(list(_SHARD_EARLY))
    return lg


def test_shard_state_when_pickled_gives_same_answers():
    live = _shard_logic().state

    restored = roundtrip(live)

    assert isinstance(restored, ShardState)
    for ts in (T0 - 1, T0, T0 + SECOND, T0 + 5 * SECOND):
        for pf, inst in (("PF-1", "AAPL"), ("PF-2", "AAPL"), ("PF-1", "TSLA")):
            assert restored.trading_state(pf, inst, ts) == live.trading_state(pf, inst, ts)
        assert restored.limits_as_of(Limits(), "PF-1", ts) == live.limits_as_of(
            Limits(), "PF-1", ts
        )
        assert repr(restored.mark_as_of("MSFT", ts)) == repr(live.mark_as_of("MSFT", ts))
        priced = _ask(ts_event=ts)
        book = live.books["PF-1"]
        assert restored.book_view(restored.books["PF-1"], priced) == live.book_view(book, priced)
    assert restored.trading_state("PF-2", "AAPL", T0 + SECOND) == "REDUCE_ONLY"
    assert [f.record["execution_id"] for f in restored.held_fills] == ["E-held"]
    assert [w.priced.proposal["proposal_id"] for w in restored.waiting] == ["P-wait"]


def test_shard_logic_when_restored_from_pickle_decides_and_dedupes_the_same():
    live = _shard_logic()
    restored = ShardLogic(CONFIG, roundtrip(live.state))
    later = [
        Mark("MSFT", T0 + 5 * SECOND, 310.0, 0.015),
        Mark("AAPL", T0 + 5 * SECOND, 100.0, 0.01),
        _ask(proposal_id="P-new", quantity=15_000.0, ts_event=T0 + 5 * SECOND),
        _ask(proposal_id="P-seen", ts_event=T0 + 5 * SECOND),  # a duplicate of a decided one
        _fill(execution_id="E1", quantity=1_000.0, ts_event=T0),  # a redelivered fill
        _ask(proposal_id="P-pf2", portfolio_id="PF-2", ts_event=T0 + 5 * SECOND),
        _ref("NEWCO"),  # releases the held fill, then the waiting proposal
        Mark("NEWCO", T0 + 5 * SECOND, 20.0, 0.02),  # once its new holding has marked
    ]

    out_live, _ = live.on_batch(list(later))
    out_restored, _ = restored.on_batch(list(later))

    assert plain(list(out_restored)) == plain(list(out_live))
    kinds = sorted(type(o).__name__ for o in out_live)
    assert kinds == ["DeadLetterItem", "Decided", "Decided", "Decided", "StateWrite"]
    decisions = {o.record["proposal_id"]: o.record for o in out_live if isinstance(o, Decided)}
    # 10% of ~10m at 100 = 10,000 units, 800 held: the SET_LIMIT survived the restore
    assert decisions["P-new"]["allowed_quantity"] == 9_200.0
    assert decisions["P-pf2"]["trading_state"] == "REDUCE_ONLY"
    assert decisions["P-wait"]["portfolio_id"] == "PF-9"


def test_book_when_pickled_gives_same_as_of():
    live = Book(1_000_000.0)
    for f in _SHARD_EARLY[2:5]:
        live.apply(f.record, 1.0)

    restored = roundtrip(live)

    for ts in (T0 - 1, T0, T0 + SECOND, T0 + 3 * SECOND):
        assert restored.as_of(ts) == live.as_of(ts)
    extra = _fill(execution_id="E9", quantity=5.0, ts_event=T0 + 2 * SECOND)
    live.apply(extra.record, 1.0)
    restored.apply(extra.record, 1.0)
    assert restored.as_of(T0 + 10 * SECOND) == live.as_of(T0 + 10 * SECOND)


def test_timelog_when_pickled_gives_same_as_of():
    live = TimeLog()
    for ts, tiebreak, value in [(T0 + 2, "b", 2.0), (T0, "a", 1.0), (T0 + 2, "a", 3.0)]:
        live.add(ts, tiebreak, value)

    restored = roundtrip(live)

    for ts in (T0 - 1, T0, T0 + 1, T0 + 2, T0 + 3):
        assert restored.as_of(ts, "none") == live.as_of(ts, "none")
    assert restored.as_of(T0 + 2) == 2.0


def test_shard_logic_when_snapshot_taken_later_updates_do_not_change_it():
    lg = _shard_logic()

    snap = pickle.loads(lg.snapshot())  # snapshots are pickled bytes
    frozen = pickle.dumps(snap)
    lg.on_batch(
        [
            _fill(execution_id="E7", quantity=10.0, ts_event=T0 + 7 * SECOND),
            Mark("MSFT", T0 + 7 * SECOND, 320.0, 0.02),
            _cmd(action="HALT", scope="GLOBAL", ts_event=T0 + 7 * SECOND),
            _ask(proposal_id="P-after", ts_event=T0 + 8 * SECOND),
        ]
    )

    assert pickle.dumps(snap) == frozen
    assert snap.trading_state("PF-1", "AAPL", T0 + 8 * SECOND) == "ACTIVE"
    assert "E7" not in snap.executed


# --- control gate -------------------------------------------------------------------------------


def test_gate_state_when_pickled_still_rejects_replays():
    gate = ControlGateLogic(CONFIG, None)
    seen = control(nonce="n-seen")
    gate.on_batch([inb("ControlCommand", seen)])

    restored_state = roundtrip(gate.state)
    restored = ControlGateLogic(CONFIG, restored_state)

    assert isinstance(restored_state, GateState)
    assert restored_state.nonces == gate.state.nonces
    [out] = restored.on_batch([inb("ControlCommand", seen)])[0]
    assert out.record["error_code"] == "REPLAYED_CONTROL"


def test_gate_logic_when_snapshot_taken_later_nonces_do_not_change_it():
    gate = ControlGateLogic(CONFIG, None)
    gate.on_batch([inb("ControlCommand", control(nonce="n-1"))])

    snap = pickle.loads(gate.snapshot())
    gate.on_batch([inb("ControlCommand", control(nonce="n-2"))])

    assert set(snap.nonces) == {"n-1"}
    assert set(gate.state.nonces) == {"n-1", "n-2"}


@pytest.mark.parametrize(
    "factory",
    [
        lambda: _instrument_logic().state,
        lambda: _shard_logic().state,
        lambda: Book(1.0),
        lambda: TimeLog(),
        lambda: GateState({"n": T0}),
    ],
    ids=["InstrumentShard", "ShardState", "Book", "TimeLog", "GateState"],
)
def test_state_class_when_pickled_twice_is_byte_stable(factory):
    state = factory()

    assert pickle.dumps(roundtrip(state)) == pickle.dumps(roundtrip(roundtrip(state)))
