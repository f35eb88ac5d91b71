"""``riskstream diff``: matching decisions by proposal id and naming every differing field."""

from __future__ import annotations

import argparse
import json
import math

import fastavro
import pytest

from dataflows.diff import (
    cmd_diff,
    compare,
    field_diffs,
    parse_source,
    read_file,
)
from operators.errors import ConfigError
from schemas.codec import load_schema


def score(**kw):
    rec = {
        "proposal_id": "P-1",
        "portfolio_id": "PF-1",
        "instrument_id": "AAPL",
        "side": "BUY",
        "requested_quantity": 100.0,
        "decision": "APPROVE",
        "allowed_quantity": 100.0,
        "score": 12.5,
        "band": "LOW",
        "reasons": [],
        "factors": [{"name": "concentration", "value": 0.1, "contribution": 3.5}],
        "trading_state": "ACTIVE",
        "regime": None,
        "var_before": 1000.0,
        "var_after": 1100.0,
        "price": 100.0,
        "features": {"mid": 100.0, "daily_vol": 0.01},
        "model_versions": {},
        "stale": False,
        "source_topic": "trade.proposals",
        "source_partition": 0,
        "source_offset": 7,
        "ts_event": 1_767_225_600_000_000_000,
        "ts_decided": 1_767_225_600_100_000_000,
        "latency_us": 120.0,
    }
    return rec | kw


def test_compare_when_only_wall_clock_fields_differ_reports_no_mismatch():
    a = [score(), score(proposal_id="P-2")]
    b = [score(proposal_id="P-2", ts_decided=5, latency_us=9.0), score(ts_decided=1)]

    report = compare(a, b)

    assert report.ok
    assert report.compared == 2
    assert "0 mismatches" in report.summary()


def test_compare_when_a_decision_differs_names_the_proposal_and_every_field():
    a = [score()]
    b = [
        score(decision="REDUCE", allowed_quantity=50.0, features={"mid": 100.5, "daily_vol": 0.01})
    ]

    report = compare(a, b)

    [m] = report.mismatches
    assert m.proposal_id == "P-1"
    assert m.kind == "differs"
    assert m.field_names == ["allowed_quantity", "decision", "features.mid"]
    assert "P-1" in m.text() and "decision: 'APPROVE' != 'REDUCE'" in m.text()


def test_compare_when_nested_lists_differ_reports_indexed_paths():
    r1 = {"code": "CONCENTRATION", "message": "m", "value": 0.3, "limit": 0.25, "hard": True}
    r2 = r1 | {"value": 0.31}

    [m] = compare([score(reasons=[r1])], [score(reasons=[r2])]).mismatches
    [n] = compare([score(reasons=[r1])], [score(reasons=[r1, r2])]).mismatches

    assert m.field_names == ["reasons[0].value"]
    assert n.field_names == ["reasons"]


def test_compare_when_records_are_missing_or_repeated_reports_each():
    a = [score(proposal_id="P-1"), score(proposal_id="P-2"), score(proposal_id="P-2")]
    b = [score(proposal_id="P-1"), score(proposal_id="P-3", stale=True)]

    report = compare(a, b)

    kinds = sorted((m.kind, m.proposal_id) for m in report.mismatches)
    assert kinds == [("duplicate_in_a", "P-2"), ("only_in_a", "P-2"), ("only_in_b", "P-3")]
    assert next(m for m in report.mismatches if m.kind == "only_in_b").b_stale
    assert report.counts() == {"only_in_a": 1, "only_in_b": 1, "duplicate_in_a": 1}


def test_compare_when_stale_differs_flags_the_stale_side():
    [m] = compare([score(stale=True, var_before=1.0)], [score(var_before=2.0)]).mismatches

    assert m.a_stale and not m.b_stale
    assert "[A stale]" in m.text()
    assert set(m.field_names) == {"stale", "var_before"}


def test_compare_when_fields_are_ignored_skips_them_and_what_is_inside():
    a, b = [score(stale=True, features={"mid": 1.0})], [score(features={"mid": 2.0})]

    report = compare(a, b, ignore=("ts_decided", "latency_us", "stale", "features.mid"))

    assert report.ok
    assert report.ignored == ("ts_decided", "latency_us", "stale", "features.mid")


