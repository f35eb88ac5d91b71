"""Codec tables: record -> exact bytes, bad bytes -> error code, schema evolution, registry.

Expected bytes are built independently of ``schemas.codec``: a tiny Avro binary encoder
for primitives, a tiny parsing-canonical-form writer and a bit-by-bit Rabin CRC-64-AVRO.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest

from operators.config import EngineConfig
from operators.errors import CodecError
from operators.ingest import parse_batch
from operators.records import DeadLetterItem, Inbound, TickBatch
from schemas.codec import RegistryCodec, SingleObjectCodec, crc64_avro, fingerprint
from tests.factories import (
    INPUT_KINDS,
    SECOND,
    T0,
    control,
    execution,
    instrument,
    message,
    proposal,
    tick,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))
EXPECTED_RECORDS = {
    "MarketTick",
    "Instrument",
    "TradeProposal",
    "Execution",
    "ControlCommand",
    "RiskScore",
    "RegimeEvent",
    "DeadLetter",
}

# --- independent reference implementations -------------------------------------------

_EMPTY64 = 0xC15D213AA4D7A795
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def rabin64(data: bytes) -> int:
    """CRC-64-AVRO, bit by bit (no table), straight from the Avro specification."""
    fp = _EMPTY64
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
    return fp


def pcf(schema: Any, namespace: str = "", seen: set[str] | None = None) -> str:
    """Avro Parsing Canonical Form (PRIMITIVES, FULLNAMES, STRIP, ORDER, WHITESPACE)."""
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return json.dumps(schema)
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return json.dumps(full)
    if isinstance(schema, list):
        return "[" + ",".join(pcf(s, namespace, seen) for s in schema) + "]"
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return json.dumps(kind)
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        if "." in name:
            full, namespace = name, name.rsplit(".", 1)[0]
        else:
            namespace = schema.get("namespace", namespace)
            full = f"{namespace}.{name}" if namespace else name
        if full in seen:
            return json.dumps(full)
        seen.add(full)
        parts = [f'"name":{json.dumps(full)}', f'"type":"{kind}"']
        if kind == "record":
            fields = ",".join(
                '{"name":'
                + json.dumps(f["name"])
                + ',"type":'
                + pcf(f["type"], namespace, seen)
                + "}"
                for f in schema["fields"]
            )
            parts.append(f'"fields":[{fields}]')
        elif kind == "enum":
            parts.append('"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")))
        else:
            parts.append(f'"size":{schema["size"]}')
        return "{" + ",".join(parts) + "}"
    if kind == "array":
        return '{"type":"array","items":' + pcf(schema["items"], namespace, seen) + "}"
    if kind == "map":
        return '{"type":"map","values":' + pcf(schema["values"], namespace, seen) + "}"
    raise AssertionError(f"unexpected schema {schema!r}")


def raw_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def header(schema_json: dict[str, Any]) -> bytes:
    return b"\xc3\x01" + struct.pack("<Q", rabin64(pcf(schema_json).encode()))


def zz(n: int) -> bytes:
    """Avro long/int: zig-zag then little-endian base-128 varint."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = u & 0x7F
        u >>= 7
        if u:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s(text: str) -> bytes:
    raw = text.encode()
    return zz(len(raw)) + raw


def d(x: float) -> bytes:
    return struct.pack("<d", x)


def null() -> bytes:
    return zz(0)  # union branch 0 = null


def some(body: bytes) -> bytes:
    return zz(1) + body  # union branch 1


def fastavro_body(name: str, record: dict[str, Any], schema_json: dict[str, Any] | None = None):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema_json or raw_schema(name)), record)
    return buf.getvalue()


# --- reference implementations are themselves right ------------------------------------


def test_rabin64_when_given_canonical_null_matches_avro_spec_constant():
    assert rabin64(b'"null"') == 0x63DD24E7CC258F8A == 7195948357588979594


