"""Event-time fences: decisions do not depend on the order inputs arrive in."""

from __future__ import annotations

import random
from typing import Any

from operators.config import EngineConfig
from operators.ingest import parse_batch
from operators.portfolio import ShardLogic
from operators.records import (
    END_OF_TIME,
    Decided,
    Inbound,
    MarketView,
    PricedProposal,
    Progress,
    Source,
    SourceIdle,
)
from schemas.codec import SingleObjectCodec
from tests.factories import (
    INPUT_KINDS,
    KEYS,
    SECOND,
    T0,
    control,
    execution,
    instrument,
    message,
    proposal,
)

CTL = ("risk.control", 0)
EXE = ("trades.executed", 0)
FENCE = (CTL, EXE)


def config(**kw: Any) -> EngineConfig:
    return EngineConfig(control=KEYS, fence=FENCE, **kw)


def inb(kind: str, record: dict[str, Any]) -> Inbound:
    topic = {"ControlCommand": CTL[0], "Execution": EXE[0], "Instrument": "reference.instruments"}
    return Inbound(kind, record, Source(topic[kind], 0, 0, record["ts_event"]), 0)


def priced(ts: int, pid: str = "P") -> PricedProposal:
    market = MarketView(instrument(), ts - 1, 100.0, 99.99, 100.01, {})
    return PricedProposal(proposal(proposal_id=pid, ts_event=ts), market, Source("p"), 0)


def progress(ts: int, *parts: tuple[str, int]) -> list[Progress]:
    kinds = {CTL[0]: "ControlCommand", EXE[0]: "Execution"}
    return [Progress(kinds[t], ((t, p, ts),)) for t, p in parts or FENCE]


def decided(out: Any) -> dict[str, dict[str, Any]]:
    return {d.record["proposal_id"]: d.record for d in out if isinstance(d, Decided)}


def test_shard_when_fence_has_not_passed_holds_the_proposal():
    shard = ShardLogic(config(), None)
    out, _ = shard.on_batch([priced(T0 + SECOND), *progress(T0 + SECOND)])  # not past T
    assert decided(out) == {}

    out, _ = shard.on_batch(progress(T0 + SECOND + 1))
    assert decided(out)["P"]["decision"] == "APPROVE"


def test_shard_when_halt_arrives_after_a_later_proposal_still_rejects_it():
    shard = ShardLogic(config(), None)
    shard.on_batch([priced(T0 + 2 * SECOND)])  # the proposal overtook the HALT
    out, _ = shard.on_batch(
        [inb("ControlCommand", control(ts_event=T0 + SECOND)), *progress(END_OF_TIME)]
    )

    assert decided(out)["P"]["decision"] == "REJECT"
    assert decided(out)["P"]["trading_state"] == "HALTED"


def test_shard_when_only_one_partition_progressed_keeps_waiting():
    shard = ShardLogic(config(), None)
    out, _ = shard.on_batch([priced(T0), *progress(END_OF_TIME, CTL)])
    assert decided(out) == {}


def test_shard_when_fill_waits_for_reference_data_holds_its_portfolio():
    shard = ShardLogic(config(), None)
    fill = inb("Execution", execution(instrument_id="NEW", ts_event=T0))
    out, _ = shard.on_batch([fill, priced(T0 + SECOND), *progress(END_OF_TIME)])
    assert decided(out) == {}

    out, _ = shard.on_batch([inb("Instrument", instrument(instrument_id="NEW", symbol="NEW"))])
    assert "P" in decided(out)


def test_shard_when_input_ends_answers_everything_held():
    shard = ShardLogic(config(), None)
    shard.on_batch([priced(T0, "A"), priced(T0 + SECOND, "B")])
    out, _ = shard.on_eof()
    assert set(decided(out)) == {"A", "B"}


def test_shard_when_live_wait_expires_decides_stale():
    shard = ShardLogic(config(max_wait_ns=0), None)
    shard.on_batch([priced(T0)])
    assert shard.notify_at() is not None

    out, _ = shard.on_notify()

    assert decided(out)["P"]["stale"] is True


