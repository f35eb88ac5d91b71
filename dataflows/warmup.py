"""Warm up before reading: one pass of the pre-trade flow in memory over simulated data.

Numba compiles a kernel on its first call and caches the machine code beside the source;
ONNX Runtime plans its graphs on the first call too. On a fresh install those first calls
take tens of seconds, which a live run would pay in proposals held past their wait and
decided ``stale``. ``warm_up`` runs the same flow (``build_pretrade_flow``, one worker, in
process) over a short stretch of the seeded simulated market (every record kind, bar
closes, regime and forecast inference, decisions) and discards what it produces, so that
the compiled kernels are in the cache before the first poll.

``riskstream run`` warms up in a child process (``warm_up_in_child``): the warm-up's
decisions would otherwise count in this process's metrics.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.producer import ROLE, ProduceOptions, simulated_events
from dataflows.settings import Settings
from operators.config import NS
from schemas.codec import SingleObjectCodec

log = logging.getLogger(__name__)

WARM_EVENT_S = 150.0
"""Event time simulated: enough bars for every window the features and models fill."""
WARM_TICK_RATE = 100.0
WARM_PROPOSAL_RATE = 5.0
WARM_BATCH = 256
"""Messages per source batch, as the Kafka source reads them under load."""
WARM_START_NS = 1_700_000_000 * NS
"""A fixed event time: the warm-up is the same run every time."""


def warm_messages(settings: Settings) -> list[KafkaSourceMessage]:
    """The simulated market as Kafka-like messages on the configured input topics."""
    codec = SingleObjectCodec()
    opts = ProduceOptions(
        tick_rate=WARM_TICK_RATE,
        proposal_rate=WARM_PROPOSAL_RATE,
        duration_s=WARM_EVENT_S,
        realtime=False,
    )
    offsets = itertools.count()
    return [
        KafkaSourceMessage(
            key=None,
            value=codec.encode(kind, record),
            topic=settings.topics.name(ROLE[kind]),
            partition=0,
            offset=next(offsets),
            timestamp=(1, record["ts_event"] // 1_000_000),
        )
        for kind, record in simulated_events(opts, WARM_START_NS)
    ]


def warm_up(settings: Settings) -> dict[str, Any]:
    """Run the flow over ``warm_messages`` and drop its output; what ran and how long."""
    from dataflows.pretrade import PretradeSinks, build_pretrade_flow

    started = time.perf_counter()
    messages = warm_messages(settings)
    outputs: dict[str, list[Any]] = {k: [] for k in ("scores", "letters", "state", "regimes")}
    sinks = PretradeSinks(
        scores=TestingSink(outputs["scores"]),
        dead_letters=TestingSink(outputs["letters"]),
        state=TestingSink(outputs["state"]),
        regimes=TestingSink(outputs["regimes"]),
    )
    config = replace(settings.engine_config(), recoverable=False)
    flow = build_pretrade_flow(
        TestingSource(messages, batch_size=WARM_BATCH),
        sinks,
        config,
        SingleObjectCodec(),
        settings.topics.input_kinds(),
    )
    run_main(flow)
    return {
        "messages": len(messages),
        "decisions": len(outputs["scores"]),
        "regime_events": len(outputs["regimes"]),
        "dead_letters": len(outputs["letters"]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def warm_up_in_child(timeout_s: float = 600.0) -> bool:
    """``riskstream warm-up`` in a child process (same environment); False if it failed.

    A failed warm-up only costs speed (kernels compile on first use), so it is logged,
    not raised.
    """
    started = time.perf_counter()
    argv = [sys.executable, "-m", "dataflows.cli", "warm-up"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("warm-up took over %.0f s; going on without it", timeout_s)
        return False
    if done.returncode != 0:
        log.warning("warm-up failed (exit %d): %s", done.returncode, done.stderr[-2000:])
        return False
    log.info("warmed up in %.1f s: %s", time.perf_counter() - started, done.stdout.strip())
    return True