def test_crc64_avro_when_given_canonical_null_matches_avro_spec_constant():
    assert crc64_avro(b'"null"') == 7195948357588979594


@pytest.mark.parametrize("data", [b"", b"a", b'{"type":"int"}', bytes(range(256))])
def test_crc64_avro_when_given_any_bytes_matches_bitwise_rabin(data):
    assert crc64_avro(data) == rabin64(data)


def test_zz_when_given_known_values_matches_avro_spec_examples():
    # From the Avro specification's zig-zag table.
    assert [zz(n) for n in (0, -1, 1, -2, 2, -64, 64)] == [
        b"\x00",
        b"\x01",
        b"\x02",
        b"\x03",
        b"\x04",
        b"\x7f",
        b"\x80\x01",
    ]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_fingerprint_when_given_each_schema_equals_rabin_of_independent_canonical_form(path):
    schema = json.loads(path.read_text())
    expected = struct.pack("<Q", rabin64(pcf(schema).encode()))
    assert fingerprint(fastavro.parse_schema(schema)) == expected


# --- record -> exact bytes --------------------------------------------------------------

_EXEC = execution(
    execution_id="E1",
    portfolio_id="PF",
    instrument_id="X",
    side="SELL",
    quantity=2.0,
    price=3.5,
    proposal_id=None,
    ts_event=1,
)
_TICK = tick(instrument_id="A", ts_event=T0, bid=99.5, ask=100.5, last=100.0, size=7.0)
_TICK_BOND = tick(instrument_id="UST10", venue="TW", **{"yield": 0.0425})
_PROP = proposal(
    proposal_id="P-9",
    portfolio_id="PF-1",
    instrument_id="AAPL",
    side="BUY",
    quantity=100.0,
    limit_price=101.25,
    strategy="mm",
    ts_event=T0 + SECOND,
)
_CTRL = control(
    command_id="C-1",
    action="SET_LIMIT",
    scope="PORTFOLIO",
    target="PF-1",
    limit_name="concentration",
    limit_value=0.2,
    nonce="n-1",
    ts_event=T0,
)
_INST = instrument()
_DEAD = {
    "source_topic": "market.ticks",
    "source_partition": 3,
    "source_offset": 42,
    "source_key": b"AAPL",
    "payload": b"\x00\xff garbage",
    "error_code": "DECODE_ERROR",
    "error_message": "parse: bad",
    "step": "parse",
    "ts_event": None,
    "ts_failed": T0,
}

ENCODE_ROWS = [
    pytest.param(
        "Execution",
        _EXEC,
        header(raw_schema("Execution"))
        + s("E1")
        + s("PF")
        + s("X")
        + zz(1)  # SELL is symbol 1
        + d(2.0)
        + d(3.5)
        + null()
        + zz(1),
        id="execution-by-hand",
    ),
    pytest.param(
        "MarketTick",
        _TICK,
        header(raw_schema("MarketTick"))
        + s("A")
        + zz(T0)
        + d(99.5)
        + d(100.5)
        + d(100.0)
        + d(7.0)
        + null()
        + null(),
        id="tick-by-hand",
    ),
    pytest.param(
        "MarketTick",
        _TICK_BOND,
        header(raw_schema("MarketTick"))
        + s("UST10")
        + zz(T0)
        + d(99.99)
        + d(100.01)
        + d(100.0)
        + d(100.0)
        + some(d(0.0425))
        + some(s("TW")),
        id="bond-tick-with-yield-by-hand",
    ),
    pytest.param(
        "TradeProposal",
        _PROP,
        header(raw_schema("TradeProposal"))
        + s("P-9")
        + s("PF-1")
        + s("AAPL")
        + zz(0)
        + d(100.0)
        + some(d(101.25))
        + some(s("mm"))
        + zz(T0 + SECOND),
        id="proposal-by-hand",
    ),
    pytest.param(
        "ControlCommand",
        _CTRL,
        header(raw_schema("ControlCommand"))
        + s("C-1")
        + zz(3)  # SET_LIMIT
        + zz(1)  # PORTFOLIO
        + s("PF-1")
        + some(s("concentration"))
        + some(d(0.2))
        + s("risk-officer")
        + s("test")
        + s("n-1")
        + s("default")
        + s(_CTRL["signature"])
        + zz(T0),
        id="control-by-hand",
    ),
    pytest.param(
        "Instrument",
        _INST,
        header(raw_schema("Instrument")) + fastavro_body("Instrument", _INST),
        id="instrument-fastavro-body",
    ),
    pytest.param(
        "DeadLetter",
        _DEAD,
        header(raw_schema("DeadLetter")) + fastavro_body("DeadLetter", _DEAD),
        id="dead-letter-fastavro-body",
    ),
]


