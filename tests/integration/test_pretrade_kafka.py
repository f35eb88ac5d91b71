"""The pre-trade flow through the real broker and redis-server."""

from __future__ import annotations

import json

import redis

from tests.factories import SECOND, T0, execution, instrument, proposal, tick
from tests.integration.conftest import consume, publish, run_to_end


def market(n: int = 5) -> list:
    items = [
        ("Instrument", instrument()),
        (
            "Instrument",
            instrument(
                instrument_id="BOND1",
                symbol="BOND1",
                asset_class="BOND",
                face_value=10.0,
                lot_size=10.0,
            ),
        ),
    ]
    for i in range(n):
        items.append(("MarketTick", tick(ts_event=T0 + i * SECOND)))
        items.append(
            (
                "MarketTick",
                tick(
                    instrument_id="BOND1", bid=95.0, ask=95.2, last=95.1, ts_event=T0 + i * SECOND
                ),
            )
        )
    return items


def by_id(scores: list[dict]) -> dict[str, dict]:
    return {s["proposal_id"]: s for s in scores}


def test_proposals_when_scored_get_expected_decisions(settings):
    publish(settings, market(5))
    publish(
        settings,
        [
            (
                "TradeProposal",
                proposal(proposal_id="small", quantity=100, ts_event=T0 + 2 * SECOND),
            ),
            (
                "TradeProposal",
                proposal(proposal_id="big", quantity=60_000, ts_event=T0 + 2 * SECOND),
            ),
            (
                "TradeProposal",
                proposal(proposal_id="ghost", instrument_id="NOPE", ts_event=T0 + 2 * SECOND),
            ),
        ],
    )
    run_to_end(settings)
    scores = by_id(consume(settings, "scores", "RiskScore", 3))
    assert scores["small"]["decision"] == "APPROVE"
    assert scores["small"]["allowed_quantity"] == 100
    big = scores["big"]
    assert big["decision"] == "REDUCE"
    # concentration: 25% of 10M at 100.0 = 25,000 units; max order notional 5M = 50,000 units
    assert big["allowed_quantity"] == 25_000
    # 6M at the 5% proxy vol of a warming risk model adds ~490k of VaR: over the 250k budget
    hard = {r["code"] for r in big["reasons"] if r["hard"]}
    assert hard == {"CONCENTRATION", "MAX_ORDER_NOTIONAL", "VAR_BUDGET"}
    assert [s["kind"] for s in big["suggestions"]][:1] == ["REDUCE"]
    assert scores["ghost"]["decision"] == "REJECT"
    assert [r["code"] for r in scores["ghost"]["reasons"]] == ["UNKNOWN_INSTRUMENT"]


def test_malformed_record_when_consumed_goes_to_dlq_and_next_is_scored(settings):
    publish(settings, market(5))
    publish(settings, [("TradeProposal", b"\xc3\x01not avro at all")])
    publish(settings, [("TradeProposal", proposal(proposal_id="after", ts_event=T0 + 2 * SECOND))])
    run_to_end(settings)
    [letter] = consume(settings, "dlq", "DeadLetter", 1)
    assert letter["error_code"] in {"BAD_MAGIC", "UNKNOWN_SCHEMA"}
    assert letter["payload"] == b"\xc3\x01not avro at all"
    assert letter["source_topic"] == settings.topics.name("proposals")
    [score] = consume(settings, "scores", "RiskScore", 1)
    assert score["proposal_id"] == "after"


def test_executions_when_applied_leave_the_book_in_redis(settings):
    publish(settings, market(3))
    publish(
        settings,
        [
            ("Execution", execution(quantity=300, price=100.0, ts_event=T0 + SECOND)),
            (
                "Execution",
                execution(side="SELL", quantity=100, price=101.0, ts_event=T0 + 2 * SECOND),
            ),
            (
                "Execution",
                execution(instrument_id="BOND1", quantity=50, price=95.0, ts_event=T0 + 2 * SECOND),
            ),
        ],
    )
    run_to_end(settings)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    book = client.hgetall(f"{settings.redis_prefix}book:PF-1")
    assert json.loads(book["positions"]) == {"AAPL": 200.0, "BOND1": 50.0}
    assert float(book["cash"]) == 10_000_000 - 300 * 100.0 + 100 * 101.0 - 50 * 95.0 * 10.0
    inst = client.hgetall(f"{settings.redis_prefix}instrument:AAPL")
    assert float(inst["bar_close"]) == 100.0
    assert float(inst["log_return_1"]) == 0.0  # kernel features; NaN ones (warm-up) are omitted


def test_flood_of_malformed_records_when_mixed_with_good_loses_nothing(settings):
    publish(settings, market(5))
    good = [
        ("TradeProposal", proposal(proposal_id=f"good-{i}", ts_event=T0 + 2 * SECOND))
        for i in range(200)
    ]
    bad = [("TradeProposal", f"junk-{i}".encode()) for i in range(1000)]
    mixed = [item for pair in zip(bad[:200], good, strict=True) for item in pair] + bad[200:]
    publish(settings, mixed)
    run_to_end(settings)
    scores = consume(settings, "scores", "RiskScore", 200)
    assert {s["proposal_id"] for s in scores} == {f"good-{i}" for i in range(200)}
    letters = consume(settings, "dlq", "DeadLetter", 1000)
    assert sorted(int(x["payload"].split(b"-")[1]) for x in letters) == list(range(1000))


def test_foreign_client_when_reading_scores_needs_only_the_avsc(settings):
    """As the README shows: confluent-kafka, fastavro and schemas/RiskScore.avsc only."""
    import io
    import json as json_
    from pathlib import Path

    import fastavro
    from confluent_kafka import Consumer, TopicPartition

    publish(settings, market(3))
    publish(settings, [("TradeProposal", proposal(proposal_id="foreign", ts_event=T0 + SECOND))])
    run_to_end(settings)

    schema = fastavro.parse_schema(json_.loads(Path("schemas/RiskScore.avsc").read_text()))
    topic = settings.topics.name("scores")
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "foreign"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    records = []
    for _ in range(50):
        for msg in consumer.consume(10, 0.2):
            value = msg.value()
            assert value[:2] == b"\xc3\x01"  # Avro single-object encoding
            records.append(fastavro.schemaless_reader(io.BytesIO(value[10:]), schema))
        if records:
            break
    consumer.close()
    assert [r["proposal_id"] for r in records] == ["foreign"]
    assert records[0]["decision"] == "APPROVE"
