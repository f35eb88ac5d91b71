"""Portfolio shards: books and controls as of event time, dedupe, shard keys."""

from __future__ import annotations

import dataclasses
import math
import random
from statistics import NormalDist
from typing import Any

import pytest

from operators.config import EngineConfig, Limits
from operators.market import VolForecast
from operators.portfolio import (
    HISTORY_BARS,
    Book,
    ShardLogic,
    ShardState,
    TimeLog,
    all_shard_keys,
    shard_key,
)
from operators.records import (
    END_OF_TIME,
    DeadLetterItem,
    Decided,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    Source,
    StateWrite,
)
from schemas.codec import SingleObjectCodec
from tests.factories import KEYS, SECOND, T0, control, execution, instrument, proposal

CAPITAL = 10_000_000.0
CONFIG = EngineConfig(control=KEYS, portfolio_capital=CAPITAL)


def fill(**kw: Any) -> Inbound:
    e = execution(**kw)
    return Inbound("Execution", e, Source("trades.executed", 0, 0, e["ts_event"]))


def ref(instrument_id: str = "AAPL", face_value: float = 1.0) -> Inbound:
    r = instrument(instrument_id=instrument_id, symbol=instrument_id, face_value=face_value)
    return Inbound("Instrument", r, Source("reference.instruments", 0, 0, r["ts_event"]))


def ask(last: float = 100.0, ts_last: int = T0, **kw: Any) -> PricedProposal:
    p = proposal(**kw)
    view = MarketView(instrument(instrument_id=p["instrument_id"]), ts_last, last, last, last, {})
    return PricedProposal(p, view, Source("trade.proposals", 1, 5), 0, False, b"PF", b"raw")


def cmd(**kw: Any) -> Inbound:
    c = control(**kw)
    return Inbound("ControlCommand", c, Source("risk.control", 0, 0, c["ts_event"]))


def shard(*instruments: str) -> ShardLogic:
    lg = ShardLogic(CONFIG, None)
    feed(lg, *(ref(i) for i in instruments or ("AAPL", "MSFT", "TSLA")))
    return lg


def feed(lg: ShardLogic, *items: Any) -> list[Any]:
    out, _ = lg.on_batch(list(items))
    return list(out)


def decided(out: list[Any]) -> dict[str, Any]:
    [d] = [o for o in out if isinstance(o, Decided)]
    return d.record


def reason_codes(record: dict[str, Any]) -> list[str]:
    """Codes of the hard reasons (soft notices, such as a warming risk model, left out)."""
    return [r["code"] for r in record["reasons"] if r["hard"]]


# --- Book ---------------------------------------------------------------------------------------


def _book() -> Book:
    book = Book(CAPITAL)
    fills = [
        ("E1", "BUY", 100.0, 100.0, T0 + SECOND),
        ("E3", "SELL", 40.0, 110.0, T0 + 3 * SECOND),
        ("E2", "BUY", 10.0, 105.0, T0 + 2 * SECOND),  # arrives last, belongs in the middle
    ]
    for eid, side, qty, price, ts in fills:
        book.apply(
            execution(execution_id=eid, side=side, quantity=qty, price=price, ts_event=ts), 1.0
        )
    return book


@pytest.mark.parametrize(
    ("ts", "cash", "position"),
    [
        (T0, CAPITAL, 0.0),
        (T0 + SECOND - 1, CAPITAL, 0.0),
        (T0 + SECOND, CAPITAL - 10_000.0, 100.0),  # a fill at ts is in force at ts
        (T0 + 2 * SECOND, CAPITAL - 10_000.0 - 1_050.0, 110.0),
        (T0 + 2500 * 1_000_000, CAPITAL - 11_050.0, 110.0),
        (T0 + 3 * SECOND, CAPITAL - 11_050.0 + 4_400.0, 70.0),
        (T0 + 3600 * SECOND, CAPITAL - 6_650.0, 70.0),
    ],
)
def test_book_as_of_when_fills_after_ts_undoes_them(ts, cash, position):
    got_cash, positions = _book().as_of(ts)

    assert got_cash == pytest.approx(cash)
    assert positions.get("AAPL", 0.0) == pytest.approx(position)


