"""InstrumentLogic: point-in-time views, waiting proposals, out-of-order ticks."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from operators.config import EngineConfig
from operators.instrument import TICK_HISTORY, InstrumentLogic, InstrumentState
from operators.records import (
    END_OF_TIME,
    DeadLetterItem,
    Inbound,
    Mark,
    MarketView,
    PricedProposal,
    Progress,
    Source,
    StateWrite,
)
from operators.routing import to_instruments
from tests.factories import SECOND, T0, instrument, proposal, tick

TOPICS = {
    "MarketTick": "market.ticks",
    "Instrument": "reference.instruments",
    "TradeProposal": "trade.proposals",
}


def inb(kind: str, record: dict[str, Any], received_ns: int = 0) -> Inbound:
    return Inbound(kind, record, Source(TOPICS[kind], 0, 0, record["ts_event"]), received_ns)


def px(ts: int, last: float) -> Inbound:
    return inb("MarketTick", tick(ts_event=ts, bid=last - 0.01, ask=last + 0.01, last=last))


def logic(**config: Any) -> InstrumentLogic:
    return InstrumentLogic(EngineConfig(**config), None)


def aapl(lg: InstrumentLogic) -> InstrumentState:
    """The state of the one instrument the tests feed."""
    return lg.state.instruments["AAPL"]


def feed(lg: InstrumentLogic, *items: Inbound) -> list[Any]:
    out, _ = lg.on_batch(list(items))
    return list(out)


def priced(out: list[Any]) -> list[PricedProposal]:
    return [o for o in out if isinstance(o, PricedProposal)]


def plain(view: MarketView) -> tuple[Any, ...]:
    """A MarketView with NaN made comparable."""
    feats = {k: ("nan" if math.isnan(v) else v) for k, v in sorted(view.features.items())}
    return (view.instrument, view.ts_last, view.last, view.bid, view.ask, feats)


# --- point in time --------------------------------------------------------------------------


def test_on_batch_when_later_tick_arrived_first_judges_on_last_tick_at_or_before_ts_event():
    lg = logic(lateness_ns=5 * SECOND)
    feed(lg, inb("Instrument", instrument()), px(T0 + 2 * SECOND, 102.0), px(T0, 100.0))

    assert priced(feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))) == []
    # held until no tick at or before it can still arrive: watermark - lateness > ts_event
    [p] = priced(feed(lg, px(T0 + 7 * SECOND, 103.0)))

    assert (p.market.ts_last, p.market.last) == (T0, 100.0)
    assert (p.market.bid, p.market.ask) == (99.99, 100.01)
    assert p.stale is False


def test_view_as_of_when_tick_at_exactly_ts_event_includes_it():
    lg = logic()
    feed(lg, px(T0, 100.0), px(T0 + SECOND, 101.0), px(T0 + 2 * SECOND, 102.0))

    view = aapl(lg).view_as_of(T0 + SECOND, LATENESS)

    assert (view.ts_last, view.last) == (T0 + SECOND, 101.0)


def test_view_as_of_when_before_first_tick_has_no_market_data():
    lg = logic()
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))

    view = aapl(lg).view_as_of(T0 - 1, LATENESS)

    assert (view.ts_last, view.last, view.bid, view.ask) == (None, None, None, None)
    assert view.instrument is not None


def test_view_as_of_when_quote_known_reports_spread_in_basis_points():
    lg = logic()
    feed(lg, inb("MarketTick", tick(ts_event=T0, bid=99.0, ask=101.0, last=100.0)))

    assert aapl(lg).view_as_of(T0, LATENESS).features["quoted_spread_bps"] == pytest.approx(200.0)


# --- waiting --------------------------------------------------------------------------------


def test_on_batch_when_no_tick_after_ts_event_keeps_proposal_waiting():
    lg = logic()
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))

    assert priced(feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))) == []
    # A tick at exactly ts_event does not prove the state complete yet.
    assert priced(feed(lg, px(T0 + SECOND, 101.0))) == []

    [p] = priced(feed(lg, px(T0 + 2 * SECOND, 102.0)))

    assert (p.market.ts_last, p.market.last, p.stale) == (T0 + SECOND, 101.0, False)
    assert aapl(lg).pending == []


def test_on_batch_when_reference_data_missing_waits_for_it():
    lg = logic()
    feed(lg, px(T0, 100.0), px(T0 + 2 * SECOND, 102.0))

    assert priced(feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))) == []

    out = feed(lg, inb("Instrument", instrument(lot_size=10.0)))

    [p] = priced(out)
    assert p.market.instrument["lot_size"] == 10.0
    assert (p.market.last, p.stale) == (100.0, False)
    assert any(isinstance(o, StateWrite) and o.key == "reference:AAPL" for o in out)


REF_PARTS = (("reference.instruments", 0), ("reference.instruments", 1))


def ref_progress(*through: int) -> Progress:
    parts = zip(REF_PARTS, through, strict=False)  # the first len(through) partitions
    return Progress("Instrument", tuple((*part, ts) for part, ts in parts))


def test_on_batch_when_every_reference_partition_passed_answers_an_unknown_instrument():
    lg = logic(reference_parts=REF_PARTS)
    feed(lg, px(T0, 100.0))
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))

    assert priced(feed(lg, ref_progress(T0 + 5 * SECOND))) == []  # one partition unknown
    assert priced(feed(lg, ref_progress(T0 + 5 * SECOND, T0 + SECOND))) == []  # not past it
    [p] = priced(feed(lg, ref_progress(T0 + 5 * SECOND, T0 + SECOND + 1)))

    assert p.market.instrument is None
    assert p.stale is False  # no reference record can still come: a complete answer


def test_on_batch_when_reference_partitions_passed_an_unknown_instrument_answers_at_once():
    lg = logic(reference_parts=REF_PARTS)
    feed(lg, ref_progress(T0 + 5 * SECOND, T0 + 5 * SECOND))

    [p] = priced(feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND))))

    assert (p.market.instrument, p.stale) == (None, False)


def test_reference_progress_from_idle_markers_never_reaches_the_instrument_shards():
    idle = Progress("Instrument", ((*REF_PARTS[0], T0 + 5 * SECOND),), idle=True)

    assert to_instruments(idle, 16) == []  # wall clock says nothing of as-of times


def test_on_batch_when_a_bounded_reference_read_ends_answers_an_unknown_instrument():
    lg = logic(reference_parts=REF_PARTS[:1])
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))

    [p] = priced(feed(lg, Progress("Instrument", ((*REF_PARTS[0], END_OF_TIME),))))

    assert (p.market.instrument, p.stale) == (None, False)


def test_pending_when_reference_data_is_missing_waits_the_reference_wait_then_ticks_only():
    lg = logic(max_wait_ns=250_000_000, reference_wait_ns=5 * SECOND)
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND), received_ns=T0))

    assert lg.notify_at() == datetime.fromtimestamp((T0 + 5 * SECOND) / 1e9, tz=UTC)
    feed(lg, inb("Instrument", instrument()))
    assert lg.notify_at() == datetime.fromtimestamp((T0 + 250_000_000) / 1e9, tz=UTC)


def test_on_batch_when_reference_comes_before_the_fence_passes_prices_with_it():
    lg = logic(reference_parts=REF_PARTS[:1])
    feed(lg, px(T0, 100.0), px(T0 + 2 * SECOND, 102.0))
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))

    out = feed(lg, inb("Instrument", instrument()), ref_progress(T0 + 3 * SECOND))

    [p] = priced(out)
    assert p.market.instrument is not None and p.market.last == 100.0


def test_on_batch_when_several_proposals_wait_releases_only_the_covered_ones():
    lg = logic()
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    early = proposal(proposal_id="early", ts_event=T0 + SECOND)
    late = proposal(proposal_id="late", ts_event=T0 + 5 * SECOND)
    feed(lg, inb("TradeProposal", early), inb("TradeProposal", late))

    out = priced(feed(lg, px(T0 + 2 * SECOND, 102.0)))

    assert [p.proposal["proposal_id"] for p in out] == ["early"]
    assert [p.item.record["proposal_id"] for p in aapl(lg).pending] == ["late"]


def test_on_batch_when_proposals_wait_out_of_time_order_releases_them_in_arrival_order():
    lg = logic()
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    arrivals = [("c", 3), ("a", 1), ("e", 9), ("b", 2), ("d", 8)]
    feed(
        lg,
        *(
            inb("TradeProposal", proposal(proposal_id=i, ts_event=T0 + s * SECOND))
            for i, s in arrivals
        ),
    )

    out = priced(feed(lg, px(T0 + 4 * SECOND, 102.0)))
    rest = priced(list(lg.on_eof()[0]))

    assert [p.proposal["proposal_id"] for p in out] == ["c", "a", "b"]
    assert [(p.proposal["proposal_id"], p.stale) for p in rest] == [("e", True), ("d", True)]


def test_on_eof_when_proposals_wait_releases_them_marked_stale():
    lg = logic()
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    feed(lg, inb("TradeProposal", proposal(proposal_id="P-w", ts_event=T0 + SECOND)))

    out, _ = lg.on_eof()
    [p] = priced(list(out))

    assert p.proposal["proposal_id"] == "P-w"
    assert p.stale is True
    assert (p.market.ts_last, p.market.last) == (T0, 100.0)
    assert aapl(lg).pending == []


def test_on_eof_when_reference_data_never_came_releases_stale_without_instrument():
    lg = logic()
    feed(lg, px(T0, 100.0))
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND)))

    [p] = priced(list(lg.on_eof()[0]))

    assert p.stale is True
    assert p.market.instrument is None


def test_on_notify_when_deadline_passed_releases_stale_and_keeps_the_rest():
    lg = logic(max_wait_ns=250_000_000)
    now = int(datetime.now(UTC).timestamp() * 1e9)
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    feed(
        lg,
        inb("TradeProposal", proposal(proposal_id="old", ts_event=T0 + SECOND), received_ns=1),
        inb(
            "TradeProposal", proposal(proposal_id="new", ts_event=T0 + SECOND), now + 3600 * SECOND
        ),
    )

    out, _ = lg.on_notify()

    assert [(p.proposal["proposal_id"], p.stale) for p in priced(list(out))] == [("old", True)]
    assert [p.item.record["proposal_id"] for p in aapl(lg).pending] == ["new"]


def test_notify_at_when_live_returns_earliest_deadline():
    lg = logic(max_wait_ns=250_000_000)
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND), received_ns=T0))

    assert lg.notify_at() == datetime.fromtimestamp((T0 + 250_000_000) / 1e9, tz=UTC)


def test_notify_at_when_replaying_never_gives_up_on_data():
    lg = logic(wait_for_data=True)
    feed(lg, inb("Instrument", instrument()), px(T0, 100.0))
    feed(lg, inb("TradeProposal", proposal(ts_event=T0 + SECOND), received_ns=T0))

    assert lg.notify_at() is None


# --- out-of-order ticks -----------------------------------------------------------------------

LATENESS = 0
SHUFFLE_LATENESS = 15 * SECOND  # every shuffled tick is within the allowed lateness
_HISTORY = [(T0 + i * 300_000_000, 100.0 + math.sin(i) * 3) for i in range(40)]
_PROBES = [T0 - 1, *(ts for ts, _ in _HISTORY), *(ts + 1 for ts, _ in _HISTORY)]


def _replayed(seed: int | None) -> InstrumentLogic:
    ticks = list(_HISTORY)
    if seed is not None:
        random.Random(seed).shuffle(ticks)
    lg = logic(lateness_ns=SHUFFLE_LATENESS)
    feed(lg, inb("Instrument", instrument()), *(px(ts, last) for ts, last in ticks))
    return lg


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_view_as_of_when_ticks_arrive_shuffled_gives_same_prices(seed):
    ordered, shuffled = _replayed(None), _replayed(seed)

    for ts in _PROBES:
        a = aapl(ordered).view_as_of(ts, SHUFFLE_LATENESS)
        b = aapl(shuffled).view_as_of(ts, SHUFFLE_LATENESS)
        assert (a.ts_last, a.last, a.bid, a.ask) == (b.ts_last, b.last, b.bid, b.ask), ts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_view_as_of_when_ticks_arrive_shuffled_gives_same_view_with_features(seed):
    ordered, shuffled = _replayed(None), _replayed(seed)

    for ts in _PROBES:
        a = aapl(ordered).view_as_of(ts, SHUFFLE_LATENESS)
        assert plain(a) == plain(aapl(shuffled).view_as_of(ts, SHUFFLE_LATENESS)), ts


def test_on_batch_when_ticks_arrive_shuffled_prices_proposals_the_same():
    proposals = [proposal(proposal_id=f"P{i}", ts_event=T0 + i * 700_000_000) for i in range(15)]

    def run(ticks: list[tuple[int, float]]) -> list[tuple[Any, ...]]:
        lg = logic(lateness_ns=SHUFFLE_LATENESS)
        items = [inb("Instrument", instrument()), *(px(ts, last) for ts, last in ticks)]
        items += [inb("TradeProposal", p) for p in proposals]
        out = priced(feed(lg, *items)) + priced(list(lg.on_eof()[0]))
        return sorted(
            (p.proposal["proposal_id"], p.market.ts_last, p.market.last, p.stale) for p in out
        )

    shuffled = list(_HISTORY)
    random.Random(7).shuffle(shuffled)
    assert run(shuffled) == run(_HISTORY)


def test_on_batch_when_tick_is_behind_a_closed_bar_dead_letters_it_as_late():
    lg = logic(bar_interval_ns=SECOND)
    feed(lg, inb("Instrument", instrument()), px(T0 + 100, 100.0), px(T0 + 2 * SECOND, 101.0))

    out = feed(lg, px(T0 + 200, 99.0))

    [letter] = [o for o in out if isinstance(o, DeadLetterItem)]
    assert letter.record["error_code"] == "LATE"
    assert letter.record["ts_event"] == T0 + 200


def test_on_batch_when_tick_older_than_full_history_still_counts_in_its_bar():
    lg = logic()
    feed(lg, inb("Instrument", instrument()))
    feed(lg, *(px(T0 + i * 1000, 100.0) for i in range(1, TICK_HISTORY + 1)))
    assert len(aapl(lg).ticks) == TICK_HISTORY

    out = feed(lg, px(T0, 99.0))  # same open bar: accepted, not lost

    assert not any(isinstance(o, DeadLetterItem) for o in out)
    feed(lg, px(T0 + 2 * SECOND, 100.0))
    assert aapl(lg).bars.last()["bar_ticks"] == TICK_HISTORY + 1


# --- bars, marks and executions ---------------------------------------------------------------


def test_on_batch_when_bar_closes_emits_mark_at_bar_end_with_close_price():
    lg = logic(bar_interval_ns=SECOND)
    feed(lg, inb("Instrument", instrument(face_value=0.01)))
    feed(lg, px(T0 + 100_000_000, 100.0), px(T0 + 900_000_000, 101.0))

    out = feed(lg, px(T0 + 1_500_000_000, 103.0))

    [mark] = [o for o in out if isinstance(o, Mark)]
    assert (mark.instrument_id, mark.ts_event, mark.price, mark.daily_vol) == (
        "AAPL",
        T0 + SECOND,
        101.0,
        0.0,
    )
    assert mark.volume == 200.0  # two ticks of 100 in the bar
    assert mark.spread_bps == pytest.approx((2.0 + 1e4 * 0.02 / 101.0) / 2)  # mean of the ticks
    assert any(isinstance(o, StateWrite) and o.key == "instrument:AAPL" for o in out)


def test_on_batch_when_bars_close_mark_carries_realized_daily_vol_until_ewma_is_warm():
    import numpy as np

    lg = logic(bar_interval_ns=SECOND, bars_per_day=4.0)
    closes = [100.0 * (1.0 + 0.01 * math.sin(i)) for i in range(23)]
    feed(lg, inb("Instrument", instrument()))
    marks = [
        o
        for i, c in enumerate(closes)
        for o in feed(lg, px(T0 + i * SECOND, c))
        if isinstance(o, Mark)
    ]
    # 22 bars closed; rvol_20 = std (ddof 1) of the last 20 log returns; daily = x sqrt(4)
    returns = np.diff(np.log(closes[:22]))
    assert marks[-1].daily_vol == pytest.approx(np.std(returns[-20:], ddof=1) * 2.0, rel=1e-12)
