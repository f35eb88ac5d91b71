"""riskstream's exceptions: one base class, messages that name the step and the value."""

from __future__ import annotations


class RiskstreamError(Exception):
    """Base class of every error riskstream raises on purpose."""


class ConfigError(RiskstreamError):
    """A setting or CLI argument is invalid; the message says what to fix."""


class CodecError(RiskstreamError):
    """Bytes could not be decoded to (or a record encoded as) an Avro record.

    ``code`` is the dead-letter reason code (``DECODE_ERROR``, ``UNKNOWN_SCHEMA``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidRecord(RiskstreamError):
    """A decoded record breaks a semantic rule (NaN price, negative quantity, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InfrastructureError(RiskstreamError):
    """A broker or Redis server could not be started or reached."""
