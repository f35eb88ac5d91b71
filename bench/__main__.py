"""Run every benchmark, one process each: ``python -m bench [NAME ...]`` (``make bench``).

Each writes ``bench/results/<name>.json`` and ``.md``; the run stops at the first failure.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = (
    "kernels_bench",
    "feature_stage_bench",
    "ingest_bench",
    "latency_bench",
    "decision_bench",
    "model_bench",
    "halt_latency_bench",
    "replay_bench",
    "scaleout_bench",
)


def main(names: list[str]) -> int:
    """Run ``names`` (all when empty); the exit status of the first that fails, else 0."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names or BENCHMARKS:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        status = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"== {name}: exit {status} in {time.perf_counter() - started:.0f} s", flush=True)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