@pytest.mark.parametrize(("name", "record", "expected"), ENCODE_ROWS)
def test_encode_when_given_valid_record_produces_exact_single_object_bytes(name, record, expected):
    assert SingleObjectCodec().encode(name, record) == expected


@pytest.mark.parametrize(("name", "record", "data"), ENCODE_ROWS)
def test_decode_when_given_exact_bytes_returns_the_record(name, record, data):
    assert SingleObjectCodec().decode(name, data) == record


def test_encode_when_record_breaks_schema_raises_encode_error():
    with pytest.raises(CodecError) as err:
        SingleObjectCodec().encode("MarketTick", tick(bid="not a number"))
    assert err.value.code == "ENCODE_ERROR"


def test_encode_when_record_name_unknown_raises_unknown_record():
    with pytest.raises(CodecError) as err:
        SingleObjectCodec().encode("Nope", {})
    assert err.value.code == "UNKNOWN_RECORD"


# --- bad bytes -> error code --------------------------------------------------------------

_TICK_BYTES = ENCODE_ROWS[1].values[2]
_PROP_BYTES = ENCODE_ROWS[3].values[2]

DECODE_ERROR_ROWS = [
    pytest.param("TradeProposal", b"", "EMPTY_PAYLOAD", id="empty"),
    pytest.param("TradeProposal", None, "EMPTY_PAYLOAD", id="none"),
    pytest.param("TradeProposal", b"\x00\x01" + _PROP_BYTES[2:], "BAD_MAGIC", id="wrong-magic"),
    pytest.param("TradeProposal", b"{}", "BAD_MAGIC", id="json"),
    pytest.param("TradeProposal", _PROP_BYTES[:6], "BAD_MAGIC", id="truncated-header"),
    pytest.param("TradeProposal", b"\xc3\x01", "BAD_MAGIC", id="magic-only"),
    pytest.param(
        "TradeProposal",
        b"\xc3\x01" + b"\x01" * 8 + _PROP_BYTES[10:],
        "UNKNOWN_SCHEMA",
        id="unknown-fingerprint",
    ),
    pytest.param("TradeProposal", _PROP_BYTES[:10], "DECODE_ERROR", id="header-no-body"),
    pytest.param("TradeProposal", _PROP_BYTES[:-3], "DECODE_ERROR", id="truncated-body"),
    pytest.param("TradeProposal", _PROP_BYTES + b"\x00", "DECODE_ERROR", id="trailing-byte"),
    pytest.param("TradeProposal", _PROP_BYTES + b"junk", "DECODE_ERROR", id="trailing-bytes"),
    pytest.param(
        "TradeProposal",
        _PROP_BYTES[:10] + s("P") + s("PF") + s("X") + zz(7),
        "DECODE_ERROR",
        id="enum-index-out-of-range",
    ),
    pytest.param("TradeProposal", _TICK_BYTES, "WRONG_RECORD", id="tick-as-proposal"),
    pytest.param("MarketTick", _PROP_BYTES, "WRONG_RECORD", id="proposal-as-tick"),
]


