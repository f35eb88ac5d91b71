"""Decision-step fuzzing: random books, limits, controls, marks and market views.

Everything fed to the shard is what the earlier steps can let through (records that pass
``validate``, commands the gate accepts, marks of valid ticks), but with values anywhere in
those ranges: subnormal and huge prices, quantities, lots and face values, zero ADV,
vanishing and astronomic limits. The shard must never raise, answer every proposal exactly
once, and every answer must keep the documented invariants and encode as a RiskScore.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from operators.config import EngineConfig, Limits
from operators.decision import band
from operators.portfolio import ShardLogic
from operators.records import DeadLetterItem, Decided, Inbound, Mark, MarketView, PricedProposal
from operators.records import Source as Src
from operators.validate import LIMIT_RANGE, MAX_VALUE, MIN_VALUE, validate
from schemas.codec import SingleObjectCodec
from tests.factories import KEYS, SECOND, T0, control, execution, instrument, proposal
from tests.fuzz.strategies import fuzz

CODEC = SingleObjectCodec()
INSTRUMENTS = ("AAPL", "UST", "ZZZ")
PORTFOLIOS = ("PF-1", "PF-2")
DECISIONS = {"APPROVE", "REDUCE", "REJECT"}
DOCUMENTED_REASONS = {  # README "What a decision contains"
    "CONCENTRATION", "MAX_ORDER_NOTIONAL", "VAR_BUDGET", "GROSS_NOTIONAL", "NET_NOTIONAL",
    "ADV_SHARE", "ORDER_RATE", "PRICE_COLLAR", "TRADING_HALTED", "REDUCE_ONLY",
    "UNKNOWN_INSTRUMENT", "NO_MARKET_DATA", "STALE_MARKET_DATA", "LOT_SIZE",
    "RISK_MODEL_WARMING", "MODEL_UNAVAILABLE",
    # fail-safe codes the code emits that the README table does not list (yet)
    "NO_RISK_MODEL", "NON_POSITIVE_PORTFOLIO_VALUE",
}  # fmt: skip
FAIL_SAFE = {"UNKNOWN_INSTRUMENT", "NO_MARKET_DATA", "STALE_MARKET_DATA"}

# Positive doubles across the whole range validate accepts, edges included.
POSITIVE = st.sampled_from([MIN_VALUE, 1e-6, 0.01, 1.0, 100.0, 1e9, MAX_VALUE]) | (
    st.floats(min_value=MIN_VALUE, max_value=MAX_VALUE)
)
MODEST = st.floats(1e-3, 1e7)
TS = st.integers(-60, 60).map(lambda s: T0 + s * SECOND)


def _pick(draw: st.DrawFn, wild: st.SearchStrategy[float]) -> float:
    """Mostly modest values, sometimes anything in range."""
    return draw(MODEST | wild)


@st.composite
def references(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    refs = {}
    for iid in INSTRUMENTS[:-1]:  # ZZZ never gets reference data
        refs[iid] = instrument(
            instrument_id=iid,
            symbol=iid,
            lot_size=draw(st.sampled_from([1.0, 0.01, 100.0]) | POSITIVE),
            face_value=draw(st.sampled_from([1.0, 0.01, 10.0]) | POSITIVE),
            adv=draw(st.sampled_from([0.0, 1e6]) | POSITIVE),
        )
    return refs


def limit_value(draw: st.DrawFn, name: str) -> float:
    """A SET_LIMIT value that validate and the control gate both accept."""
    value = draw(st.floats(*LIMIT_RANGE) | st.sampled_from(LIMIT_RANGE))
    if Limits.problem(name, value) is not None:
        value = draw(st.floats(LIMIT_RANGE[0], 1.0))
    return value


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(["HALT", "REDUCE_ONLY", "RESUME", "SET_LIMIT"]))
    if action == "SET_LIMIT":
        scope = draw(st.sampled_from(["GLOBAL", "PORTFOLIO"]))
        name = draw(st.sampled_from(Limits.names()))
        extra = {"limit_name": name, "limit_value": limit_value(draw, name)}
    else:
        scope = draw(st.sampled_from(["GLOBAL", "PORTFOLIO", "INSTRUMENT"]))
        extra = {}
    target = {"GLOBAL": "", "PORTFOLIO": draw(st.sampled_from(PORTFOLIOS))}.get(
        scope, draw(st.sampled_from(INSTRUMENTS))
    )
    return control(action=action, scope=scope, target=target, ts_event=draw(TS), **extra)


@st.composite
def fills(draw: st.DrawFn) -> dict[str, Any]:
    return execution(
        portfolio_id=draw(st.sampled_from(PORTFOLIOS)),
        instrument_id=draw(st.sampled_from(INSTRUMENTS)),
        side=draw(st.sampled_from(["BUY", "SELL"])),
        quantity=_pick(draw, POSITIVE),
        price=_pick(draw, POSITIVE),
        ts_event=draw(TS),
    )


@st.composite
def marks(draw: st.DrawFn) -> Mark:
    return Mark(
        draw(st.sampled_from(INSTRUMENTS)),
        draw(TS),
        _pick(draw, POSITIVE),
        draw(st.just(0.0) | st.floats(0.0, 2.0)),
        log_return=draw(st.just(math.nan) | st.floats(-5.0, 5.0)),
    )


@st.composite
def priced(draw: st.DrawFn, refs: dict[str, dict[str, Any]], ids: list[str]) -> PricedProposal:
    iid = draw(st.sampled_from(INSTRUMENTS))
    ts = draw(TS)
    last = _pick(draw, POSITIVE)
    p = proposal(
        proposal_id=draw(st.sampled_from(ids)),
        portfolio_id=draw(st.sampled_from(PORTFOLIOS)),
        instrument_id=iid,
        side=draw(st.sampled_from(["BUY", "SELL"])),
        quantity=_pick(draw, POSITIVE),
        limit_price=draw(st.none() | st.just(last) | POSITIVE),
        ts_event=ts,
    )
    has_tick = draw(st.booleans()) or draw(st.booleans())
    features = draw(st.dictionaries(st.sampled_from(["daily_vol", "mid"]), st.floats(0.0, 3.0)))
    view = MarketView(
        refs.get(iid),
        ts - draw(st.integers(0, 40)) * SECOND if has_tick else None,
        last if has_tick else None,
        last if has_tick else None,
        last if has_tick else None,
        features,
    )
    source = Src("trade.proposals", 0, draw(st.integers(0, 10**6)))
    return PricedProposal(p, view, source, 0, False, p["portfolio_id"].encode(), b"raw")


def _inbound(kind: str, record: dict[str, Any]) -> Inbound:
    validate(kind, record)  # the fuzzer must only send what the parse step lets through
    topic = {"Instrument": "reference.instruments", "Execution": "trades.executed"}
    return Inbound(kind, record, Src(topic.get(kind, "risk.control"), 0, 0, record["ts_event"]))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[Any]], list[PricedProposal]]:
    refs = draw(references())
    ids = [f"P-{i}" for i in range(draw(st.integers(1, 6)))]
    asks = draw(st.lists(priced(refs, ids), min_size=1, max_size=8))
    items: list[Any] = [_inbound("Instrument", r) for r in refs.values()]
    items += [_inbound("Execution", f) for f in draw(st.lists(fills(), max_size=6))]
    items += [_inbound("ControlCommand", c) for c in draw(st.lists(commands(), max_size=4))]
    items += draw(st.lists(marks(), max_size=6))
    for a in asks:
        validate("TradeProposal", a.proposal)
    items = draw(st.permutations(items + asks))
    cut = draw(st.integers(0, len(items)))
    return [items[:cut], items[cut:]], asks


def check_invariants(r: dict[str, Any], ask: PricedProposal) -> None:
    """What every answer must satisfy (README: 'What a decision contains')."""
    requested, allowed = r["requested_quantity"], r["allowed_quantity"]
    codes = {x["code"] for x in r["reasons"]}
    assert requested == ask.proposal["quantity"]
    assert r["decision"] in DECISIONS
    assert math.isfinite(allowed) and 0.0 <= allowed <= requested
    expected = "APPROVE" if allowed == requested else "REDUCE" if allowed > 0 else "REJECT"
    assert r["decision"] == expected
    assert math.isfinite(r["score"]) and 0.0 <= r["score"] <= 100.0
    assert math.isclose(r["score"], sum(f["contribution"] for f in r["factors"]), abs_tol=1e-3)
    assert r["band"] == band(r["score"])
    assert codes <= DOCUMENTED_REASONS, codes - DOCUMENTED_REASONS
    if allowed < requested:
        assert any(x["hard"] for x in r["reasons"]) or "LOT_SIZE" in codes
    if r["trading_state"] == "HALTED":
        assert r["decision"] == "REJECT" and "TRADING_HALTED" in codes
    if ask.market.instrument is None:
        assert r["decision"] == "REJECT" and "UNKNOWN_INSTRUMENT" in codes
    if codes & FAIL_SAFE:
        assert r["decision"] == "REJECT" and r["score"] == 100.0
    CODEC.decode("RiskScore", CODEC.encode("RiskScore", r))  # the sink can write it


@fuzz(300)
@given(scenarios())
def test_shard_when_given_random_books_limits_and_markets_answers_each_proposal_once(scenario):
    batches, asks = scenario
    logic = ShardLogic(EngineConfig(control=KEYS), None)

    out: list[Any] = []
    for batch in batches:
        out += list(logic.on_batch(batch)[0])
    out += list(logic.on_eof()[0])

    decided = [o.record for o in out if isinstance(o, Decided)]
    codes = [o.record["error_code"] for o in out if isinstance(o, DeadLetterItem)]
    arrivals = [i for b in batches for i in b if isinstance(i, PricedProposal)]
    first: dict[str, PricedProposal] = {}
    for a in arrivals:  # the first arrival of an id is the one answered
        first.setdefault(a.proposal["proposal_id"], a)
    assert sorted(r["proposal_id"] for r in decided) == sorted(first)
    assert codes.count("DUPLICATE_PROPOSAL") == len(asks) - len(first)
    assert set(codes) <= {"DUPLICATE_PROPOSAL", "UNKNOWN_INSTRUMENT"}  # fills without reference
    for r in decided:
        check_invariants(r, first[r["proposal_id"]])
