"""``riskstream diff A B``: compare two decision streams, proposal by proposal.

Each side is a topic (read from its beginning to its current end) or an Avro container
file of ``RiskScore`` records (``riskstream replay --out-file``): ``topic:NAME``,
``file:PATH``, or a bare argument that is an existing file or else a topic. Records are
matched by ``proposal_id``; wall-clock fields (``ts_decided``, ``latency_us``) are
ignored. Every mismatch is reported with its proposal id and the fields that differ, as
dotted paths (``features.mid``, ``reasons[1].value``). Exit status: 0 when the streams
match, 1 when they do not, 2 on errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from operators.errors import ConfigError

WALL_CLOCK_FIELDS = ("ts_decided", "latency_us")
"""Fields a replay cannot reproduce: the time of deciding and the latency."""
KEY = "proposal_id"

Record = dict[str, Any]


@dataclass(frozen=True)
class FieldDiff:
    """One field (a dotted path) whose values differ."""

    path: str
    a: Any
    b: Any


@dataclass(frozen=True)
class Mismatch:
    """A proposal whose decisions differ, or that only one side has, or has twice."""

    proposal_id: str
    kind: str
    """``differs``, ``only_in_a``, ``only_in_b``, ``duplicate_in_a`` or ``duplicate_in_b``."""
    fields: tuple[FieldDiff, ...] = ()
    a_stale: bool = False
    b_stale: bool = False

    @property
    def field_names(self) -> list[str]:
        """Paths of the differing fields."""
        return [f.path for f in self.fields]

    def text(self) -> str:
        """One line per mismatch."""
        flags = "".join(
            f" [{side} stale]" for side, s in (("A", self.a_stale), ("B", self.b_stale)) if s
        )
        if self.kind != "differs":
            return f"{self.kind.upper():<15} {self.proposal_id}{flags}"
        body = "; ".join(f"{f.path}: {_short(f.a)} != {_short(f.b)}" for f in self.fields)
        return f"{'DIFFERS':<15} {self.proposal_id}{flags}: {body}"


@dataclass
class DiffReport:
    """Every mismatch between two decision streams."""

    a_name: str
    b_name: str
    a_count: int
    b_count: int
    compared: int
    ignored: tuple[str, ...]
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the streams match."""
        return not self.mismatches

    def counts(self) -> dict[str, int]:
        """Mismatches by kind."""
        out: dict[str, int] = {}
        for m in self.mismatches:
            out[m.kind] = out.get(m.kind, 0) + 1
        return out

    def summary(self) -> str:
        """The closing line."""
        by_kind = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(self.counts().items()))
        return (
            f"{self.compared:,} compared, {len(self.mismatches):,} mismatches"
            f"{f' ({by_kind})' if by_kind else ''}; ignored: {', '.join(self.ignored) or 'none'}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "a": {"source": self.a_name, "records": self.a_count},
            "b": {"source": self.b_name, "records": self.b_count},
            "compared": self.compared,
            "ignored": list(self.ignored),
            "mismatch_count": len(self.mismatches),
            "counts": self.counts(),
            "mismatches": [asdict(m) | {"field_names": m.field_names} for m in self.mismatches],
        }


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _equal(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        if rel_tol or abs_tol:
            return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(type(a) is type(b) and a == b)


def field_diffs(
    a: Any, b: Any, path: str = "", rel_tol: float = 0.0, abs_tol: float = 0.0
) -> list[FieldDiff]:
    """Differences between two decoded values, as dotted paths (exact unless tolerances)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[FieldDiff] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(FieldDiff(sub, a.get(key, "<absent>"), b.get(key, "<absent>")))
            else:
                out.extend(field_diffs(a[key], b[key], sub, rel_tol, abs_tol))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [FieldDiff(path, a, b)]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(field_diffs(x, y, f"{path}[{i}]", rel_tol, abs_tol))
        return out
    return [] if _equal(a, b, rel_tol, abs_tol) else [FieldDiff(path, a, b)]


def compare(
    a: Iterable[Record],
    b: Iterable[Record],
    *,
    a_name: str = "A",
    b_name: str = "B",
    ignore: Sequence[str] = WALL_CLOCK_FIELDS,
    rel_tol: float = 0.0,
    abs_tol: float = 0.0,
) -> DiffReport:
    """Match two decision streams by proposal id and report every mismatch."""
    ignored = tuple(dict.fromkeys(ignore))
    by_a, dup_a = _index(a, ignored)
    by_b, dup_b = _index(b, ignored)
    report = DiffReport(a_name, b_name, len(by_a) + len(dup_a), len(by_b) + len(dup_b), 0, ignored)
    for pid in sorted(set(by_a) | set(by_b)):
        ra, rb = by_a.get(pid), by_b.get(pid)
        a_stale = bool(ra and ra.get("stale"))
        b_stale = bool(rb and rb.get("stale"))
        if rb is None:
            report.mismatches.append(Mismatch(pid, "only_in_a", a_stale=a_stale))
        elif ra is None:
            report.mismatches.append(Mismatch(pid, "only_in_b", b_stale=b_stale))
        else:
            report.compared += 1
            diffs = [
                d
                for d in field_diffs(ra, rb, rel_tol=rel_tol, abs_tol=abs_tol)
                if not _ignored(d.path, ignored)
            ]
            if diffs:
                report.mismatches.append(Mismatch(pid, "differs", tuple(diffs), a_stale, b_stale))
    for pid in dup_a:
        report.mismatches.append(Mismatch(pid, "duplicate_in_a"))
    for pid in dup_b:
        report.mismatches.append(Mismatch(pid, "duplicate_in_b"))
    return report


def _ignored(path: str, ignored: tuple[str, ...]) -> bool:
    """True for an ignored field or anything inside it (``features`` covers ``features.mid``)."""
    return any(path == i or path.startswith((f"{i}.", f"{i}[")) for i in ignored)


def _index(
    records: Iterable[Record], ignored: tuple[str, ...]
) -> tuple[dict[str, Record], list[str]]:
    out: dict[str, Record] = {}
    duplicates: list[str] = []
    for record in records:
        if KEY not in record:
            raise ConfigError(f"a record without {KEY!r}: is this a RiskScore stream?")
        pid = str(record[KEY])
        if pid in out:
            duplicates.append(pid)
            continue
        out[pid] = {k: v for k, v in record.items() if k not in ignored}
    return out, duplicates


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class StreamSource:
    """One side of a diff: a topic or a file."""

    kind: str
    """``topic`` or ``file``."""
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def parse_source(text: str) -> StreamSource:
    """``topic:NAME``, ``file:PATH``, an existing file, or else a topic name."""
    if text.startswith("topic:"):
        return StreamSource("topic", text.removeprefix("topic:"))
    if text.startswith("file:"):
        return StreamSource("file", text.removeprefix("file:"))
    if Path(text).is_file() or text.endswith(".avro"):
        return StreamSource("file", text)
    return StreamSource("topic", text)


def read_file(path: str) -> Iterator[Record]:
    """RiskScore records of an Avro container file."""
    import fastavro

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such file: {path!r}")
    with p.open("rb") as fo:
        try:
            reader = fastavro.reader(fo)
        except ValueError as exc:
            raise ConfigError(f"{path!r} is not an Avro container file: {exc}") from None
        for record in reader:
            if not isinstance(record, dict):
                raise ConfigError(f"{path!r} holds {type(record).__name__}s, not RiskScores")
            yield record


def read_topic(settings: Any, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every RiskScore on ``topic``, from its beginning to its current end (by consuming)."""
    from dataflows.app import codec_for
    from dataflows.kafka_io import check_broker, consumer_config
    from dataflows.replay import RangeScanner, topic_partitions

    if not settings.brokers:
        raise ConfigError(f"reading topic {topic!r} needs RISKSTREAM_KAFKA_BOOTSTRAP")
    check_broker(settings)
    config = consumer_config(settings)
    codec = codec_for(settings)
    out: list[Record] = []
    scanner = RangeScanner(config, timeout)
    try:
        for t, partition in topic_partitions(config, [topic]):
            low, end = scanner.bounds(t, partition)
            if end <= low:
                continue
            for msg in scanner.messages(t, partition, low):
                if int(msg.offset()) >= end:
                    break
                out.append(codec.decode("RiskScore", msg.value()))
    finally:
        scanner.close()
    return out


def load(source: StreamSource, settings: Any) -> list[Record]:
    """The records of one side."""
    if source.kind == "file":
        return list(read_file(source.name))
    return read_topic(settings, source.name)


# --------------------------------------------------------------------------- CLI


def print_report(report: DiffReport, out: TextIO, max_shown: int | None = None) -> None:
    """Both sides, every mismatch (or the first ``max_shown``), and the summary."""
    out.write(f"A: {report.a_name} ({report.a_count:,} records)\n")
    out.write(f"B: {report.b_name} ({report.b_count:,} records)\n")
    shown = report.mismatches if max_shown is None else report.mismatches[:max_shown]
    for m in shown:
        out.write(m.text() + "\n")
    if len(shown) < len(report.mismatches):
        out.write(f"... {len(report.mismatches) - len(shown):,} more (see --json)\n")
    out.write(report.summary() + "\n")


def cmd_diff(args: argparse.Namespace, settings: Any) -> int:
    """Compare two decision streams; exit 1 when they differ."""
    a, b = parse_source(args.a), parse_source(args.b)
    ignore = [*WALL_CLOCK_FIELDS, *(args.ignore or [])]
    report = compare(
        load(a, settings),
        load(b, settings),
        a_name=str(a),
        b_name=str(b),
        ignore=ignore,
        rel_tol=args.rel_tol,
        abs_tol=args.abs_tol,
    )
    print_report(report, sys.stdout, args.max_shown)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=repr))
    return 0 if report.ok else 1


def add_diff_parser(sub: argparse._SubParsersAction) -> None:
    """``riskstream diff``."""
    p = sub.add_parser(
        "diff",
        help="compare two decision streams (topics or Avro files) by proposal id",
        description=(
            "Matches RiskScore records by proposal_id and reports every mismatch with the"
            " fields that differ, ignoring wall-clock fields. A and B: topic:NAME,"
            " file:PATH, an existing file, or a topic name. Exit 0: equal; 1: mismatches."
        ),
    )
    p.add_argument("a", metavar="A", help="first stream (e.g. the live risk.scores)")
    p.add_argument("b", metavar="B", help="second stream (e.g. a replay's topic or file)")
    p.add_argument(
        "--ignore", action="append", metavar="FIELD",
        help="another field to ignore, e.g. stale or model_versions (repeatable)",
    )  # fmt: skip
    p.add_argument("--rel-tol", type=float, default=0.0, help="relative tolerance for numbers")
    p.add_argument("--abs-tol", type=float, default=0.0, help="absolute tolerance for numbers")
    p.add_argument("--max-shown", type=int, default=None, help="print at most N mismatches")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_diff)
