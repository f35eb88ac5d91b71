"""Container health check: exit 0 when the process's probe endpoint answers 200, else 1.

python:3.11-slim has no curl, so the image's HEALTHCHECK runs this with the venv's Python.
By default it asks ``/healthz`` (liveness: the dataflow workers keep looping); with
``--ready`` it asks ``/readyz`` (broker, Redis and models). It reads the same variables
as ``riskstream run``: RISKSTREAM_METRICS_PORT (default 9464; 0 means the endpoint is off,
and then there is nothing to check) and RISKSTREAM_METRICS_HOST (a wildcard bind address
is checked on loopback).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    """Probe the endpoint once; the exit status is the result."""
    path = "/readyz" if "--ready" in argv else "/healthz"
    port = int(os.environ.get("RISKSTREAM_METRICS_PORT", "9464") or 0)
    if port == 0:
        return 0
    host = os.environ.get("RISKSTREAM_METRICS_HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            resp.read(1 << 16)
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url}: {exc.code} {exc.read(1 << 16).decode()}", file=sys.stderr)
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