@pytest.mark.parametrize(("name", "data", "code"), DECODE_ERROR_ROWS)
def test_decode_when_given_bad_bytes_raises_codec_error_with_code(name, data, code):
    with pytest.raises(CodecError) as err:
        SingleObjectCodec().decode(name, data)
    assert err.value.code == code


def parse(msgs: list[Any]) -> list[Any]:
    """parse_batch's records, tick batches and dead letters (progress markers left out)."""
    out = parse_batch(msgs, INPUT_KINDS, SingleObjectCodec(), EngineConfig())
    return [o for o in out if isinstance(o, Inbound | DeadLetterItem | TickBatch)]


@pytest.mark.parametrize(("name", "data", "code"), DECODE_ERROR_ROWS)
def test_parse_batch_when_given_bad_bytes_yields_dead_letter_with_original_bytes(name, data, code):
    msg = message(name, raw=data if data is not None else b"")
    msg = type(msg)(
        key=b"k", value=data, topic=msg.topic, partition=2, offset=77, timestamp=msg.timestamp
    )

    [out] = parse([msg])

    assert isinstance(out, DeadLetterItem)
    letter = out.record
    assert letter["error_code"] == code
    assert letter["payload"] == data
    assert letter["source_key"] == b"k"
    assert (letter["source_partition"], letter["source_offset"]) == (2, 77)
    assert letter["step"] == "parse"


def test_parse_batch_when_record_invalid_yields_dead_letter_with_ts_event():
    msg = message("MarketTick", tick(bid=float("nan")))

    [out] = parse([msg])

    assert isinstance(out, DeadLetterItem)
    assert out.record["error_code"] == "INVALID_PRICE"
    assert out.record["ts_event"] == T0
    assert out.record["payload"] == msg.value


def test_parse_batch_when_topic_unknown_yields_unknown_topic_dead_letter():
    good = message("MarketTick", tick())
    msg = type(good)(
        key=None, value=good.value, topic="other", partition=0, offset=1, timestamp=good.timestamp
    )

    [out] = parse([msg])

    assert isinstance(out, DeadLetterItem)
    assert out.record["error_code"] == "UNKNOWN_TOPIC"


def test_parse_batch_when_mixed_batch_keeps_order_and_groups_ticks_by_instrument():
    msgs = [
        message("MarketTick", tick()),
        message("TradeProposal", raw=b"garbage"),
        message("TradeProposal", proposal(proposal_id="P-ok")),
        message("Execution", execution(execution_id="E-ok")),
        message("Execution", raw=b"\xc3\x01"),
    ]

    out = parse(msgs)

    # ticks travel as one TickBatch per instrument, after the other records of the batch
    assert [type(o) for o in out] == [DeadLetterItem, Inbound, Inbound, DeadLetterItem, TickBatch]
    assert out[1].record["proposal_id"] == "P-ok"
    assert out[1].raw == msgs[2].value
    assert out[2].record["execution_id"] == "E-ok"
    assert out[3].record["payload"] == b"\xc3\x01"
    t, batch = tick(), out[4]
    assert batch.instrument_id == "AAPL" and len(batch) == 1
    assert (batch.ts[0], batch.bid[0], batch.ask[0], batch.last[0], batch.size[0]) == (
        t["ts_event"], t["bid"], t["ask"], t["last"], t["size"],
    )  # fmt: skip
    assert batch.raws == [msgs[0].value]


def test_decode_errors_when_raised_wrap_library_exception():
    with pytest.raises(CodecError) as err:
        SingleObjectCodec().decode("TradeProposal", _PROP_BYTES[:-3])
    assert err.value.__cause__ is not None


# --- schema evolution ---------------------------------------------------------------------


def _older_proposal_schema() -> dict[str, Any]:
    schema = raw_schema("TradeProposal")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "strategy"]
    return schema


def _newer_proposal_schema() -> dict[str, Any]:
    schema = raw_schema("TradeProposal")
    schema["fields"].insert(
        -1, {"name": "venue", "type": ["null", "string"], "default": None, "doc": "new"}
    )
    return schema


