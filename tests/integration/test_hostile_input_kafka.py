"""Hostile input on the real broker: garbage mixed with good records loses nothing."""

from __future__ import annotations

import random

from tests.factories import SECOND, T0, instrument, proposal, tick
from tests.integration.conftest import consume, publish, run_to_end

GARBAGE = [b"", b"\x00", b"{}", b"\xc3\x01", b"\xc3\x01" + b"\xff" * 12, b"\x00\x00\x00\x00\x07x"]


def test_garbage_when_mixed_with_good_records_all_good_answered_all_bad_dead_lettered(settings):
    rng = random.Random(7)
    garbage = GARBAGE + [rng.randbytes(rng.randint(1, 40)) for _ in range(14)]
    good = [("Instrument", instrument())]
    good += [("MarketTick", tick(ts_event=T0 + i * SECOND)) for i in range(4)]
    proposals = [proposal(proposal_id=f"G-{i}", ts_event=T0 + SECOND) for i in range(10)]
    bad = [("TradeProposal", proposal(quantity=float("nan"))), ("MarketTick", tick(bid=-1.0))]
    raw = [(rng.choice(["TradeProposal", "MarketTick", "Instrument"]), g) for g in garbage]
    publish(settings, good)
    items = [("TradeProposal", p) for p in proposals] + bad
    rng.shuffle(items)
    publish(settings, items[:6])
    publish(settings, raw, raw=True)
    publish(settings, items[6:])

    run_to_end(settings)

    scores = consume(settings, "scores", "RiskScore", len(proposals))
    assert sorted(s["proposal_id"] for s in scores) == sorted(p["proposal_id"] for p in proposals)
    letters = consume(settings, "dlq", "DeadLetter", len(garbage) + len(bad))
    assert all(d["error_code"] and d["error_message"] for d in letters)
    assert sorted(d["payload"] or b"" for d in letters if d["source_key"] == b"raw") == sorted(
        garbage
    )
    codes = {d["error_code"] for d in letters if d["source_key"] != b"raw"}
    assert codes == {"INVALID_QUANTITY", "INVALID_PRICE"}
