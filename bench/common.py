"""Shared helpers for benchmarks: timing, machine facts, and writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """Fastest wall-clock seconds of ``runs`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_results(name: str, figures: dict[str, Any], table: list[tuple[str, str]]) -> None:
    """bench/results/<name>.json (figures + machine) and <name>.md (a short table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, **figures, "machine": machine()}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in table)
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n| measure | value |\n|---|---|\n{rows}\n")
    print((RESULTS / f"{name}.md").read_text())


def avro_long(n: int) -> bytes:
    """Avro long: zig-zag, then base-128 varint (for producers that patch encoded records)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)
