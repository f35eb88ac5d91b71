"""Secrets never leak: not in repr/str, messages, logs, stderr, /metrics or dead letters.

Every secret has a distinctive value; each test gathers what riskstream shows (objects,
exceptions, the output of ``riskstream run``/``control``/``demo`` on success and failure,
the metrics page, every dead letter) and scans it for all of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import pytest

from dataflows.control_cli import signed_command
from dataflows.embedded import EmbeddedBroker, free_port
from dataflows.kafka_io import check_broker, ensure_topics, follow
from dataflows.redis_sink import RedisStateSink, check_redis, redis_client
from dataflows.settings import Settings, load_settings
from operators.errors import RiskstreamError
from schemas.codec import make_codec
from tests.factories import control, proposal
from tests.fault.test_transport_security import REDIS_PASSWORD, REDIS_USER, tls_redis
from tests.integration.conftest import broker, consume, publish
from tests.integration.test_live_run import live_market, now_ns

__all__ = ["broker", "tls_redis"]  # fixtures

CONTROL_SECRET = "ctl-secret-9a7f31c2"
SASL_SECRET = "sasl-secret-e4b2c8d1"
REGISTRY_URL_SECRET = "reg-url-secret-51d0aa"
REGISTRY_CONF_SECRET = "reg-conf-secret-7be3f9"
SECRETS = (CONTROL_SECRET, SASL_SECRET, REDIS_PASSWORD, REGISTRY_URL_SECRET, REGISTRY_CONF_SECRET)
CLOSED = f"127.0.0.1:{free_port()}"  # nothing listens here


def assert_clean(shown: str | bytes, where: str) -> None:
    """Fail naming the secret and where it showed up."""
    data = shown.encode() if isinstance(shown, str) else shown
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret!r} leaked into {where}"


def secret_env(
    redis_url: str = f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@{CLOSED}/0",
    bootstrap: str = CLOSED,
    *,
    sasl: bool = True,
    registry: str = "",
) -> dict[str, str]:
    """RISKSTREAM_* variables holding every secret (plus the rest of the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    kafka = {"sasl.username": "riskstream", "sasl.password": SASL_SECRET}
    if sasl:
        kafka |= {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN"}
    env |= {
        "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "RISKSTREAM_KAFKA_CONFIG": json.dumps(kafka),
        "RISKSTREAM_REDIS_URL": redis_url,
        "RISKSTREAM_CONTROL_KEYS": json.dumps({"k2026": CONTROL_SECRET}),
        "RISKSTREAM_CONTROL_KEY_ID": "k2026",
        "RISKSTREAM_METRICS_PORT": "0",
    }
    if registry == "url":
        env["RISKSTREAM_SCHEMA_REGISTRY_URL"] = f"http://svc:{REGISTRY_URL_SECRET}@{CLOSED}"
    elif registry == "config":
        env["RISKSTREAM_SCHEMA_REGISTRY_URL"] = f"http://{CLOSED}"
        env["RISKSTREAM_SCHEMA_REGISTRY_CONFIG"] = json.dumps(
            {"basic.auth.user.info": f"svc:{REGISTRY_CONF_SECRET}"}
        )
    return env


@pytest.fixture
def env_secrets(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("RISKSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in secret_env().items():
        if name.startswith("RISKSTREAM_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "RISKSTREAM_SCHEMA_REGISTRY_URL", f"https://svc:{REGISTRY_URL_SECRET}@registry:8081"
    )
    monkeypatch.setenv(
        "RISKSTREAM_SCHEMA_REGISTRY_CONFIG",
        json.dumps({"basic.auth.user.info": f"svc:{REGISTRY_CONF_SECRET}"}),
    )
    return load_settings()


# --- objects and exception messages (in process) --------------------------------------------------


def test_objects_when_printed_hide_every_secret(env_secrets):
    s = env_secrets
    url = s.redis_url.get_secret_value()
    shown = {
        "repr(Settings)": repr(s),
        "str(Settings)": str(s),
        "Settings.model_dump()": str(s.model_dump()),
        "Settings.model_dump_json()": s.model_dump_json(),
        "repr(EngineConfig)": repr(s.engine_config()),
        "repr(RedisStateSink)": repr(RedisStateSink(url, "rs:")),
        "repr(redis client)": repr(redis_client(url)),
    }

    for where, text in shown.items():
        assert_clean(text, where)
    assert "**********" in shown["repr(Settings)"]  # the secrets are there, masked


def error_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(RiskstreamError) as err:
        call(*args, **kwargs)
    return str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@{CLOSED}/0",
        f"redis://:{REDIS_PASSWORD}@{CLOSED}/0",
        f"redis://{CLOSED}/0?password={REDIS_PASSWORD}",
    ],
    ids=["rediss-user-info", "redis-password-only", "password-query-parameter"],
)
def test_check_redis_when_unreachable_names_the_server_not_the_password(url):
    message = error_of(check_redis, url, timeout=0.5)

    assert CLOSED in message
    assert_clean(message, "check_redis error")


def test_check_broker_when_unreachable_with_sasl_hides_the_password(env_secrets, capfd):
    message = error_of(check_broker, env_secrets, timeout=0.5)
    time.sleep(0.2)  # librdkafka logs from its own threads

    assert CLOSED in message
    assert_clean(message, "check_broker error")
    out, err = capfd.readouterr()
    assert_clean(out + err, "librdkafka log output")


def test_signed_command_when_key_id_unknown_hides_the_known_keys(env_secrets):
    message = error_of(signed_command, env_secrets, "HALT", key_id="k2019")

    assert "k2026" in message
    assert_clean(message, "signed_command error")


def test_registry_codec_when_registry_unreachable_hides_its_credentials():
    codec = make_codec(f"http://svc:{REGISTRY_URL_SECRET}@{CLOSED}")

    message = error_of(codec.encode, "ControlCommand", control())

    assert "register ControlCommand" in message
    assert_clean(message, "registry error")


def test_load_settings_when_value_invalid_hides_every_secret(env_secrets, monkeypatch):
    monkeypatch.setenv("RISKSTREAM_SHARDS", "-1")

    message = error_of(load_settings)

    assert "RISKSTREAM_SHARDS" in message
    assert_clean(message, "ConfigError")


# --- command-line output on failure (child processes, run side by side) ---------------------------


def riskstream(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_when_failing_in_every_way_shows_no_secret(broker: EmbeddedBroker):
    reachable = secret_env(bootstrap=broker.bootstrap, sasl=False)
    cases = {
        "run: invalid setting": riskstream("run", env=secret_env() | {"RISKSTREAM_SHARDS": "-1"}),
        "run: broker unreachable": riskstream("run", env=secret_env()),
        "run: redis unreachable": riskstream("run", env=reachable),
        "control: broker unreachable": riskstream("control", "halt", env=secret_env()),
        "control: unknown key id": riskstream(
            "control", "halt", env=reachable | {"RISKSTREAM_CONTROL_KEY_ID": "k2019"}
        ),
        **{
            f"control: registry unreachable ({where} credentials)": riskstream(
                "control",
                "halt",
                env=secret_env(bootstrap=broker.bootstrap, sasl=False, registry=where),
            )
            for where in ("url", "config")
        },
    }
    outputs = {}
    for name, proc in cases.items():
        out, _ = proc.communicate(timeout=90)
        outputs[name] = (proc.returncode, out)

    for name, (code, out) in outputs.items():
        assert code == 2, f"{name}: exit {code}\n{out}"
        assert "error:" in out, name
        assert "Traceback" not in out, f"{name}:\n{out}"
        assert_clean(out, name)
    assert "RISKSTREAM_SHARDS" in outputs["run: invalid setting"][1]
    assert "cannot reach Kafka" in outputs["run: broker unreachable"][1]
    assert "cannot reach Redis" in outputs["run: redis unreachable"][1]
    assert "k2019" in outputs["control: unknown key id"][1]
    for where in ("url", "config"):
        assert (
            "register ControlCommand"
            in outputs[f"control: registry unreachable ({where} credentials)"][1]
        )


# --- a live run with every secret in use ----------------------------------------------------------


def scrape(port: int, wanted: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def raw_records(settings: Settings, role: str, n: int, timeout: float = 20.0) -> list[bytes]:
    """The raw values of the first ``n`` records of a topic (fewer after ``timeout``)."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    for _, value, _ in follow(settings, settings.topics.name(role)):
        if value is not None:
            out.append(value)
        if len(out) >= n or time.monotonic() > deadline:
            break
    return out


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGINT (a graceful stop), then the process's whole output."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.mark.integration
def test_live_run_when_every_secret_is_in_use_leaks_none(broker, tls_redis):
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    env = secret_env(tls_redis.url(), broker.bootstrap, sasl=False) | {
        "RISKSTREAM_TOPICS__PREFIX": f"s{tag}.",
        "RISKSTREAM_REDIS_PREFIX": f"rs:{tag}:",  # inside the ACL user's key pattern
        "RISKSTREAM_METRICS_PORT": str(port),
    }
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_config={"sasl.username": "riskstream", "sasl.password": SASL_SECRET},
        redis_url=tls_redis.url(),
        topics={"prefix": f"s{tag}."},
        control_keys={"k2026": CONTROL_SECRET},
        metrics_port=0,
    )
    ensure_topics(settings, settings.topics.all())
    proc = riskstream("run", env=env)
    try:
        live_market(settings)
        key = CONTROL_SECRET.encode()
        publish(
            settings,
            [
                ("ControlCommand", control(key=b"forged", key_id="k2026", ts_event=now_ns())),
                (
                    "ControlCommand",
                    control(key=key, key_id="k2026", action="RESUME", ts_event=now_ns()),
                ),
                ("TradeProposal", b"junk"),
                ("TradeProposal", proposal(proposal_id="p", ts_event=now_ns())),
            ],
        )
        [score] = consume(settings, "scores", "RiskScore", 1)
        letters = raw_records(settings, "dlq", 2)
        metrics = scrape(port, 'riskstream_control_refused_total{reason="BAD_SIGNATURE"} 1.0')
        state = redis_client(tls_redis.url()).hgetall(f"rs:{tag}:trading_state:GLOBAL:")
    finally:
        output = stop(proc)

    misses = [ln for ln in metrics.splitlines() if "history_misses" in ln or "late_inputs" in ln]
    assert score["decision"] == "APPROVE", (score["reasons"], score["stale"], misses)
    assert len(letters) == 2, output
    assert state.get(b"state") == b"ACTIVE", output  # the signed RESUME, written over TLS
    assert 'riskstream_control_refused_total{reason="BAD_SIGNATURE"} 1.0' in metrics
    assert_clean(output, "riskstream run output")
    assert_clean(metrics, "/metrics")
    for letter in letters:
        assert_clean(letter, "a dead letter")
    assert_clean(json.dumps(score, default=str), "a RiskScore")
    assert proc.returncode == 0, output


@pytest.mark.integration
def test_demo_when_every_secret_is_configured_prints_none(tls_redis):
    """``riskstream demo`` (embedded broker, TLS Redis with an ACL user, a signed drill)."""
    env = secret_env(tls_redis.url(), sasl=False) | {
        "RISKSTREAM_REDIS_PREFIX": f"rs:{uuid.uuid4().hex[:8]}:",
        "RISKSTREAM_METRICS_PORT": str(free_port()),
    }
    del env["RISKSTREAM_KAFKA_BOOTSTRAP"]  # the demo starts its own broker
    args = ["--duration", "10", "--halt-at", "3", "--halt-for", "2", "--bad-every", "5"]

    done = subprocess.run(
        [sys.executable, "-m", "dataflows.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "HALT GLOBAL sent (signed" in output, output  # signed with the secret key
    assert_clean(output, "riskstream demo output")
