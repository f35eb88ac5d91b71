"""Settings from RISKSTREAM_* variables: parsing, ConfigError naming the variable, secrets."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from dataflows.settings import Settings, load_settings
from operators.config import NS
from operators.errors import ConfigError

CONTROL_SECRET = "hmac-secret-7f3a9c"
REDIS_PASSWORD = "redis-pw-91b2e4"
SASL_PASSWORD = "sasl-pw-c0ffee42"
REGISTRY_PASSWORD = "registry-pw-5d6e"
SECRETS = (CONTROL_SECRET, REDIS_PASSWORD, SASL_PASSWORD)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("RISKSTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_CONTROL_KEYS", f'{{"2026": "{CONTROL_SECRET}"}}')
    monkeypatch.setenv("RISKSTREAM_REDIS_URL", f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0")
    monkeypatch.setenv(
        "RISKSTREAM_KAFKA_CONFIG",
        f'{{"security.protocol": "SASL_SSL", "sasl.username": "svc", '
        f'"sasl.password": "{SASL_PASSWORD}"}}',
    )


def config_error(**overrides) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(**overrides)
    return str(err.value)


# --- good values ----------------------------------------------------------------------------


def test_load_settings_when_nothing_set_gives_documented_defaults():
    settings = load_settings()
    engine = settings.engine_config()

    assert settings.kafka_bootstrap is None
    assert settings.redis_url is None
    assert settings.brokers == []
    assert engine.limits.concentration == 0.25
    assert engine.shards == 8
    assert engine.control.max_age_ns == 60 * NS
    assert engine.stale_after_ns == 30 * NS
    assert engine.max_wait_ns == 250_000_000


def test_load_settings_when_nested_limit_set_reaches_engine_config(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_LIMITS__CONCENTRATION", "0.2")
    monkeypatch.setenv("RISKSTREAM_LIMITS__MAX_ORDER_NOTIONAL", "1e6")

    limits = load_settings().engine_config().limits

    assert (limits.concentration, limits.max_order_notional) == (0.2, 1e6)
    assert limits.max_adv_share == 0.10


def test_load_settings_when_bootstrap_lists_brokers_splits_them(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", "k1:9092, k2:9093")

    settings = load_settings()

    assert settings.brokers == ["k1:9092", "k2:9093"]
    assert settings.kafka_client_config()["bootstrap.servers"] == "k1:9092,k2:9093"


def test_load_settings_when_secrets_set_hands_them_to_clients_only(secret_env):
    settings = load_settings()

    assert settings.kafka_client_config()["sasl.password"] == SASL_PASSWORD
    assert settings.redis_url.get_secret_value().endswith("@cache.internal:6379/0")
    assert settings.engine_config().control.keys == {"2026": CONTROL_SECRET.encode()}


def test_load_settings_when_control_max_age_set_converts_to_nanoseconds(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_CONTROL_MAX_AGE_S", "2.5")

    assert load_settings().engine_config().control.max_age_ns == 2_500_000_000


def test_settings_when_changed_after_load_refuses():
    settings = load_settings()

    with pytest.raises(ValidationError):  # frozen_instance
        settings.shards = 3  # type: ignore[misc]


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RISKSTREAM_LIMITS__CONCENTRATION", "2"),
        ("RISKSTREAM_LIMITS__CONCENTRATION", "0"),
        ("RISKSTREAM_LIMITS__CONCENTRATION", "a quarter"),
        ("RISKSTREAM_LIMITS__MAX_ADV_SHARE", "-0.1"),
        ("RISKSTREAM_LIMITS__PRICE_COLLAR", "nan"),
        ("RISKSTREAM_KAFKA_BOOTSTRAP", "foo"),
        ("RISKSTREAM_KAFKA_BOOTSTRAP", "broker:port"),
        ("RISKSTREAM_KAFKA_BOOTSTRAP", "k1:9092,:9093"),
        ("RISKSTREAM_REDIS_URL", "localhost:6379"),
        ("RISKSTREAM_REDIS_URL", "http://localhost:6379"),
        ("RISKSTREAM_SHARDS", "-1"),
        ("RISKSTREAM_SHARDS", "0"),
        ("RISKSTREAM_SHARDS", "eight"),
        ("RISKSTREAM_TOPIC_PARTITIONS", "0"),
        ("RISKSTREAM_CONTROL_MAX_AGE_S", "0"),
        ("RISKSTREAM_METRICS_PORT", "70000"),
        ("RISKSTREAM_PORTFOLIO_CAPITAL", "-5"),
    ],
)
def test_load_settings_when_value_invalid_raises_config_error_naming_variable(
    monkeypatch, var, value
):
    monkeypatch.setenv(var, value)

    message = config_error()

    assert var in message


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RISKSTREAM_KAFKA_CONFIG", '{"sasl.password": "x"'),
        ("RISKSTREAM_CONTROL_KEYS", "not json"),
        ("RISKSTREAM_SCHEMA_REGISTRY_CONFIG", "[1, 2"),
    ],
)
def test_load_settings_when_json_variable_malformed_raises_config_error_naming_variable(
    monkeypatch, var, value
):
    monkeypatch.setenv(var, value)

    message = config_error()

    assert var in message


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RISKSTREAM_STALE_AFTER_S", "inf"),
        ("RISKSTREAM_CONTROL_MAX_AGE_S", "inf"),
        ("RISKSTREAM_BAR_INTERVAL_S", "inf"),
        ("RISKSTREAM_MAX_WAIT_MS", "inf"),
        ("RISKSTREAM_PORTFOLIO_CAPITAL", "inf"),
        ("RISKSTREAM_BAR_INTERVAL_S", "1e-12"),  # rounds to a 0 ns bar
    ],
)
def test_load_settings_when_number_unusable_raises_config_error_at_start_up(
    monkeypatch, var, value
):
    monkeypatch.setenv(var, value)

    try:
        engine = load_settings().engine_config()
    except ConfigError as exc:
        assert var in str(exc)
        return
    pytest.fail(f"{var}={value} was accepted: {engine!r}")


def test_load_settings_when_several_values_invalid_names_each_variable(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_SHARDS", "-1")
    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", "foo")

    message = config_error()

    assert "RISKSTREAM_SHARDS" in message
    assert "RISKSTREAM_KAFKA_BOOTSTRAP" in message


def test_load_settings_when_override_invalid_raises_config_error():
    assert "RISKSTREAM_SHARDS" in config_error(shards=0)


# --- secrets --------------------------------------------------------------------------------


def test_settings_when_printed_hide_every_secret(secret_env):
    settings = load_settings()

    shown = [repr(settings), str(settings), repr(settings.engine_config())]
    shown.append(str(settings.model_dump()))
    for text in shown:
        for secret in SECRETS:
            assert secret not in text


def test_config_error_when_another_value_invalid_hides_every_secret(secret_env, monkeypatch):
    monkeypatch.setenv("RISKSTREAM_SHARDS", "-1")

    message = config_error()

    assert "RISKSTREAM_SHARDS" in message
    for secret in SECRETS:
        assert secret not in message


@pytest.mark.parametrize(
    ("var", "value", "secret"),
    [
        ("RISKSTREAM_REDIS_URL", f"{REDIS_PASSWORD}@cache.internal:6379", REDIS_PASSWORD),
        ("RISKSTREAM_REDIS_URL", f"http://:{REDIS_PASSWORD}@cache:6379", REDIS_PASSWORD),
        ("RISKSTREAM_KAFKA_CONFIG", f'{{"sasl.password": ["{SASL_PASSWORD}"]}}', SASL_PASSWORD),
        ("RISKSTREAM_KAFKA_CONFIG", f'{{"sasl.password": "{SASL_PASSWORD}"', SASL_PASSWORD),
        ("RISKSTREAM_CONTROL_KEYS", f'["{CONTROL_SECRET}"]', CONTROL_SECRET),
    ],
)
def test_config_error_when_secret_value_itself_invalid_does_not_echo_it(
    monkeypatch, var, value, secret
):
    monkeypatch.setenv(var, value)

    message = config_error()

    assert var in message
    assert secret not in message


def test_settings_when_registry_url_carries_credentials_hides_them(monkeypatch):
    # Confluent clients accept basic-auth user info in the registry URL.
    monkeypatch.setenv(
        "RISKSTREAM_SCHEMA_REGISTRY_URL", f"https://svc:{REGISTRY_PASSWORD}@registry:8081"
    )

    settings = load_settings()

    assert REGISTRY_PASSWORD not in repr(settings)
    assert REGISTRY_PASSWORD not in str(settings)


def test_settings_class_when_built_directly_reads_the_same_environment(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_SHARDS", "16")

    assert Settings().shards == load_settings().shards == 16
