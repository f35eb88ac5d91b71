"""``riskstream produce``: the simulated feed's proposal window and option checks."""

from __future__ import annotations

import argparse

import pytest

from dataflows.producer import ProduceOptions, add_produce_parser, options_from, simulated_events
from operators.errors import ConfigError

NS = 1_000_000_000
START = 1_700_000_000 * NS


def last_times(opts: ProduceOptions) -> dict[str, int]:
    """Largest ts_event per record kind of the simulated feed."""
    last: dict[str, int] = {}
    for kind, rec in simulated_events(opts, START):
        last[kind] = max(last.get(kind, 0), rec["ts_event"])
    return last


def test_simulated_events_when_given_a_quiet_tail_end_proposals_that_long_before_ticks():
    opts = ProduceOptions(tick_rate=200.0, proposal_rate=20.0, duration_s=6.0, quiet_tail_s=2.0)

    last = last_times(opts)

    assert START + 3 * NS < last["TradeProposal"] <= START + 4 * NS
    assert last["MarketTick"] > START + 5.9 * NS


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_produce_parser(parser.add_subparsers())
    return parser.parse_args(["produce", *argv])


@pytest.mark.parametrize(
    "argv",
    [("--quiet-tail", "2"), ("--duration", "5", "--quiet-tail", "-1"),
     ("--duration", "3", "--quiet-tail", "2")],
)  # fmt: skip
def test_options_when_the_quiet_tail_does_not_fit_say_what_to_fix(argv):
    with pytest.raises(ConfigError, match="--quiet-tail"):
        options_from(parse(*argv))


def test_options_when_valid_carry_the_quiet_tail():
    assert options_from(parse("--duration", "7", "--quiet-tail", "2")).quiet_tail_s == 2.0
