"""Avro helpers for the model tests: parse the project schemas, validate, encode."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import validate

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@cache
def parsed_schema(name: str) -> Any:
    with open(SCHEMAS / f"{name}.avsc") as f:
        return fastavro.parse_schema(json.load(f))


def assert_valid(name: str, records: Iterable[dict[str, Any]]) -> None:
    schema = parsed_schema(name)
    for record in records:
        assert validate(record, schema, raise_errors=True)


def encode(name: str, records: Iterable[dict[str, Any]]) -> bytes:
    schema = parsed_schema(name)
    out = io.BytesIO()
    for record in records:
        fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()
