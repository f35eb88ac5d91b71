"""Codec fuzzing: arbitrary and mutated bytes only ever raise CodecError; records round-trip."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.errors import CodecError
from schemas.codec import SINGLE_OBJECT_MAGIC, RegistryCodec, SingleObjectCodec
from tests.fuzz.strategies import ALL_RECORDS, corpus, fuzz, record_strategy, same

CODEC = SingleObjectCodec()
DECODE_CODES = {"EMPTY_PAYLOAD", "BAD_MAGIC", "UNKNOWN_SCHEMA", "WRONG_RECORD", "DECODE_ERROR"}


def _registry_codec() -> RegistryCodec:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return RegistryCodec(SchemaRegistryClient.new_client({"url": "mock://fuzz-codec"}))


REGISTRY = _registry_codec()


def decode_or_code(codec: Any, name: str, data: bytes | None) -> dict[str, Any] | str:
    """The decoded record, or the CodecError's code; any other exception fails the test."""
    try:
        record = codec.decode(name, data)
    except CodecError as exc:
        assert exc.code in DECODE_CODES, f"unexpected code {exc.code!r}: {exc}"
        assert str(exc), "a codec error must say what was wrong"
        return str(exc.code)
    assert isinstance(record, dict)
    return record


def _encodings(codec: Any) -> list[tuple[str, bytes]]:
    return [(name, codec.encode(name, record)) for name, record in corpus().items()]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """A valid encoding, then bit flips, truncation, extension, a new header or a splice."""
    _, original = draw(st.sampled_from(seeds))
    data = bytearray(original)
    size = 10 if data[:2] == SINGLE_OBJECT_MAGIC else 5
    how = draw(st.sampled_from(["flip", "truncate", "extend", "header", "splice", "bytes"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif how == "header":  # a wrong fingerprint or schema id
        n = size - 2 if size == 10 else 4
        data[size - n : size] = draw(st.binary(min_size=n, max_size=n))
    elif how == "splice":  # the body of one record behind the header of another
        _, other = draw(st.sampled_from(seeds))
        data[:size] = other[:size]
    else:  # overwrite a run of body bytes
        i = draw(st.integers(size, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[i : i + len(patch)] = patch
    return draw(st.sampled_from(ALL_RECORDS)), bytes(data)


SINGLE_SEEDS = _encodings(CODEC)
REGISTRY_SEEDS = _encodings(REGISTRY)


@fuzz(2500)
@given(
    st.sampled_from(ALL_RECORDS),
    st.binary(max_size=64) | st.binary(min_size=10).map(lambda b: SINGLE_OBJECT_MAGIC + b),
)
def test_single_object_decode_when_given_any_bytes_raises_only_codec_error(name, data):
    decode_or_code(CODEC, name, data)


@fuzz(1800)
@given(mutated(SINGLE_SEEDS))
def test_single_object_decode_when_given_mutated_encoding_raises_only_codec_error(case):
    name, data = case
    result = decode_or_code(CODEC, name, data)
    if isinstance(result, dict):  # what still decodes is a well-formed record of the schema
        assert same(CODEC.decode(name, CODEC.encode(name, result)), result)


@fuzz(1000)
@given(st.sampled_from(ALL_RECORDS), st.binary(max_size=40).map(lambda b: b"\x00" + b))
def test_registry_decode_when_given_any_bytes_raises_only_codec_error(name, data):
    decode_or_code(REGISTRY, name, data)


@fuzz(600)
@given(mutated(REGISTRY_SEEDS))
def test_registry_decode_when_given_mutated_encoding_raises_only_codec_error(case):
    name, data = case
    result = decode_or_code(REGISTRY, name, data)
    if isinstance(result, dict):
        assert same(REGISTRY.decode(name, REGISTRY.encode(name, result)), result)


@pytest.mark.parametrize("name", ALL_RECORDS)
@pytest.mark.parametrize("codec", [CODEC, REGISTRY], ids=["single-object", "registry"])
@fuzz(40)
@given(data=st.data())
def test_decode_when_given_encoded_valid_record_round_trips_exactly(name, codec, data):
    record = data.draw(record_strategy(name))

    encoded = codec.encode(name, record)

    assert same(codec.decode(name, encoded), record)
