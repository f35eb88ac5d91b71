"""Running the whole pre-trade flow in memory over Kafka-like messages (tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from operators.config import EngineConfig
from schemas.codec import Codec, SingleObjectCodec
from tests.factories import INPUT_KINDS, KEYS

CONFIG = EngineConfig(control=KEYS)


@dataclass
class FlowResult:
    """What the flow produced: RiskScore records and DeadLetter records."""

    scores: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)

    def letters_at(self, offset: int) -> list[dict[str, Any]]:
        """Dead letters of the input message at ``offset``."""
        return [d for d in self.letters if d["source_offset"] == offset]

    def scores_at(self, offset: int) -> list[dict[str, Any]]:
        """Answers to the proposal message at ``offset``."""
        return [s for s in self.scores if s["source_offset"] == offset]


def run_flow(
    msgs: list[KafkaSourceMessage], codec: Codec | None = None, config: EngineConfig = CONFIG
) -> FlowResult:
    """Run ``build_pretrade_flow`` to the end of ``msgs``; raises if the flow crashes."""
    scores: list[Any] = []
    dlq: list[Any] = []
    state: list[Any] = []
    flow = build_pretrade_flow(
        TestingSource(msgs),
        PretradeSinks(TestingSink(scores), TestingSink(dlq), TestingSink(state)),
        config,
        codec or SingleObjectCodec(),
        INPUT_KINDS,
    )
    run_main(flow)
    return FlowResult([d.record for d in scores], [d.record for d in dlq])
