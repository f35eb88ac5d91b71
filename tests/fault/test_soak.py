"""The soak run behind the ``soak`` marker (also ``slow``): ``make soak`` or ``pytest -m soak``.

It runs ``bench.soak`` (``riskstream run`` on the embedded broker and Redis, 30 minutes at
20,000 ticks/s and 500 proposals/s, RSS and p99 per minute) and writes
``bench/results/soak.json`` and ``soak.md``. ``RISKSTREAM_SOAK_MINUTES`` shortens it.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import SoakOptions, run_soak

MINUTES = float(os.environ.get("RISKSTREAM_SOAK_MINUTES", "30"))


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60 + 600))
def test_soak_when_30_minutes_at_20k_ticks_rss_and_p99_stay_flat() -> None:
    result = run_soak(SoakOptions(minutes=MINUTES, tick_rate=20_000.0, proposal_rate=500.0))
    assert result["criteria"]["every_proposal_answered"], result
    assert result["criteria"]["rss_growth_below_5pct"], result
    assert result["criteria"]["p99_stable"], result