def test_book_apply_when_unit_value_given_moves_cash_by_price_times_unit_value():
    book = Book(1_000.0)

    book.apply(execution(side="BUY", quantity=10.0, price=98.5), 0.01)

    assert book.cash == pytest.approx(1_000.0 - 10.0 * 98.5 * 0.01)
    assert book.positions == {"AAPL": 10.0}
    assert book.last_fill_value("AAPL", execution()["ts_event"]) == pytest.approx(98.5 * 0.01)


def test_book_as_of_when_called_does_not_change_the_live_book():
    book = _book()

    book.as_of(T0)

    assert book.positions == {"AAPL": pytest.approx(70.0)}
    assert book.cash == pytest.approx(CAPITAL - 6_650.0)


def test_book_as_of_when_read_before_and_after_a_fill_gives_the_book_after_it():
    book = _book()
    cash, positions = book.as_of(T0 + 3600 * SECOND)  # now: no later fill to undo
    positions["AAPL"] = 0.0  # a caller's copy, not the book's

    book.apply(execution(side="BUY", quantity=5.0, price=100.0, ts_event=T0 + 4 * SECOND), 1.0)

    assert book.as_of(T0 + 3600 * SECOND) == (pytest.approx(cash - 500.0), {"AAPL": 75.0})
    assert (book.cash, book.positions) == book.as_of(T0 + 3600 * SECOND)
    assert book.as_of(T0 + 3 * SECOND) == (pytest.approx(cash), {"AAPL": 70.0})


@pytest.mark.parametrize("cut", [T0, T0 + SECOND, T0 + 2 * SECOND + 1, T0 + 3 * SECOND])
def test_book_trim_when_fills_before_cut_forgotten_keeps_every_as_of_from_cut(cut):
    whole, trimmed = _book(), _book()

    trimmed.trim(cut)

    assert all(f[0] >= cut for f in trimmed.fills)
    for ts in (cut, cut + 1, T0 + 3 * SECOND, T0 + 3600 * SECOND):
        assert trimmed.as_of(ts) == whole.as_of(ts)
        assert trimmed.last_fill_value("AAPL", ts) == whole.last_fill_value("AAPL", ts)


def test_book_trim_when_every_fill_forgotten_last_fill_value_is_the_last_one():
    book = _book()

    book.trim(T0 + 3600 * SECOND)

    assert book.fills == []
    assert book.last_fill_value("AAPL", T0 + 3600 * SECOND) == pytest.approx(110.0)
    assert book.as_of(T0 + 3600 * SECOND) == (pytest.approx(CAPITAL - 6_650.0), {"AAPL": 70.0})


# --- TimeLog ------------------------------------------------------------------------------------

_LOG = [
    (T0, "c1", "HALTED"),
    (T0 + SECOND, "c2", "ACTIVE"),
    (T0 + SECOND, "c3", "REDUCE_ONLY"),  # same ts: tie broken by id, not arrival
    (T0 + 5 * SECOND, "c4", "ACTIVE"),
]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_timelog_as_of_when_inserted_in_any_order_picks_last_at_or_before(seed):
    entries = list(_LOG)
    random.Random(seed).shuffle(entries)
    log = TimeLog()
    for ts, tiebreak, value in entries:
        log.add(ts, tiebreak, value)

    assert log.as_of(T0 - 1, "none") == "none"
    assert log.as_of(T0) == "HALTED"
    assert log.as_of(T0 + SECOND - 1) == "HALTED"
    assert log.as_of(T0 + SECOND) == "REDUCE_ONLY"
    assert log.as_of(T0 + 4 * SECOND) == "REDUCE_ONLY"
    assert log.as_of(T0 + 5 * SECOND) == "ACTIVE"


