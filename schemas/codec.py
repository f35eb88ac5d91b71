"""Avro codec: single-object encoding by default, Confluent framing with a registry.

Every payload names its writer schema (a CRC-64-AVRO fingerprint, or a registry id), and
decoding always resolves that writer schema to our reader schema, so records from older
and newer producers both read.

Records are encoded by writers generated from the schemas (:func:`compiled_writer`: the
bytes fastavro writes, at a fraction of its cost); whatever they do not take (numpy
numbers, missing fields with defaults, ...) fastavro writes, or rejects.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol, cast

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


Writer = Callable[[bytearray, Any], None]
"""Appends one datum's Avro binary encoding (raises on anything it does not handle)."""

_INT32 = 2**31
_INT64 = 2**63
_pack_double = struct.Struct("<d").pack


class _Unsupported(Exception):
    """A schema, or a datum, the compiled writers leave to fastavro."""


def _write_long(out: bytearray, n: int) -> None:
    """Zig-zag varint of a 64-bit integer."""
    if not -_INT64 <= n < _INT64:
        raise _Unsupported("out of range")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _long(out: bytearray, datum: Any) -> None:
    if type(datum) is not int:
        raise _Unsupported("not an int")
    _write_long(out, datum)


def _int(out: bytearray, datum: Any) -> None:
    if type(datum) is not int or not -_INT32 <= datum < _INT32:
        raise _Unsupported("not a 32-bit int")
    _write_long(out, datum)


def _double(out: bytearray, datum: Any) -> None:
    if type(datum) is bool or not isinstance(datum, float | int):
        raise _Unsupported("not a number")
    out += _pack_double(datum)


def _bytes(out: bytearray, datum: Any) -> None:
    if type(datum) is not bytes:
        raise _Unsupported("not bytes")
    _write_long(out, len(datum))
    out += datum


def _boolean(out: bytearray, datum: Any) -> None:
    if type(datum) is not bool:
        raise _Unsupported("not a bool")
    out.append(datum)


_PRIMITIVE_WRITERS: dict[str, Writer] = {
    "boolean": _boolean,
    "int": _int,
    "long": _long,
    "double": _double,
    "bytes": _bytes,
}


class _WriterSource:
    """Python source of a writer for one parsed schema, straight-line code per field.

    The writer takes plain data only (dicts with every field, lists, exact Python types;
    unions of null and one other type); anything else raises, and the caller lets
    fastavro write the record. Other schema types (named references, fixed, float,
    logical types, wider unions) raise ``_Unsupported`` while generating.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"_Unsupported": _Unsupported, "_pack": _pack_double}
        self.names |= {f"_w_{k}": w for k, w in _PRIMITIVE_WRITERS.items()}
        self.names["_write_long"] = _write_long
        self.count = 0

    def const(self, value: Any) -> str:
        name = f"_c{len(self.names)}"
        self.names[name] = value
        return name

    def emit(self, schema: Any, src: str, ind: str) -> None:
        """Lines writing the datum ``src`` (an expression) at indent ``ind``."""
        add = self.lines.append
        if isinstance(schema, dict) and "logicalType" in schema:
            raise _Unsupported("logical type")
        if isinstance(schema, dict) and not isinstance(schema["type"], str | list):
            raise _Unsupported("nested type")
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(kind, list):
            if len(kind) != 2 or kind[0] != "null" or kind[1] == "null":
                raise _Unsupported("union")
            var = self.var()
            add(f"{ind}{var} = {src}")
            add(f"{ind}if {var} is None:")
            add(f"{ind}    out.append(0)")
            add(f"{ind}else:")
            add(f"{ind}    out.append(2)")  # branch 1, zig-zag
            self.emit(kind[1], var, ind + "    ")
        elif kind == "double":  # the common case inline
            var = self.var()
            add(f"{ind}{var} = {src}")
            add(f"{ind}if type({var}) is float:")
            add(f"{ind}    out += _pack({var})")
            add(f"{ind}else:")
            add(f"{ind}    _w_double(out, {var})")
        elif kind == "string":  # inline too: names, ids, messages, map keys
            var, data = self.var(), self.var()
            add(f"{ind}{var} = {src}")
            add(f"{ind}if type({var}) is not str:")
            add(f"{ind}    raise _Unsupported('not a str')")
            add(f"{ind}{data} = {var}.encode()")
            add(f"{ind}if len({data}) < 64:")  # the zig-zag varint of the length is one byte
            add(f"{ind}    out.append(len({data}) << 1)")
            add(f"{ind}else:")
            add(f"{ind}    _write_long(out, len({data}))")
            add(f"{ind}out += {data}")
        elif kind in _PRIMITIVE_WRITERS:
            add(f"{ind}_w_{kind}(out, {src})")
        elif kind == "enum":
            codes = {sym: _varint_bytes(i) for i, sym in enumerate(schema["symbols"])}
            add(f"{ind}out += {self.const(codes)}[{src}]")
        elif kind == "record":
            var = self.var()
            add(f"{ind}{var} = {src}")
            add(f"{ind}if type({var}) is not dict:")
            add(f"{ind}    raise _Unsupported('not a dict')")
            for f in schema["fields"]:
                self.emit(f["type"], f"{var}[{f['name']!r}]", ind)
        elif kind in ("array", "map"):
            var, item = self.var(), self.var()
            add(f"{ind}{var} = {src}")
            add(f"{ind}if type({var}) is not {'list' if kind == 'array' else 'dict'}:")
            add(f"{ind}    raise _Unsupported('not a {kind}')")
            add(f"{ind}if {var}:")
            add(f"{ind}    _write_long(out, len({var}))")
            if kind == "array":
                add(f"{ind}    for {item} in {var}:")
                self.emit(schema["items"], item, ind + "        ")
            else:
                key = self.var()
                add(f"{ind}    for {key}, {item} in {var}.items():")
                self.emit("string", key, ind + "        ")
                self.emit(schema["values"], item, ind + "        ")
            add(f"{ind}out.append(0)")
        else:
            raise _Unsupported(str(kind))

    def var(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def build(self, schema: Any) -> Writer:
        self.emit(schema, "datum", "    ")
        source = "def write(out, datum):\n" + "\n".join(self.lines) + "\n"
        namespace = dict(self.names)
        exec(compile(source, "<avro writer>", "exec"), namespace)  # generated from our schema
        return cast(Writer, namespace["write"])


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    _write_long(out, n)
    return bytes(out)


@cache
def compiled_writer(name: str) -> Writer | None:
    """The compiled writer of record ``name``'s current schema (None: fastavro writes it)."""
    try:
        return _WriterSource().build(load_schema(name))
    except _Unsupported:
        return None


def _write_body(schema: Any, record: Mapping[str, Any], name: str) -> bytes:
    write = compiled_writer(name)
    if write is not None:
        out = bytearray()
        try:
            write(out, record)
            return bytes(out)
        except Exception:  # not plain data: fastavro writes it, or says why it cannot
            pass
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
