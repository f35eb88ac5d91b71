"""The Prometheus endpoint."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from operators.errors import ConfigError

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port`` (port 0: off); a taken port is a configuration error."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on port {port}: {exc}; set RISKSTREAM_METRICS_PORT"
            " to a free port, or 0 to turn metrics off"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)