def test_timelog_add_when_a_key_comes_again_keeps_one_entry():
    log = TimeLog()
    for _ in range(3):  # a redelivered command, or an automatic one read back
        log.add(T0, "c1", "REDUCE_ONLY")

    assert log.keys == [(T0, "c1")] and log.values == ["REDUCE_ONLY"]


@pytest.mark.parametrize("cut", [T0 - 1, T0, T0 + SECOND, T0 + 3 * SECOND, T0 + 9 * SECOND])
def test_timelog_trim_when_cut_keeps_every_as_of_from_cut(cut):
    whole, trimmed = TimeLog(), TimeLog()
    for log in (whole, trimmed):
        for ts, tiebreak, value in _LOG:
            log.add(ts, tiebreak, value)

    trimmed.trim(cut)

    assert len(trimmed.keys) <= len(whole.keys)
    for ts in (cut, cut + 1, T0 + 5 * SECOND, T0 + 60 * SECOND):
        assert trimmed.as_of(ts, "none") == whole.as_of(ts, "none")


def test_timelog_as_of_when_tiebreak_is_any_string_includes_entries_at_ts():
    log = TimeLog()
    log.add(T0, "\U0001f512-lock", "HALTED")  # a command id starting beyond U+FFFF

    assert log.as_of(T0) == "HALTED"


# --- trading state by scope ---------------------------------------------------------------------


def test_decide_when_global_halt_in_force_rejects_every_portfolio():
    lg = shard()
    feed(lg, cmd(action="HALT", scope="GLOBAL", ts_event=T0))

    for pf in ("PF-1", "PF-2"):
        record = decided(feed(lg, ask(portfolio_id=pf, ts_event=T0 + SECOND)))
        assert record["decision"] == "REJECT"
        assert record["trading_state"] == "HALTED"
        assert "TRADING_HALTED" in reason_codes(record)


def test_decide_when_portfolio_halted_leaves_other_portfolios_active():
    lg = shard()
    feed(lg, cmd(action="HALT", scope="PORTFOLIO", target="PF-1", ts_event=T0))

    halted = decided(feed(lg, ask(portfolio_id="PF-1", quantity=10.0)))
    other = decided(feed(lg, ask(portfolio_id="PF-2", quantity=10.0)))

    assert (halted["decision"], halted["trading_state"]) == ("REJECT", "HALTED")
    assert (other["decision"], other["trading_state"]) == ("APPROVE", "ACTIVE")


def test_decide_when_instrument_reduce_only_applies_to_that_instrument_only():
    lg = shard()
    feed(lg, cmd(action="REDUCE_ONLY", scope="INSTRUMENT", target="AAPL", ts_event=T0))

    aapl = decided(feed(lg, ask(instrument_id="AAPL", quantity=10.0)))
    msft = decided(feed(lg, ask(instrument_id="MSFT", quantity=10.0)))

    assert (aapl["decision"], aapl["trading_state"]) == ("REJECT", "REDUCE_ONLY")
    assert (msft["decision"], msft["trading_state"]) == ("APPROVE", "ACTIVE")


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ([("GLOBAL", "", "REDUCE_ONLY"), ("PORTFOLIO", "PF-1", "HALT")], "HALTED"),
        ([("GLOBAL", "", "HALT"), ("INSTRUMENT", "AAPL", "REDUCE_ONLY")], "HALTED"),
        ([("PORTFOLIO", "PF-1", "REDUCE_ONLY"), ("INSTRUMENT", "AAPL", "RESUME")], "REDUCE_ONLY"),
        ([("PORTFOLIO", "PF-1", "HALT"), ("GLOBAL", "", "RESUME")], "HALTED"),
        ([("INSTRUMENT", "AAPL", "HALT"), ("INSTRUMENT", "AAPL", "RESUME")], "ACTIVE"),
        ([("PORTFOLIO", "PF-2", "HALT"), ("INSTRUMENT", "MSFT", "HALT")], "ACTIVE"),
    ],
)
def test_trading_state_when_scopes_disagree_strictest_wins(commands, expected):
    lg = shard()
    for i, (scope, target, action) in enumerate(commands):
        feed(lg, cmd(action=action, scope=scope, target=target, ts_event=T0 + i))

    assert lg.state.trading_state("PF-1", "AAPL", T0 + SECOND) == expected


