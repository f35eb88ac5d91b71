"""``wait_ready``: the demo publishes only once the flow's /readyz answers 200."""

from __future__ import annotations

import threading
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


def _server(statuses: list[int]) -> ThreadingHTTPServer:
    """Answers /readyz with ``statuses`` in turn, then the last one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.pop(0) if len(statuses) > 1 else statuses[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_wait_ready_when_503_then_200_returns() -> None:
    server = _server([503, 503, 200])
    try:
        wait_ready(_Proc(), Settings(metrics_port=server.server_port), timeout_s=10)  # type: ignore[arg-type]
    finally:
        server.shutdown()


def test_wait_ready_when_the_flow_exits_raises() -> None:
    server = _server([503])
    try:
        with pytest.raises(InfrastructureError, match="exited with code 3"):
            wait_ready(_Proc(3), Settings(metrics_port=server.server_port), timeout_s=10)  # type: ignore[arg-type]
    finally:
        server.shutdown()


def test_wait_ready_when_never_ready_raises_in_time() -> None:
    server = _server([503])
    try:
        with pytest.raises(InfrastructureError, match="not ready within"):
            wait_ready(_Proc(), Settings(metrics_port=server.server_port), timeout_s=1)  # type: ignore[arg-type]
    finally:
        server.shutdown()