@pytest.mark.parametrize(
    "a,b,same",
    [
        (1.0, 1.0, True),
        (0.1 + 0.2, 0.3, False),  # exact by default: replays are bit-identical
        (math.nan, math.nan, True),
        (0.0, -0.0, False),
        (1, 1.0, False),  # an int where a double was written is a schema change
        (None, None, True),
        ({"x": [1.0, {"y": "z"}]}, {"x": [1.0, {"y": "z"}]}, True),
    ],
)
def test_field_diffs_when_comparing_values_is_exact(a, b, same):
    assert (field_diffs(a, b) == []) is same


def test_field_diffs_when_tolerances_are_given_allows_small_float_differences():
    assert field_diffs(0.1 + 0.2, 0.3, rel_tol=1e-12) == []
    assert field_diffs(1.0, 1.1, rel_tol=1e-3) != []


def test_compare_when_a_record_has_no_proposal_id_raises():
    with pytest.raises(ConfigError, match="proposal_id"):
        compare([{"decision": "APPROVE"}], [])


def test_report_when_serialised_lists_every_mismatch_with_fields():
    report = compare([score()], [score(score=13.0)])

    data = json.loads(json.dumps(report.to_dict(), default=repr))

    assert data["mismatch_count"] == 1
    [m] = data["mismatches"]
    assert m["proposal_id"] == "P-1"
    assert m["field_names"] == ["score"]
    assert m["fields"][0]["a"] == 12.5 and m["fields"][0]["b"] == 13.0


@pytest.mark.parametrize(
    "text,kind,name",
    [
        ("topic:risk.scores", "topic", "risk.scores"),
        ("file:/x/y.avro", "file", "/x/y.avro"),
        ("replay.avro", "file", "replay.avro"),
        ("risk.scores", "topic", "risk.scores"),
    ],
)
def test_parse_source_when_given_text_picks_topic_or_file(text, kind, name):
    source = parse_source(text)
    assert (source.kind, source.name) == (kind, name)


def write_scores(path, records):
    with path.open("wb") as fo:
        fastavro.writer(fo, load_schema("RiskScore"), records)


def diff_args(a, b, json_path=None):
    return argparse.Namespace(
        a=str(a), b=str(b), ignore=None, rel_tol=0.0, abs_tol=0.0, max_shown=None, json=json_path
    )


def test_cmd_diff_when_files_match_exits_0_and_prints_the_summary(tmp_path, capsys):
    a, b = tmp_path / "a.avro", tmp_path / "b.avro"
    write_scores(a, [score(), score(proposal_id="P-2")])
    write_scores(b, [score(proposal_id="P-2", ts_decided=9), score()])

    code = cmd_diff(diff_args(a, b), None)

    out = capsys.readouterr().out
    assert code == 0
    assert "2 compared, 0 mismatches" in out
    assert [r["proposal_id"] for r in read_file(str(a))] == ["P-1", "P-2"]


def test_cmd_diff_when_files_differ_exits_1_and_lists_every_mismatch(tmp_path, capsys):
    a, b, out_json = tmp_path / "a.avro", tmp_path / "b.avro", tmp_path / "d.json"
    write_scores(a, [score(), score(proposal_id="P-2")])
    write_scores(b, [score(decision="REJECT", allowed_quantity=0.0), score(proposal_id="P-3")])

    code = cmd_diff(diff_args(a, b, out_json), None)

    out = capsys.readouterr().out
    assert code == 1
    assert (
        "DIFFERS         P-1: allowed_quantity: 100.0 != 0.0; decision: 'APPROVE' != 'REJECT'"
        in out
    )
    assert "ONLY_IN_A       P-2" in out and "ONLY_IN_B       P-3" in out
    assert json.loads(out_json.read_text())["mismatch_count"] == 3


def test_read_file_when_missing_or_not_avro_raises_a_clear_error(tmp_path):
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"not avro at all")

    with pytest.raises(ConfigError, match="no such file"):
        list(read_file(str(tmp_path / "nope.avro")))
    with pytest.raises(ConfigError, match="not an Avro container file"):
        list(read_file(str(junk)))