def test_decide_when_halt_is_later_than_proposal_ignores_it_even_if_it_arrived_first():
    lg = shard()
    feed(lg, cmd(action="HALT", scope="GLOBAL", ts_event=T0 + 5 * SECOND))

    before = decided(feed(lg, ask(ts_event=T0 + SECOND, quantity=10.0)))
    after = decided(feed(lg, ask(ts_event=T0 + 6 * SECOND, ts_last=T0 + 6 * SECOND)))

    assert (before["decision"], before["trading_state"]) == ("APPROVE", "ACTIVE")
    assert after["decision"] == "REJECT"


def test_control_when_state_changes_writes_trading_state():
    lg = shard()

    [write] = feed(lg, cmd(command_id="C-h", action="HALT", scope="PORTFOLIO", target="PF-1"))

    assert isinstance(write, StateWrite)
    assert write.key == "trading_state:PORTFOLIO:PF-1"
    assert write.fields["state"] == "HALTED"
    assert write.fields["command_id"] == "C-h"


# --- limits -------------------------------------------------------------------------------------


def _set_limit(scope: str, target: str, name: str, value: float, ts: int = T0) -> Inbound:
    return cmd(
        action="SET_LIMIT",
        scope=scope,
        target=target,
        limit_name=name,
        limit_value=value,
        ts_event=ts,
    )


def test_decide_when_portfolio_limit_set_applies_to_that_portfolio_only():
    lg = shard()
    feed(lg, _set_limit("PORTFOLIO", "PF-1", "max_order_notional", 1_000.0))

    limited = decided(feed(lg, ask(portfolio_id="PF-1", quantity=100.0)))
    other = decided(feed(lg, ask(portfolio_id="PF-2", quantity=100.0)))

    assert (limited["decision"], limited["allowed_quantity"]) == ("REDUCE", 10.0)
    assert reason_codes(limited) == ["MAX_ORDER_NOTIONAL"]
    assert (other["decision"], other["allowed_quantity"]) == ("APPROVE", 100.0)


def test_limits_as_of_when_global_and_portfolio_set_portfolio_overrides():
    lg = shard()
    feed(
        lg,
        _set_limit("GLOBAL", "", "concentration", 0.10),
        _set_limit("PORTFOLIO", "PF-1", "concentration", 0.05),
        _set_limit("GLOBAL", "", "max_adv_share", 0.02),
    )

    pf1 = lg.state.limits_as_of(Limits(), "PF-1", T0 + SECOND)
    pf2 = lg.state.limits_as_of(Limits(), "PF-2", T0 + SECOND)

    assert (pf1.concentration, pf1.max_adv_share) == (0.05, 0.02)
    assert (pf2.concentration, pf2.max_adv_share) == (0.10, 0.02)
    assert pf1.max_order_notional == Limits().max_order_notional


def test_limits_as_of_when_before_the_command_uses_configured_limits():
    lg = shard()
    feed(lg, _set_limit("PORTFOLIO", "PF-1", "concentration", 0.05, ts=T0 + 5 * SECOND))

    assert lg.state.limits_as_of(Limits(), "PF-1", T0 + SECOND) == Limits()
    assert lg.state.limits_as_of(Limits(), "PF-1", T0 + 5 * SECOND).concentration == 0.05


def test_decide_when_limit_set_to_zero_rejects_without_raising():
    lg = shard()
    feed(lg, _set_limit("GLOBAL", "", "max_order_notional", 0.0))

    record = decided(feed(lg, ask(quantity=10.0)))

    assert record["decision"] == "REJECT"


