"""Avro codec: single-object encoding by default, Confluent framing with a registry.

Every payload names its writer schema (a CRC-64-AVRO fingerprint, or a registry id), and
decoding always resolves that writer schema to our reader schema, so records from older
and newer producers both read.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

from operators.errors import CodecError

SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "riskstream.v1"
RECORD_NAMES = (
    "MarketTick",
    "Instrument",
    "TradeProposal",
    "Execution",
    "ControlCommand",
    "RiskScore",
    "RegimeEvent",
    "DeadLetter",
)
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

Record = dict[str, Any]

_EMPTY64 = 0xC15D213AA4D7A795


def _rabin_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _rabin_table()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (Rabin) fingerprint of ``data``, as the Avro specification defines it."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: Any) -> bytes:
    """The 8-byte little-endian fingerprint of a schema's parsing canonical form."""
    canonical = to_parsing_canonical_form(schema)
    return struct.pack("<Q", crc64_avro(canonical.encode()))


@cache
def load_schema(name: str) -> Any:
    """The parsed reader schema for record ``name`` (e.g. ``"RiskScore"``)."""
    if name not in RECORD_NAMES:
        raise CodecError("UNKNOWN_RECORD", f"no schema named {name!r}; known: {RECORD_NAMES}")
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


def _record_name(schema: Any) -> str:
    return str(schema["name"]).rsplit(".", 1)[-1]


