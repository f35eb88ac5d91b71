"""Container health check: exit 0 when the Prometheus endpoint answers, 1 otherwise.

python:3.11-slim has no curl, so the image's HEALTHCHECK runs this with the venv's Python.
It reads the same variables as ``riskstream run``: RISKSTREAM_METRICS_PORT (default 9464;
0 means metrics are off, and then there is nothing to check) and RISKSTREAM_METRICS_HOST
(a wildcard bind address is checked on loopback).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    """Probe the endpoint once; the exit status is the result."""
    port = int(os.environ.get("RISKSTREAM_METRICS_PORT", "9464") or 0)
    if port == 0:
        return 0
    host = os.environ.get("RISKSTREAM_METRICS_HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            body = resp.read(1 << 20)
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if resp.status != 200 or b"riskstream_" not in body:
        print(f"healthcheck: {url}: status {resp.status}, no riskstream metrics", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