# --- books in decisions -------------------------------------------------------------------------


def test_decide_when_fill_is_later_than_proposal_ignores_it():
    lg = shard()
    feed(lg, fill(side="BUY", quantity=20_000.0, price=100.0, ts_event=T0 + 5 * SECOND))

    record = decided(feed(lg, ask(quantity=10_000.0, ts_event=T0 + SECOND)))

    # as of T0+1s the book is flat: 10,000 x 100 = 10% of 10m
    assert record["decision"] == "APPROVE"


def test_decide_when_a_later_fill_is_already_booked_uses_forecasts_of_the_book_as_of_ts():
    lg = shard()
    msft = VolForecast("MSFT", T0, vol=0.01, lo=0.005, hi=0.02, version="nb-1", sigma=0.01)
    feed(lg, msft, fill(instrument_id="MSFT", side="BUY", quantity=100.0, ts_event=T0 + 5 * SECOND))

    before = decided(feed(lg, ask(instrument_id="AAPL", ts_event=T0 + SECOND)))
    after = decided(feed(lg, ask(instrument_id="AAPL", ts_event=T0 + 6 * SECOND)))

    # as of T0+1s nothing is held and AAPL has no forecast; as of T0+6s MSFT is held
    assert "vol_nbeats" not in before["model_versions"]
    assert after["model_versions"]["vol_nbeats"] == "nb-1"


def late_inputs(kind: str) -> float:
    from operators.metrics import LATE_INPUTS

    return LATE_INPUTS.labels(kind)._value.get()


def test_fill_when_behind_a_decided_proposal_is_counted_and_logged_as_late(caplog):
    lg = shard()
    decided(feed(lg, ask(quantity=10.0, ts_event=T0 + 2 * SECOND)))
    before = late_inputs("Execution")

    feed(lg, fill(execution_id="E-LATE", ts_event=T0 + SECOND))

    assert late_inputs("Execution") == before + 1
    assert "late input: Execution E-LATE" in caplog.text


def test_automatic_control_when_read_back_is_neither_late_nor_applied_twice():
    lg = shard()
    decided(feed(lg, ask(quantity=10.0, ts_event=T0 + 2 * SECOND)))
    before = late_inputs("ControlCommand")
    auto = cmd(action="REDUCE_ONLY", scope="PORTFOLIO", target="PF-1", ts_event=T0 + SECOND)
    auto.record["issuer"] = "riskstream-auto"

    feed(lg, auto, auto)

    assert late_inputs("ControlCommand") == before
    assert len(lg.state.states[("PORTFOLIO", "PF-1")].keys) == 1


def test_decide_when_fill_precedes_proposal_counts_the_position():
    lg = shard()
    feed(lg, fill(side="BUY", quantity=20_000.0, price=100.0, ts_event=T0))

    record = decided(feed(lg, ask(quantity=10_000.0, ts_event=T0 + SECOND)))

    # 25% of 10m at 100 = 25,000 units; 20,000 held -> 5,000 more
    assert (record["decision"], record["allowed_quantity"]) == ("REDUCE", 5_000.0)


def test_book_view_when_no_mark_values_other_holdings_without_later_fills():
    lg = shard()
    feed(
        lg,
        fill(instrument_id="MSFT", quantity=100.0, price=100.0, ts_event=T0),
        fill(instrument_id="MSFT", quantity=100.0, price=150.0, ts_event=T0 + 5 * SECOND),
    )
    priced = ask(instrument_id="AAPL", ts_event=T0 + SECOND)

    view = lg.state.book_view(lg.state.books["PF-1"], priced)

    # as of T0+1s: 100 MSFT bought at 100, no mark yet -> valued at the fill price known then
    assert view.value == pytest.approx(CAPITAL)


