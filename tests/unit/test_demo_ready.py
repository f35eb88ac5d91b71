"""``wait_ready``: the demo publishes only once the flow's /readyz answers 200."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dataflows.demo import wait_ready
from dataflows.settings import Settings
from operators.errors import InfrastructureError


class _Proc:
    def __init__(self, code: int | None = None) -> None:
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode


@contextmanager
def _readyz(statuses: list[int]) -> Iterator[Settings]:
    """Settings whose metrics port answers /readyz with ``statuses`` in turn, then the last."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.pop(0) if len(statuses) > 1 else statuses[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Settings(metrics_port=server.server_port)
    finally:
        server.shutdown()


def test_wait_ready_when_503_then_200_returns() -> None:
    with _readyz([503, 503, 200]) as settings:
        wait_ready(_Proc(), settings, timeout_s=10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("proc", "timeout_s", "message"),
    [(_Proc(3), 10, "exited with code 3"), (_Proc(), 1, "not ready within")],
)
def test_wait_ready_when_the_flow_exits_or_never_gets_ready_raises(
    proc: _Proc, timeout_s: float, message: str
) -> None:
    with _readyz([503]) as settings, pytest.raises(InfrastructureError, match=message):
        wait_ready(proc, settings, timeout_s=timeout_s)  # type: ignore[arg-type]