def test_shard_when_inputs_arrive_in_any_order_decides_the_same():
    events = [
        inb("ControlCommand", control(command_id="h", action="HALT", ts_event=T0 + 3 * SECOND)),
        inb("ControlCommand", control(command_id="r", action="RESUME", ts_event=T0 + 6 * SECOND)),
        inb("Execution", execution(execution_id="e1", quantity=20_000, ts_event=T0 + SECOND)),
        inb(
            "Execution",
            execution(execution_id="e2", side="SELL", quantity=5_000, ts_event=T0 + 5 * SECOND),
        ),
        *(priced(T0 + k * SECOND + 500, f"p{k}") for k in range(9)),
    ]
    ref = inb("Instrument", instrument())

    def run(order: list[Any]) -> dict[str, Any]:
        shard = ShardLogic(config(wait_for_data=True), None)
        out = list(shard.on_batch([ref])[0])
        for item in order:
            out += shard.on_batch([item])[0]
        out += shard.on_batch(progress(END_OF_TIME))[0]
        out += shard.on_eof()[0]  # replays hold proposals until their bar's marks (none here)
        return {
            k: {f: v[f] for f in ("decision", "allowed_quantity", "trading_state", "score")}
            for k, v in decided(out).items()
        }

    expected = run(events)
    assert len(expected) == 9
    assert expected["p4"]["decision"] == "REJECT" and expected["p7"]["decision"] != "REJECT"
    rng = random.Random(5)
    for _ in range(30):
        shuffled = list(events)
        rng.shuffle(shuffled)
        assert run(shuffled) == expected


def test_parse_when_fenced_records_arrive_ends_batch_with_their_progress():
    msgs = [
        message("ControlCommand", control(ts_event=T0 + SECOND)),
        message("ControlCommand", control(ts_event=T0 + 3 * SECOND)),
        message("Execution", execution(ts_event=T0 + 2 * SECOND)),
        message("ControlCommand", raw=b"junk"),
    ]
    out = parse_batch(msgs, INPUT_KINDS, SingleObjectCodec(), config())

    marks = [o for o in out if isinstance(o, Progress)]
    assert out[-len(marks) :] == marks  # after the data they cover
    by_kind = {m.kind: m.parts for m in marks}
    assert by_kind == {
        "ControlCommand": (("risk.control", 0, T0 + 3 * SECOND + 1),),
        "Execution": (("trades.executed", 0, T0 + 2 * SECOND + 1),),
    }


def test_parse_when_partition_idle_live_reports_wall_clock_less_margin():
    cfg = config(idle_margin_ns=7)
    [mark] = parse_batch(
        [SourceIdle("risk.control", 0, 1_000)], INPUT_KINDS, SingleObjectCodec(), cfg
    )
    assert mark == Progress("ControlCommand", (("risk.control", 0, 993),), idle=True)


def test_parse_when_partition_idle_in_replay_ignores_the_clock_but_not_the_end():
    cfg = config(wait_for_data=True)
    codec = SingleObjectCodec()
    assert parse_batch([SourceIdle("risk.control", 0, 1_000)], INPUT_KINDS, codec, cfg) == []
    [mark] = parse_batch([SourceIdle("risk.control", 0, END_OF_TIME)], INPUT_KINDS, codec, cfg)
    assert (mark.parts, mark.idle) == ((("risk.control", 0, END_OF_TIME),), False)  # data


def test_parse_when_unfenced_topic_idle_emits_nothing():
    cfg = config()
    assert (
        parse_batch([SourceIdle("market.ticks", 0, 1_000)], INPUT_KINDS, SingleObjectCodec(), cfg)
        == []
    )


def test_parse_when_record_is_invalid_does_not_move_progress():
    msgs = [
        message("ControlCommand", control(ts_event=T0)),
        message("ControlCommand", control(ts_event=4_200_000_000_000_000_000)),
    ]
    out = parse_batch(msgs, INPUT_KINDS, SingleObjectCodec(), config())
    [mark] = [o for o in out if isinstance(o, Progress)]
    assert mark.parts == (("risk.control", 0, T0 + 1),)