def test_book_view_when_mark_known_values_holdings_at_mark_as_of_ts():
    lg = shard()
    feed(
        lg,
        fill(instrument_id="MSFT", quantity=100.0, price=100.0, ts_event=T0),
        Mark("MSFT", T0 + SECOND, 120.0, 0.02),
        Mark("MSFT", T0 + 10 * SECOND, 200.0, 0.02),
    )

    view = lg.state.book_view(
        lg.state.books["PF-1"], ask(instrument_id="AAPL", ts_event=T0 + 2 * SECOND)
    )

    assert view.value == pytest.approx(CAPITAL - 10_000.0 + 12_000.0)
    assert view.exposures == {"MSFT": (pytest.approx(12_000.0), 0.02)}
    assert view.position == 0.0


def test_shard_trim_when_market_runs_far_ahead_forgets_old_fills_and_commands_not_their_effect():
    lg = shard()
    feed(
        lg,
        cmd(action="HALT", scope="PORTFOLIO", target="PF-1", ts_event=T0),
        cmd(action="RESUME", scope="PORTFOLIO", target="PF-1", ts_event=T0 + SECOND),
        fill(execution_id="E1", quantity=100.0, price=100.0, ts_event=T0),
        fill(execution_id="E2", quantity=50.0, price=110.0, ts_event=T0 + SECOND),
    )
    late = T0 + (HISTORY_BARS + 5) * SECOND
    feed(lg, Mark("AAPL", late, 120.0, 0.02))  # history older than HISTORY_BARS bars goes

    book = lg.state.books["PF-1"]
    assert book.fills == []
    assert lg.state.states[("PORTFOLIO", "PF-1")].values == ["ACTIVE"]
    assert book.as_of(late) == (pytest.approx(CAPITAL - 15_500.0), {"AAPL": 150.0})
    assert book.last_fill_value("AAPL", late) == pytest.approx(110.0)
    assert lg.state.trading_state("PF-1", "AAPL", late) == "ACTIVE"


# --- dedupe -------------------------------------------------------------------------------------


def test_decide_when_proposal_id_repeats_dead_letters_duplicate_proposal():
    lg = shard()
    p = ask(proposal_id="P-dup", quantity=10.0)

    first = feed(lg, p)
    second = feed(lg, ask(proposal_id="P-dup", quantity=20.0))

    assert decided(first)["proposal_id"] == "P-dup"
    [letter] = second
    assert isinstance(letter, DeadLetterItem)
    assert letter.record["error_code"] == "DUPLICATE_PROPOSAL"
    assert letter.record["payload"] == b"raw"
    assert letter.record["step"] == "decide"


def test_execute_when_execution_id_repeats_applies_it_once():
    lg = shard()
    f = fill(execution_id="E-dup", quantity=100.0, price=100.0)

    first = feed(lg, f)
    second = feed(lg, f, fill(execution_id="E-dup", quantity=100.0, price=100.0))

    assert len(first) == 1 and isinstance(first[0], StateWrite)
    assert second == []
    assert lg.state.books["PF-1"].positions == {"AAPL": 100.0}
    assert lg.state.books["PF-1"].cash == pytest.approx(CAPITAL - 10_000.0)


def test_execute_when_applied_writes_the_book():
    lg = shard()

    [write] = feed(lg, fill(portfolio_id="PF-7", quantity=3.0, price=10.0, ts_event=T0))

    assert write.key == "book:PF-7"
    assert write.ts_event == T0
    assert write.fields["positions"] == '{"AAPL": 3.0}'
    assert float(write.fields["cash"]) == pytest.approx(CAPITAL - 30.0)


def test_execute_when_reference_data_missing_holds_fill_until_it_arrives():
    lg = ShardLogic(CONFIG, None)

    held = feed(lg, fill(instrument_id="UST10", quantity=1_000.0, price=98.0, ts_event=T0))
    out = feed(lg, ref("UST10", face_value=0.01))

    assert held == []
    [write] = out
    assert isinstance(write, StateWrite) and write.key == "book:PF-1"
    assert lg.state.books["PF-1"].cash == pytest.approx(CAPITAL - 1_000.0 * 98.0 * 0.01)