class Codec(Protocol):
    """Encodes records to bytes and decodes bytes back, by record name."""

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current schema of ``name``."""
        ...

    def decode(self, name: str, data: bytes | None) -> Record:
        """Decode ``data`` (written with any known schema of ``name``) to the reader schema."""
        ...

    def single_object_header(self, name: str) -> bytes | None:
        """Single-object prefix of ``name``'s current schema (None for other framings).

        Batch decoders read messages that start with it directly.
        """
        ...


def _write_body(schema: Any, record: Mapping[str, Any], name: str) -> bytes:
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CodecError("ENCODE_ERROR", f"encode {name}: {exc}") from exc
    return buf.getvalue()


def _read_body(data: bytes, offset: int, writer: Any, reader: Any, name: str) -> Record:
    buf = io.BytesIO(data)
    buf.seek(offset)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise CodecError("DECODE_ERROR", f"decode {name}: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data):
        raise CodecError(
            "DECODE_ERROR", f"decode {name}: {len(data) - buf.tell()} trailing bytes after record"
        )
    if not isinstance(record, dict):
        raise CodecError("DECODE_ERROR", f"decode {name}: payload is not a record")
    return record


class SingleObjectCodec:
    """Avro single-object encoding: ``C3 01`` + 8-byte fingerprint + binary body.

    Earlier versions of our schemas (``schemas/history/*.avsc``) and any ``writer_schemas``
    given (older or newer producers) are known writers; each resolves to the current
    reader schema of its name.
    """

    def __init__(self, writer_schemas: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_fp: dict[bytes, tuple[str, Any]] = {}
        self._header: dict[str, bytes] = {}
        for name in RECORD_NAMES:
            schema = load_schema(name)
            fp = fingerprint(schema)
            self._by_fp[fp] = (name, schema)
            self._header[name] = SINGLE_OBJECT_MAGIC + fp
        older = sorted((SCHEMA_DIR / "history").glob("*.avsc"))
        history = [json.loads(f.read_text()) for f in older]
        for raw in [*history, *writer_schemas]:
            schema = fastavro.parse_schema(dict(raw))
            self._by_fp[fingerprint(schema)] = (_record_name(schema), schema)

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode with the current schema of ``name``."""
        return self._header_for(name) + _write_body(load_schema(name), record, name)

    def single_object_header(self, name: str) -> bytes | None:
        """``C3 01`` + the fingerprint of the current schema of ``name``."""
        return self._header_for(name)

    def _header_for(self, name: str) -> bytes:
        try:
            return self._header[name]
        except KeyError:
            load_schema(name)  # raises the UNKNOWN_RECORD error
            raise

    def decode(self, name: str, data: bytes | None) -> Record:
        """Decode single-object bytes written with any known schema of ``name``."""
        if not data:
            raise CodecError("EMPTY_PAYLOAD", f"decode {name}: empty or null payload")
        if data[:2] != SINGLE_OBJECT_MAGIC or len(data) < 10:
            raise CodecError(
                "BAD_MAGIC",
                f"decode {name}: not Avro single-object encoding (starts {data[:2].hex()!r})",
            )
        found = self._by_fp.get(bytes(data[2:10]))
        if found is None:
            raise CodecError(
                "UNKNOWN_SCHEMA", f"decode {name}: unknown writer fingerprint {data[2:10].hex()}"
            )
        writer_name, writer = found
        if writer_name != name:
            raise CodecError(
                "WRONG_RECORD", f"decode {name}: payload is a {writer_name}, not a {name}"
            )
        reader = load_schema(name)
        return _read_body(data, 10, writer, None if writer is reader else reader, name)


class RegistryCodec:
    """Confluent Schema Registry framing: ``00`` + 4-byte big-endian schema id + body.

    Subjects follow the record-name strategy (``riskstream.v1.RiskScore``); ids seen on
    the wire are looked up in the registry once and cached.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._ids: dict[str, int] = {}
        self._writers: dict[int, tuple[str, Any]] = {}

    def _schema_id(self, name: str) -> int:
        schema_id = self._ids.get(name)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            text = (SCHEMA_DIR / f"{name}.avsc").read_text()
            load_schema(name)
            try:
                schema_id = int(
                    self._client.register_schema(f"{NAMESPACE}.{name}", Schema(text, "AVRO"))
                )
            except Exception as exc:
                raise CodecError("REGISTRY_ERROR", f"register {name}: {exc}") from exc
            self._ids[name] = schema_id
        return schema_id

    def _writer(self, schema_id: int, name: str) -> tuple[str, Any]:
        found = self._writers.get(schema_id)
        if found is None:
            try:
                text = self._client.get_schema(schema_id).schema_str
            except Exception as exc:
                raise CodecError(
                    "UNKNOWN_SCHEMA", f"decode {name}: registry has no schema id {schema_id}: {exc}"
                ) from exc
            schema = fastavro.parse_schema(json.loads(text))
            found = (_record_name(schema), schema)
            self._writers[schema_id] = found
        return found

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode with the current schema of ``name``, registering it on first use."""
        header = CONFLUENT_MAGIC + struct.pack(">I", self._schema_id(name))
        return header + _write_body(load_schema(name), record, name)

    def single_object_header(self, name: str) -> bytes | None:
        """None: registry framing has no single-object header."""
        return None

    def decode(self, name: str, data: bytes | None) -> Record:
        """Decode Confluent-framed bytes with the writer schema from the registry."""
        if not data:
            raise CodecError("EMPTY_PAYLOAD", f"decode {name}: empty or null payload")
        if data[:1] != CONFLUENT_MAGIC or len(data) < 5:
            raise CodecError(
                "BAD_MAGIC", f"decode {name}: not Confluent framing (starts {data[:1].hex()!r})"
            )
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer_name, writer = self._writer(schema_id, name)
        if writer_name != name:
            raise CodecError(
                "WRONG_RECORD", f"decode {name}: schema id {schema_id} is a {writer_name}"
            )
        return _read_body(data, 5, writer, load_schema(name), name)


def make_codec(registry_url: str | None, registry_config: Mapping[str, str] | None = None) -> Codec:
    """Single-object codec, or a registry codec when a registry URL is given."""
    if not registry_url:
        return SingleObjectCodec()
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": registry_url, **(registry_config or {})}
    # new_client gives the in-memory registry for mock:// URLs, a real client otherwise.
    return RegistryCodec(SchemaRegistryClient.new_client(conf))
