"""Flow-level fuzzing: valid records mixed with garbage and mutated bytes, end to end.

The whole pre-trade flow must never crash, and every input message must be accounted
for: a message that does not decode or validate is in the DLQ with the code the codec or
validation gives and its original bytes; every valid proposal is answered exactly once or
dead-lettered as a duplicate; nothing is dead-lettered without a reason.
"""

from __future__ import annotations

import math
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from hypothesis import given
from hypothesis import strategies as st

from operators.errors import CodecError, InvalidRecord
from operators.validate import validate
from schemas.codec import SingleObjectCodec
from tests.factories import SECOND, T0, TOPIC_OF, control, instrument, message, proposal, tick
from tests.fuzz.flow import run_flow
from tests.fuzz.strategies import corpus, fuzz, record_strategy

CODEC = SingleObjectCodec()
KINDS = ("MarketTick", "Instrument", "TradeProposal", "Execution", "ControlCommand")
DECISIONS = {"APPROVE", "REDUCE", "REJECT"}


def expected_code(kind: str, data: bytes | None) -> str | None:
    """The parse step's verdict on a message: its dead-letter code, or None when usable."""
    try:
        validate(kind, CODEC.decode(kind, data))
    except (CodecError, InvalidRecord) as exc:
        return str(exc.code)
    return None


def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    how = draw(st.sampled_from(["flip", "truncate", "extend", "random"]))
    if how == "flip":
        i = draw(st.integers(0, len(out) - 1))
        out[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del out[draw(st.integers(0, len(out) - 1)) :]
    elif how == "extend":
        out += draw(st.binary(min_size=1, max_size=8))
    else:
        return draw(st.binary(max_size=40))
    return bytes(out)


@st.composite
def good_market(draw: st.DrawFn) -> list[KafkaSourceMessage]:
    """Reference data and a tick stream for AAPL, and valid proposals in between."""
    msgs = [message("Instrument", instrument())]
    for i in range(draw(st.integers(2, 6))):
        msgs.append(message("MarketTick", tick(ts_event=T0 + i * SECOND, last=100.0 + i)))
        for _ in range(draw(st.integers(0, 2))):
            qty = draw(st.sampled_from([1.0, 100.0, 50_000.0]) | st.floats(1.0, 1e6))
            pid = draw(st.sampled_from(["PF-1", "PF-2"]))
            iid = draw(st.sampled_from(["AAPL", "AAPL", "NOPE"]))
            rec = proposal(
                quantity=qty, portfolio_id=pid, instrument_id=iid, ts_event=T0 + i * SECOND
            )
            msgs.append(message("TradeProposal", rec))
    if draw(st.booleans()):
        msgs.append(message("ControlCommand", control(ts_event=T0 + SECOND)))
    return msgs


@st.composite
def hostile_message(draw: st.DrawFn) -> KafkaSourceMessage:
    """Garbage, a mutated valid encoding, or a well-formed record with hostile values."""
    kind = draw(st.sampled_from(KINDS))
    how = draw(st.sampled_from(["garbage", "mutated", "hostile", "duplicate"]))
    if how == "garbage":
        return message(kind, raw=draw(st.binary(max_size=48)))
    if how == "mutated":
        return message(kind, raw=_mutate(draw, CODEC.encode(kind, corpus()[kind])))
    if how == "hostile":
        record = draw(record_strategy(kind, hostile=True))
        return message(kind, record, kafka_ts_ns=T0)
    return message("TradeProposal", proposal(proposal_id="P-dup", ts_event=T0 + SECOND))


@st.composite
def streams(draw: st.DrawFn) -> list[KafkaSourceMessage]:
    good = draw(good_market())
    bad = draw(st.lists(hostile_message(), min_size=1, max_size=12))
    out = list(good)
    for m in bad:  # hostile messages anywhere, good ones in their own order
        out.insert(draw(st.integers(0, len(out))), m)
    return out


def _check_score(s: dict[str, Any]) -> None:
    assert s["decision"] in DECISIONS
    assert 0.0 <= s["allowed_quantity"] <= s["requested_quantity"]
    assert math.isfinite(s["score"]) and 0.0 <= s["score"] <= 100.0
    if s["decision"] == "REJECT":
        assert s["allowed_quantity"] == 0.0


@fuzz(30)
@given(streams())
def test_flow_when_fed_garbage_among_good_records_accounts_for_every_message(msgs):
    result = run_flow(msgs)  # a crash fails the test

    by_offset = {m.offset: m for m in msgs}
    for letter in result.letters:
        msg = by_offset[letter["source_offset"]]
        assert letter["payload"] == msg.value, "a dead letter must carry the original bytes"
        assert letter["error_code"] and letter["error_message"]
        assert letter["source_topic"] == msg.topic
    for msg in msgs:
        kind = next(k for k, t in TOPIC_OF.items() if t == msg.topic)
        code = expected_code(kind, msg.value)
        letters, scores = result.letters_at(msg.offset), result.scores_at(msg.offset)
        if code is not None:
            assert [d["error_code"] for d in letters] == [code] and not scores
        elif kind == "TradeProposal":
            assert len(scores) + len(letters) == 1, (scores, letters)
            assert all(d["error_code"] == "DUPLICATE_PROPOSAL" for d in letters)
    ids = [s["proposal_id"] for s in result.scores]
    assert len(ids) == len(set(ids)), "a proposal id is answered at most once"
    for s in result.scores:
        _check_score(s)
