from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from operators.config import EngineConfig
from schemas.codec import SingleObjectCodec
from tests.factories import INPUT_KINDS, KEYS, SECOND, T0, instrument, message, proposal, tick


def test_smoke():
    msgs = [
        message("Instrument", instrument()),
        message("MarketTick", tick()),
        message("TradeProposal", proposal(quantity=10)),
        message("MarketTick", tick(ts_event=T0 + 2 * SECOND)),
        message("TradeProposal", raw=b"garbage"),
    ]
    scores, dlq, state = [], [], []
    flow = build_pretrade_flow(
        TestingSource(msgs),
        PretradeSinks(TestingSink(scores), TestingSink(dlq), TestingSink(state)),
        EngineConfig(control=KEYS),
        SingleObjectCodec(),
        INPUT_KINDS,
    )
    run_main(flow)
    print(scores, dlq, state)
    assert len(scores) == 1
    assert scores[0].record["decision"] == "APPROVE"
    assert len(dlq) == 1