def test_decide_when_earlier_fill_is_held_waits_for_its_reference_data():
    lg = ShardLogic(CONFIG, None)
    feed(lg, ref("AAPL"))
    feed(lg, fill(instrument_id="UST10", quantity=1_000.0, price=100.0, ts_event=T0))

    early = feed(lg, ask(quantity=10.0, ts_event=T0 + SECOND))
    out = feed(lg, ref("UST10", face_value=0.01))

    assert [o for o in early if isinstance(o, Decided)] == []
    record = decided(out)
    assert record["proposal_id"] is not None
    assert record["decision"] == "APPROVE"


def test_on_eof_when_fill_never_got_reference_data_dead_letters_it():
    lg = ShardLogic(CONFIG, None)
    feed(lg, fill(instrument_id="NOPE", ts_event=T0))

    out, _ = lg.on_eof()

    [letter] = [o for o in out if isinstance(o, DeadLetterItem)]
    assert letter.record["error_code"] == "UNKNOWN_INSTRUMENT"


# --- decisions are publishable ------------------------------------------------------------------


def test_decide_when_answering_produces_a_record_that_encodes_as_risk_score():
    lg = shard()
    record = decided(feed(lg, ask(quantity=10.0)))
    codec = SingleObjectCodec()

    assert codec.decode("RiskScore", codec.encode("RiskScore", record)) == record
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "trade.proposals",
        1,
        5,
    )


# --- shard keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("portfolio_id", "shards", "expected"),
    [
        # zlib.crc32: PF-1 = 0xEFAA7B19, PF-2 = 0x76A32AA3, desk-emea-07 = 0x38FBACD5
        ("PF-1", 8, "shard-001"),
        ("PF-2", 8, "shard-003"),
        ("desk-emea-07", 8, "shard-005"),
        ("PF-1", 16, "shard-009"),
        ("PF-1", 4096, "shard-2841"),
        ("PF-1", 1, "shard-000"),
    ],
)
def test_shard_key_when_hashing_portfolio_is_stable_crc32_modulo_shards(
    portfolio_id, shards, expected
):
    assert shard_key(portfolio_id, shards) == expected


def test_shard_key_when_any_portfolio_lands_in_a_broadcast_key():
    keys = set(all_shard_keys(8))

    assert len(keys) == 8
    assert {shard_key(f"PF-{i}", 8) for i in range(200)} <= keys


def test_shard_state_when_new_is_empty():
    state = ShardState()

    assert state.trading_state("PF-1", "AAPL", T0) == "ACTIVE"
    assert state.mark_as_of("AAPL", T0) is None


def test_shard_when_order_rate_exceeded_rejects_the_extra_proposal():
    lg = shard()
    feed(lg, _set_limit("PORTFOLIO", "PF-1", "max_orders", 2.0))

    asks = [ask(portfolio_id="PF-1", quantity=1.0) for _ in range(3)]
    # the order-rate step (operators.order_rate) stamps the count in partition order
    counted = [dataclasses.replace(a, orders_in_window=n) for n, a in enumerate(asks, 1)]
    out = [decided(feed(lg, a)) for a in counted]

    assert [o["decision"] for o in out] == ["APPROVE", "APPROVE", "REJECT"]
    assert "ORDER_RATE" in reason_codes(out[2])