def _newer_instrument_schema() -> dict[str, Any]:
    schema = raw_schema("Instrument")
    for f in schema["fields"]:
        if f["name"] == "asset_class":
            f["type"] = copy.deepcopy(f["type"])
            f["type"]["symbols"].append("CRYPTO")
    schema["fields"].insert(1, {"name": "isin", "type": "string", "default": "", "doc": "new"})
    return schema


_OLD_PROP = {k: v for k, v in proposal(proposal_id="P-old").items() if k != "strategy"}
_NEW_PROP = proposal(proposal_id="P-new", strategy="arb") | {"venue": "XNAS"}
_NEW_INST = instrument(asset_class="CRYPTO") | {"isin": "XX0000000000"}

EVOLUTION_ROWS = [
    pytest.param(
        "TradeProposal",
        _older_proposal_schema(),
        _OLD_PROP,
        _OLD_PROP | {"strategy": None},
        id="older-proposal-without-strategy",
    ),
    pytest.param(
        "TradeProposal",
        _newer_proposal_schema(),
        _NEW_PROP,
        {k: v for k, v in _NEW_PROP.items() if k != "venue"},
        id="newer-proposal-with-venue",
    ),
    pytest.param(
        "Instrument",
        _newer_instrument_schema(),
        _NEW_INST,
        {k: v for k, v in _NEW_INST.items() if k != "isin"} | {"asset_class": "OTHER"},
        id="newer-instrument-with-new-enum-symbol",
    ),
]


@pytest.mark.parametrize(("name", "writer", "written", "expected"), EVOLUTION_ROWS)
def test_decode_when_writer_schema_registered_resolves_to_reader_schema(
    name, writer, written, expected
):
    data = header(writer) + fastavro_body(name, written, writer)

    decoded = SingleObjectCodec(writer_schemas=[writer]).decode(name, data)

    assert decoded == expected


@pytest.mark.parametrize(("name", "writer", "written", "expected"), EVOLUTION_ROWS)
def test_decode_when_writer_schema_not_registered_raises_unknown_schema(
    name, writer, written, expected
):
    data = header(writer) + fastavro_body(name, written, writer)

    with pytest.raises(CodecError) as err:
        SingleObjectCodec().decode(name, data)
    assert err.value.code == "UNKNOWN_SCHEMA"


def test_decode_when_registered_writer_is_another_record_raises_wrong_record():
    writer = _older_proposal_schema()
    data = header(writer) + fastavro_body("TradeProposal", _OLD_PROP, writer)

    with pytest.raises(CodecError) as err:
        SingleObjectCodec(writer_schemas=[writer]).decode("Execution", data)
    assert err.value.code == "WRONG_RECORD"


def test_encode_when_writer_schemas_registered_still_writes_current_schema():
    codec = SingleObjectCodec(writer_schemas=[_older_proposal_schema()])

    data = codec.encode("TradeProposal", _PROP)

    assert data == _PROP_BYTES


# --- Confluent framing with an in-memory registry ------------------------------------------


@pytest.fixture
def registry():
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": "mock://riskstream-tests"})


@pytest.mark.parametrize(
    ("name", "record"),
    [("TradeProposal", _PROP), ("MarketTick", _TICK), ("Execution", _EXEC), ("Instrument", _INST)],
)
def test_registry_codec_when_round_tripping_frames_with_registered_id(registry, name, record):
    codec = RegistryCodec(registry)

    data = codec.encode(name, record)

    schema_id = registry.get_latest_version(f"riskstream.v1.{name}").schema_id
    assert data[:5] == b"\x00" + struct.pack(">I", schema_id)
    assert data[5:] == fastavro_body(name, record)
    assert codec.decode(name, data) == record


def test_registry_codec_when_another_codec_reads_same_registry_decodes(registry):
    data = RegistryCodec(registry).encode("TradeProposal", _PROP)

    assert RegistryCodec(registry).decode("TradeProposal", data) == _PROP


