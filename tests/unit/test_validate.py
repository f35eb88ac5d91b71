"""Validation tables: each bad input record -> the reason code it must raise."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from operators.errors import InvalidRecord
from operators.validate import validate
from tests.factories import control, execution, instrument, proposal, tick

NAN, INF = math.nan, math.inf


def ns(*ymd_hms: int) -> int:
    return int(datetime(*ymd_hms, tzinfo=UTC).timestamp()) * 1_000_000_000


Y1980 = ns(1980, 1, 1)
Y2100 = ns(2100, 1, 1)

VALID_ROWS = [
    pytest.param("MarketTick", tick(), id="tick"),
    pytest.param("MarketTick", tick(bid=100.0, ask=100.0), id="tick-locked-quote"),
    pytest.param("MarketTick", tick(size=0.0), id="tick-zero-size"),
    pytest.param("MarketTick", tick(**{"yield": 0.0425}), id="tick-with-yield"),
    pytest.param("MarketTick", tick(**{"yield": -0.005}), id="tick-negative-yield"),
    pytest.param("MarketTick", tick(ts_event=Y1980), id="tick-at-1980"),
    pytest.param("MarketTick", tick(ts_event=Y2100 - 1), id="tick-just-before-2100"),
    pytest.param("MarketTick", tick(instrument_id="X" * 256), id="tick-256-char-id"),
    pytest.param("Instrument", instrument(), id="instrument"),
    pytest.param("Instrument", instrument(adv=0.0), id="instrument-adv-unknown"),
    pytest.param("Instrument", instrument(coupon=0.05, face_value=0.01), id="bond"),
    pytest.param("TradeProposal", proposal(), id="proposal-market-order"),
    pytest.param("TradeProposal", proposal(limit_price=101.5), id="proposal-limit"),
    pytest.param("Execution", execution(), id="execution"),
    pytest.param("ControlCommand", control(), id="control-global-halt"),
    pytest.param(
        "ControlCommand",
        control(action="SET_LIMIT", limit_name="concentration", limit_value=0.2),
        id="control-set-limit",
    ),
]


@pytest.mark.parametrize(("kind", "record"), VALID_ROWS)
def test_validate_when_record_is_valid_returns_none(kind, record):
    assert validate(kind, record) is None


INVALID_ROWS = [
    # prices
    *(
        pytest.param("MarketTick", tick(**{f: v}), "INVALID_PRICE", id=f"tick-{f}-{v}")
        for f in ("bid", "ask", "last")
        for v in (NAN, INF, -INF, 0.0, -1.0)
        if not (f == "bid" and v in (INF,))  # bid=inf is also a crossed quote
    ),
    pytest.param("MarketTick", tick(bid=100.02, ask=100.01), "CROSSED_QUOTE", id="tick-crossed"),
    pytest.param("MarketTick", tick(bid=101.0, ask=99.0), "CROSSED_QUOTE", id="tick-crossed-wide"),
    pytest.param("MarketTick", tick(size=NAN), "INVALID_QUANTITY", id="tick-size-nan"),
    pytest.param("MarketTick", tick(size=INF), "INVALID_QUANTITY", id="tick-size-inf"),
    pytest.param("MarketTick", tick(size=-1.0), "INVALID_QUANTITY", id="tick-size-negative"),
    pytest.param("MarketTick", tick(**{"yield": NAN}), "INVALID_YIELD", id="tick-yield-nan"),
    pytest.param("MarketTick", tick(**{"yield": INF}), "INVALID_YIELD", id="tick-yield-inf"),
    # timestamps
    pytest.param("MarketTick", tick(ts_event=Y1980 - 1), "INVALID_TIMESTAMP", id="ts-1979"),
    pytest.param("MarketTick", tick(ts_event=Y2100), "INVALID_TIMESTAMP", id="ts-2100"),
    pytest.param("MarketTick", tick(ts_event=0), "INVALID_TIMESTAMP", id="ts-epoch"),
    pytest.param("MarketTick", tick(ts_event=-1), "INVALID_TIMESTAMP", id="ts-negative"),
    pytest.param(
        "MarketTick",
        tick(ts_event=1_767_225_600_000),
        "INVALID_TIMESTAMP",
        id="ts-in-milliseconds",
    ),
    pytest.param(
        "TradeProposal", proposal(ts_event=ns(2150, 1, 1)), "INVALID_TIMESTAMP", id="ts-2150"
    ),
    pytest.param(
        "Execution", execution(ts_event=ns(1979, 12, 31)), "INVALID_TIMESTAMP", id="ex-ts"
    ),
    pytest.param("Instrument", instrument(ts_event=0), "INVALID_TIMESTAMP", id="ref-ts"),
    pytest.param("ControlCommand", control(ts_event=0), "INVALID_TIMESTAMP", id="ctl-ts"),
    # ids
    pytest.param("MarketTick", tick(instrument_id=""), "INVALID_ID", id="tick-empty-id"),
    pytest.param("MarketTick", tick(instrument_id="X" * 257), "INVALID_ID", id="tick-long-id"),
    pytest.param("Instrument", instrument(symbol=""), "INVALID_ID", id="ref-empty-symbol"),
    pytest.param("TradeProposal", proposal(proposal_id=""), "INVALID_ID", id="prop-empty-id"),
    pytest.param("TradeProposal", proposal(portfolio_id=""), "INVALID_ID", id="prop-empty-pf"),
    pytest.param(
        "TradeProposal", proposal(instrument_id="I" * 1000), "INVALID_ID", id="prop-long-inst"
    ),
    pytest.param("Execution", execution(execution_id=""), "INVALID_ID", id="ex-empty-id"),
    pytest.param("Execution", execution(portfolio_id="P" * 257), "INVALID_ID", id="ex-long-pf"),
    pytest.param("ControlCommand", control(command_id=""), "INVALID_ID", id="ctl-empty-id"),
    pytest.param("ControlCommand", control(nonce=""), "INVALID_ID", id="ctl-empty-nonce"),
    # quantities and prices of proposals and executions
    *(
        pytest.param("TradeProposal", proposal(quantity=v), "INVALID_QUANTITY", id=f"prop-qty-{v}")
        for v in (NAN, INF, 0.0, -100.0)
    ),
    *(
        pytest.param("TradeProposal", proposal(limit_price=v), "INVALID_PRICE", id=f"prop-px-{v}")
        for v in (NAN, INF, 0.0, -1.0)
    ),
    *(
        pytest.param("Execution", execution(quantity=v), "INVALID_QUANTITY", id=f"ex-qty-{v}")
        for v in (NAN, INF, 0.0, -1.0)
    ),
    *(
        pytest.param("Execution", execution(price=v), "INVALID_PRICE", id=f"ex-px-{v}")
        for v in (NAN, INF, 0.0, -1.0)
    ),
    # reference data
    *(
        pytest.param("Instrument", instrument(lot_size=v), "INVALID_LOT_SIZE", id=f"lot-{v}")
        for v in (NAN, INF, 0.0, -1.0)
    ),
    *(
        pytest.param("Instrument", instrument(face_value=v), "INVALID_FACE_VALUE", id=f"face-{v}")
        for v in (NAN, INF, 0.0, -1.0)
    ),
    *(
        pytest.param("Instrument", instrument(adv=v), "INVALID_ADV", id=f"adv-{v}")
        for v in (NAN, INF, -1.0)
    ),
    pytest.param("Instrument", instrument(coupon=NAN), "INVALID_COUPON", id="coupon-nan"),
    pytest.param("Instrument", instrument(coupon=INF), "INVALID_COUPON", id="coupon-inf"),
    # control commands
    pytest.param(
        "ControlCommand",
        control(scope="PORTFOLIO", target=""),
        "INVALID_CONTROL",
        id="ctl-portfolio-without-target",
    ),
    pytest.param(
        "ControlCommand",
        control(scope="INSTRUMENT", target=""),
        "INVALID_CONTROL",
        id="ctl-instrument-without-target",
    ),
    pytest.param(
        "ControlCommand",
        control(action="SET_LIMIT", limit_name=None, limit_value=0.2),
        "INVALID_CONTROL",
        id="ctl-set-limit-without-name",
    ),
    pytest.param(
        "ControlCommand",
        control(action="SET_LIMIT", limit_name="concentration", limit_value=None),
        "INVALID_CONTROL",
        id="ctl-set-limit-without-value",
    ),
]


@pytest.mark.parametrize(("kind", "record", "code"), INVALID_ROWS)
def test_validate_when_record_breaks_a_rule_raises_its_reason_code(kind, record, code):
    with pytest.raises(InvalidRecord) as err:
        validate(kind, record)
    assert err.value.code == code


def test_validate_when_message_written_names_the_offending_value():
    with pytest.raises(InvalidRecord) as err:
        validate("TradeProposal", proposal(quantity=-42.5))
    assert "quantity" in str(err.value)
    assert "-42.5" in str(err.value)
