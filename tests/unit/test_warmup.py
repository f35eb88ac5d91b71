"""``warm_up``: the flow in memory over simulated data compiles the live path's kernels."""

from __future__ import annotations

import json
import subprocess
import sys

from dataflows.cli import main

LIVE_PATH = [
    "operators.kernels.bars.add_ticks",
    "operators.kernels.engine.latest_tick",
    "operators.kernels.history.insert_ticks",
    "operators.kernels.indicators.rsi_step",
    "operators.kernels.var.hist_var_update",
    "operators.kernels.volatility.ewma_replay",
    "operators.risk_model.book_moments",
    "operators.risk_model.rank1_add",
    "schemas.tick_block._decode_all",
]
"""Kernels every live run calls: ticks, bars, indicators, VaR, covariance, decisions."""

PROBE = """
import importlib, json, sys
from dataflows.app import configure_models
from dataflows.settings import Settings
from dataflows.warmup import warm_up

def kernel(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)

kernels = json.loads(sys.argv[1])
before = [k for k in kernels if kernel(k).signatures]
settings = Settings()
configure_models(settings)
ran = warm_up(settings)
after = [k for k in kernels if kernel(k).signatures]
print(json.dumps({"ran": ran, "before": before, "after": after}))
"""


def test_warm_up_runs_every_record_kind_and_compiles_the_live_kernels() -> None:
    """In a fresh process: nothing compiled before, every live-path kernel after."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(LIVE_PATH)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["before"] == []
    assert got["after"] == LIVE_PATH
    assert got["ran"]["decisions"] > 100 and got["ran"]["regime_events"] > 10
    assert got["ran"]["dead_letters"] == 0


def test_warm_up_command_reports_what_ran(capsys) -> None:
    assert main(["warm-up"]) == 0
    assert "decisions" in capsys.readouterr().out