def test_registry_codec_when_writer_is_older_schema_resolves_to_reader(registry):
    from confluent_kafka.schema_registry import Schema

    writer = _older_proposal_schema()
    schema_id = registry.register_schema(
        "riskstream.v1.TradeProposal", Schema(json.dumps(writer), "AVRO")
    )
    data = (
        b"\x00" + struct.pack(">I", schema_id) + fastavro_body("TradeProposal", _OLD_PROP, writer)
    )

    assert RegistryCodec(registry).decode("TradeProposal", data) == _OLD_PROP | {"strategy": None}


def _registry_bad_rows(registry) -> list[tuple[str, bytes | None, str]]:
    codec = RegistryCodec(registry)
    tick_bytes = codec.encode("MarketTick", _TICK)
    prop_bytes = codec.encode("TradeProposal", _PROP)
    return [
        ("TradeProposal", b"", "EMPTY_PAYLOAD"),
        ("TradeProposal", None, "EMPTY_PAYLOAD"),
        ("TradeProposal", b"\x01" + prop_bytes[1:], "BAD_MAGIC"),
        ("TradeProposal", prop_bytes[:3], "BAD_MAGIC"),
        ("TradeProposal", _PROP_BYTES, "BAD_MAGIC"),  # single-object bytes on a registry topic
        ("TradeProposal", b"\x00" + struct.pack(">I", 987654) + prop_bytes[5:], "UNKNOWN_SCHEMA"),
        ("TradeProposal", tick_bytes, "WRONG_RECORD"),
        ("TradeProposal", prop_bytes[:-2], "DECODE_ERROR"),
        ("TradeProposal", prop_bytes + b"\x00", "DECODE_ERROR"),
    ]


def test_registry_codec_when_given_bad_bytes_raises_codec_error_with_code(registry):
    rows = _registry_bad_rows(registry)
    codec = RegistryCodec(registry)
    got = []
    for name, data, _ in rows:
        with pytest.raises(CodecError) as err:
            codec.decode(name, data)
        got.append(err.value.code)
    assert got == [code for _, _, code in rows]


# --- schema files ----------------------------------------------------------------------------


def test_schema_files_when_listed_cover_every_record_type():
    assert {p.stem for p in SCHEMA_FILES} == EXPECTED_RECORDS


def _named_types(schema: Any, path: str):
    """Yield (path, named type) for every record/enum/fixed reachable from ``schema``."""
    if isinstance(schema, list):
        for i, branch in enumerate(schema):
            yield from _named_types(branch, f"{path}[{i}]")
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            yield path, schema
        if kind == "record":
            for f in schema["fields"]:
                yield from _named_types(f["type"], f"{path}.{f['name']}")
        elif kind == "array":
            yield from _named_types(schema["items"], f"{path}[]")
        elif kind == "map":
            yield from _named_types(schema["values"], f"{path}{{}}")
        elif isinstance(kind, dict | list):
            yield from _named_types(kind, path)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_file_when_loaded_is_in_riskstream_v1_namespace(path):
    schema = json.loads(path.read_text())

    assert schema["type"] == "record"
    assert schema["name"] == path.stem
    assert schema["namespace"] == "riskstream.v1"
    for where, named in _named_types(schema, path.stem):
        assert named.get("namespace", "riskstream.v1") == "riskstream.v1", where
        assert "." not in named["name"] or named["name"].startswith("riskstream.v1."), where


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_file_when_walked_has_doc_on_every_field_and_named_type(path):
    schema = json.loads(path.read_text())
    missing = []
    for where, named in _named_types(schema, path.stem):
        if not str(named.get("doc", "")).strip():
            missing.append(where)
        for f in named.get("fields", []):
            if not str(f.get("doc", "")).strip():
                missing.append(f"{where}.{f['name']}")
    assert missing == []


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_file_when_parsed_by_fastavro_is_valid_avro(path):
    fastavro.parse_schema(json.loads(path.read_text()))
