"""One typed settings object, read from ``RISKSTREAM_*`` environment variables.

Nested values use ``__`` (``RISKSTREAM_LIMITS__CONCENTRATION=0.2``); dictionaries are
JSON (``RISKSTREAM_KAFKA_CONFIG='{"security.protocol": "SASL_SSL"}'``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from operators.config import NS, ControlKeys, EngineConfig, Limits
from operators.errors import ConfigError

log = logging.getLogger(__name__)

INPUT_KINDS = {
    "ticks": "MarketTick",
    "instruments": "Instrument",
    "proposals": "TradeProposal",
    "executions": "Execution",
    "control": "ControlCommand",
}


class Topics(BaseModel):
    """Topic names; ``prefix`` namespaces all of them (replays, tests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str = ""
    ticks: str = "market.ticks"
    instruments: str = "reference.instruments"
    proposals: str = "trade.proposals"
    executions: str = "trades.executed"
    control: str = "risk.control"
    scores: str = "risk.scores"
    regimes: str = "market.regimes"
    dlq: str = "risk.dlq"

    def name(self, role: str) -> str:
        """The full topic name of a role (``"ticks"``, ``"scores"``, ...)."""
        return self.prefix + str(getattr(self, role))

    def input_kinds(self) -> dict[str, str]:
        """Input topic name -> record name."""
        return {self.name(role): kind for role, kind in INPUT_KINDS.items()}

    def all(self) -> list[str]:
        """Every topic riskstream reads or writes."""
        roles = [*INPUT_KINDS, "scores", "regimes", "dlq"]
        return [self.name(role) for role in roles]


class LimitSettings(BaseModel):
    """Default per-portfolio limits (see operators.config.Limits)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    concentration: float = Field(0.25, gt=0, le=1)
    max_order_notional: float = Field(5_000_000.0, gt=0)
    max_adv_share: float = Field(0.10, gt=0, le=1)
    price_collar: float = Field(0.10, gt=0)
    var_budget: float = Field(250_000.0, gt=0)
    max_gross_notional: float = Field(100_000_000.0, gt=0)
    max_net_notional: float = Field(50_000_000.0, gt=0)
    max_drawdown: float = Field(0.10, gt=0, le=1)
    var_limit: float = Field(1_000_000.0, gt=0)
    max_orders: float = Field(120.0, ge=1)
    order_window_s: float = Field(60.0, gt=0)


class Settings(BaseSettings):
    """Everything configurable about riskstream, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="RISKSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
    )

    kafka_bootstrap: str | None = None
    """host:port list; unset means the embedded broker (``demo`` only)."""
    kafka_config: dict[str, SecretStr] = Field(default_factory=dict)
    """librdkafka settings passed through to every client (TLS, SASL, ...)."""
    redis_url: SecretStr | None = None
    """redis:// or rediss:// URL; unset means an embedded redis-server (``demo`` only)."""
    schema_registry_url: SecretStr | None = None
    """Confluent Schema Registry URL; unset means Avro single-object encoding."""
    schema_registry_config: dict[str, SecretStr] = Field(default_factory=dict)
    topics: Topics = Field(default_factory=Topics)
    topic_partitions: int = Field(4, ge=1)
    redis_prefix: str = "riskstream:"
    control_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """HMAC keys for control commands by key id (two during a rotation)."""
    control_key_id: str = "default"
    """Key id ``riskstream control`` signs with."""
    control_max_age_s: float = Field(60.0, gt=0, le=86_400 * 365)
    limits: LimitSettings = Field(default_factory=lambda: LimitSettings())
    portfolio_capital: float = Field(10_000_000.0, gt=0)
    shards: int = Field(8, ge=1, le=4096)
    bar_interval_s: float = Field(1.0, ge=0.001, le=86_400 * 7)
    bars_per_day: float | None = Field(None, gt=0)
    """Bars in one trading day for daily volatility; unset: 6.5 hours of bars."""
    allowed_lateness_ms: float = Field(0.0, ge=0, le=3_600_000)
    """How far ticks, fills and controls may be out of order within a partition; decisions
    wait this much longer for stragglers."""
    stale_after_s: float = Field(30.0, gt=0, le=86_400 * 365)
    max_wait_ms: float = Field(250.0, ge=0, le=3_600_000)
    reference_wait_ms: float = Field(2000.0, ge=0, le=3_600_000)
    """Live: how long a proposal for an instrument without reference data waits for it
    (at start-up the reference partitions can be read after the proposals')."""
    warm_up: bool = True
    """``riskstream run`` first runs ``riskstream warm-up`` (the flow in memory over simulated
    data, in a child process): the kernels are compiled before the first live proposal."""
    metrics_port: int = Field(9464, ge=0, le=65535)
    """Port of the Prometheus endpoint; 0 turns it off."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds (0.0.0.0 in containers)."""
    batch_size: int = Field(1000, ge=1)
    replay_batch_size: int = Field(10_000, ge=1)
    """Messages per partition poll in replays: a replay keeps no latency objective, and
    bigger batches mean fewer calls into every step (about 1.3x the events/s of 1000)."""
    fetch_wait_max_ms: int = Field(20, ge=2)
    idle_margin_ms: float | None = Field(None, ge=0)
    """Live: a caught-up partition counts as progressed to its last poll minus this. Unset:
    ``fetch_wait_max_ms`` + 10 (the newest fetch response a poll sees can be a whole fetch
    wait old, and a producer stamps a record a few ms before the broker appends it)."""
    model_dir: Path | None = None
    """Live model set: a directory with manifest.json and its artifacts; unset: the shipped
    models/artifacts. Verified (every sha256) at start-up; a mismatch is refused."""
    model_manifest_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """Pins the live manifest file's sha256: start-up refuses any other manifest."""
    shadow_model_dir: Path | None = None
    """Candidate model set run in shadow beside the live one (agreement metrics only)."""
    liveness_timeout_s: float = Field(30.0, gt=0)
    """/healthz answers 503 when a dataflow worker has not looped for this long."""

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def brokers(self) -> list[str]:
        """Bootstrap servers as a list (empty when unset)."""
        return [b.strip() for b in (self.kafka_bootstrap or "").split(",") if b.strip()]

    def kafka_client_config(self) -> dict[str, str]:
        """Librdkafka settings for every client: bootstrap plus the pass-through ones."""
        conf = {k: v.get_secret_value() for k, v in self.kafka_config.items()}
        conf["bootstrap.servers"] = ",".join(self.brokers)
        return conf

    def engine_config(self, *, wait_for_data: bool = False) -> EngineConfig:
        """The pure operators' parameters."""
        return EngineConfig(
            limits=Limits(**self.limits.model_dump()),
            control=ControlKeys(
                {k: v.get_secret_value().encode() for k, v in self.control_keys.items()},
                int(self.control_max_age_s * NS),
            ),
            portfolio_capital=self.portfolio_capital,
            shards=self.shards,
            bar_interval_ns=int(self.bar_interval_s * NS),
            bars_per_day=self.bars_per_day,
            stale_after_ns=int(self.stale_after_s * NS),
            max_wait_ns=int(self.max_wait_ms * 1e6),
            reference_wait_ns=int(self.reference_wait_ms * 1e6),
            lateness_ns=int(self.allowed_lateness_ms * 1e6),
            idle_margin_ns=int(self.idle_margin * 1e6),
            wait_for_data=wait_for_data,
        )

    @property
    def idle_margin(self) -> float:
        """Milliseconds an idle marker stays behind its poll (see ``idle_margin_ms``)."""
        if self.idle_margin_ms is not None:
            return self.idle_margin_ms
        return self.fetch_wait_max_ms + 10.0


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``RISKSTREAM_*`` variables that name no setting (likely typos)."""
    known = {name.upper() for name in Settings.model_fields}
    return sorted(
        key
        for key in environ
        if key.startswith("RISKSTREAM_")
        and key.removeprefix("RISKSTREAM_").split("__")[0] not in known
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and overrides), or a ConfigError saying what to fix."""
    for name in unknown_variables(os.environ):
        log.warning("%s is not a riskstream setting and is ignored (a typo?)", name)
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a JSON value that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"RISKSTREAM_{field.group(1).upper()}" if field else "a RISKSTREAM_* variable"
        raise ConfigError(f"invalid configuration: {name} is not valid JSON") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"RISKSTREAM_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


_SECRET_PARAM = re.compile(r"pass|secret|token|auth|credential", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """``url`` fit for a message: no user info, secret-looking query values shown as ``***``.

    ``redis://user:pw@host:6379/0?password=pw`` gives ``redis://host:6379/0?password=***``.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    query = urlencode(
        [
            (name, "***" if _SECRET_PARAM.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="/*",
    )
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + (f"?{query}" if query else "")