def test_shard_when_book_draws_down_past_the_limit_switches_it_to_reduce_only():
    from operators.control import verify
    from operators.records import AutoControl

    lg = shard("AAPL")
    # 80,000 shares at 100 = 8M of a 10M book; a 15% fall is a 12% drawdown (limit 10%)
    feed(lg, fill(quantity=80_000.0, price=100.0, ts_event=T0 - SECOND))
    feed(lg, Mark("AAPL", T0, 100.0, 0.0))
    out = feed(lg, Mark("AAPL", T0 + SECOND, 85.0, 0.0))

    [auto] = [o for o in out if isinstance(o, AutoControl)]
    assert (auto.record["action"], auto.record["scope"], auto.record["target"]) == (
        "REDUCE_ONLY",
        "PORTFOLIO",
        "PF-1",
    )
    assert auto.record["ts_event"] == T0 + SECOND
    verify(auto.record, auto.record["ts_event"], KEYS)  # signed with the flow's key
    feed(lg, Mark("AAPL", T0 + 2 * SECOND, 85.0, 0.0))  # the bar the proposals wait for
    buy = decided(feed(lg, ask(ts_event=T0 + 2 * SECOND, quantity=10.0)))
    sell = decided(feed(lg, ask(ts_event=T0 + 2 * SECOND, side="SELL", quantity=10.0)))
    assert buy["decision"] == "REJECT" and "REDUCE_ONLY" in reason_codes(buy)
    assert sell["decision"] == "APPROVE"


def test_shard_when_drawdown_within_limit_triggers_nothing():
    from operators.records import AutoControl

    lg = shard("AAPL")
    feed(lg, fill(quantity=80_000.0, price=100.0, ts_event=T0 - SECOND))
    feed(lg, Mark("AAPL", T0, 100.0, 0.0))
    out = feed(lg, Mark("AAPL", T0 + SECOND, 90.0, 0.0))  # 8% drawdown
    assert not [o for o in out if isinstance(o, AutoControl)]


def test_shard_when_portfolio_var_exceeds_its_limit_switches_it_to_reduce_only():
    from operators.records import AutoControl

    lg = shard("AAPL")
    feed(lg, _set_limit("PORTFOLIO", "PF-1", "var_limit", 200_000.0, ts=T0 - 2 * SECOND))
    feed(lg, fill(quantity=80_000.0, price=100.0, ts_event=T0 - SECOND))
    feed(lg, Mark("AAPL", T0, 100.0, 0.02))
    out = feed(lg, Mark("AAPL", T0 + SECOND, 100.0, 0.02))
    # one position; the EWMA seeded with 0.02^2 then took one zero return:
    # VaR = z * 8,000,000 * 0.02 * sqrt(0.94) = 255,159 > 200,000
    [auto] = [o for o in out if isinstance(o, AutoControl)]
    expected = NormalDist().inv_cdf(0.95) * 8_000_000 * 0.02 * math.sqrt(0.94)
    assert f"VaR {expected:,.0f}" in auto.record["reason"]


# --- covariance bars: which instruments a live shard waits for -----------------------------


def marked_state(marks: dict[str, tuple[int, tuple[str, int]]]) -> ShardState:
    """A shard state with reference data and bar marks: id -> (seconds of marks, partition)."""
    st = ShardState()
    for iid, (seconds, part) in marks.items():
        st.references[iid] = instrument(instrument_id=iid)
        for s in range(1, seconds + 1):
            st.add_mark(Mark(iid, T0 + s * SECOND, 100.0 + s, 0.01, part=part))
    return st


def test_close_bars_when_a_partition_is_read_far_behind_waits_for_its_instruments():
    # after a restart, partition 1 caught up to 60 s while partition 0 is still at 10 s
    st = marked_state({"A": (60, ("ticks", 1)), "B": (10, ("ticks", 0))})

    st.close_bars(END_OF_TIME, quiet_ns=30 * SECOND)

    assert st.model_through == T0 + 10 * SECOND  # not past what B has marked


def test_close_bars_when_an_instrument_is_quiet_within_its_partition_stops_waiting_for_it():
    st = marked_state({"A": (60, ("ticks", 0)), "B": (10, ("ticks", 0))})

    st.close_bars(END_OF_TIME, quiet_ns=30 * SECOND)

    assert st.model_through == T0 + 60 * SECOND
