"""The production flow: the pre-trade dataflow between Kafka and Redis, from settings."""

from __future__ import annotations

import threading
from dataclasses import replace

from bytewax.dataflow import Dataflow

from dataflows.kafka_io import RecordSink, StoppableSource, consumer_config, producer_config
from dataflows.kafka_source import RiskSource, list_partitions
from dataflows.pretrade import PretradeSinks, build_pretrade_flow
from dataflows.redis_sink import RedisStateSink
from dataflows.settings import Settings
from operators.errors import ConfigError
from operators.market import RegimeOut
from operators.records import AutoControl, DeadLetterItem, Decided
from operators.routing import count_dead_letters, count_decisions
from schemas.codec import Codec, make_codec


def codec_for(settings: Settings) -> Codec:
    """Registry framing when a registry URL is set, else single-object encoding."""
    conf = {k: v.get_secret_value() for k, v in settings.schema_registry_config.items()}
    url = settings.schema_registry_url
    return make_codec(url.get_secret_value() if url else None, conf)


def _score_key(d: Decided) -> bytes:
    return str(d.record["portfolio_id"]).encode()


def _control_key(c: AutoControl) -> bytes:
    return str(c.record["target"]).encode()


def _regime_key(r: RegimeOut) -> bytes:
    return str(r.record["scope"]).encode()


def _letter_key(d: DeadLetterItem) -> bytes | None:
    key = d.record["source_key"]
    return key if isinstance(key, bytes) else None


def kafka_flow(
    settings: Settings,
    *,
    from_end: bool = False,
    tail: bool = True,
    wait_for_data: bool = False,
    stop: threading.Event | None = None,
) -> Dataflow:
    """The pre-trade flow reading and writing the configured topics and Redis.

    Setting ``stop`` ends the input, and the flow finishes after flushing its sinks.
    """
    if not settings.brokers:
        raise ConfigError("RISKSTREAM_KAFKA_BOOTSTRAP is not set (riskstream demo starts a broker)")
    if settings.redis_url is None:
        raise ConfigError("RISKSTREAM_REDIS_URL is not set (riskstream demo starts a redis-server)")
    codec = codec_for(settings)
    topics = settings.topics
    conf = producer_config(settings)
    sinks = PretradeSinks(
        scores=RecordSink(
            conf,
            topics.name("scores"),
            "RiskScore",
            codec,
            lambda d: d.record,
            _score_key,
            count_decisions,
        ),
        dead_letters=RecordSink(
            conf,
            topics.name("dlq"),
            "DeadLetter",
            codec,
            lambda d: d.record,
            _letter_key,
            count_dead_letters,
        ),
        state=RedisStateSink(settings.redis_url.get_secret_value(), settings.redis_prefix),
        regimes=RecordSink(
            conf, topics.name("regimes"), "RegimeEvent", codec, lambda r: r.record, _regime_key
        ),
        controls=RecordSink(
            conf, topics.name("control"), "ControlCommand", codec, lambda c: c.record, _control_key
        ),
    )
    consumer = consumer_config(settings)
    fenced = [topics.name("control"), topics.name("executions")]
    config = replace(
        settings.engine_config(wait_for_data=wait_for_data),
        fence=tuple(list_partitions(consumer, fenced)),
    )
    source = RiskSource(
        consumer, list(topics.input_kinds()), from_end=from_end, tail=tail,
        batch_size=settings.batch_size,
    )  # fmt: skip
    return build_pretrade_flow(
        source if stop is None else StoppableSource(source, stop),
        sinks,
        config,
        codec,
        topics.input_kinds(),
    )
