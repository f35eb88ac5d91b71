"""Transport security: Kafka TLS/SASL settings reach every client; Redis over TLS with an
ACL user works through riskstream's own Redis path, and bad credentials fail clearly;
nothing read from the network is ever unpickled (a scan of the code)."""

from __future__ import annotations

import ast
import functools
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import redis

import dataflows.kafka_io as kafka_io
import dataflows.kafka_source as kafka_source
import dataflows.replay as replay
from dataflows.embedded import free_port
from dataflows.kafka_io import RecordSink, check_broker, consumer_config, follow, producer_config
from dataflows.kafka_source import RiskSource, list_partitions
from dataflows.redis_sink import RedisStateSink, check_redis, redis_client
from dataflows.settings import Settings, redacted_url
from operators.errors import InfrastructureError
from operators.records import StateWrite
from schemas.codec import SingleObjectCodec
from tests.factories import T0

SASL_PASSWORD = "sasl-pw-7c1e9b"
REDIS_USER, REDIS_PASSWORD = "riskstream", "redis-acl-pw-4f2a8d"
# Least privilege for the state sink: its own key prefix, the commands it sends.
SINK_ACL = [
    "on",
    f">{REDIS_PASSWORD}",
    "resetkeys",
    "~rs:*",
    "-@all",
    "+ping",
    "+hget",
    "+hgetall",
    "+hset",
    "+set",  # the sink's liveness marker (SET ... EX ... GET)
    "+evalsha",
    "+eval",
    "+script|load",
    "+script|exists",
]


# --- certificates and a TLS redis-server -------------------------------------------------------


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA certificate and key."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", f"/CN={name}", "-keyout", key, "-out", cert, cwd=directory,
    )  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 / localhost signed by ``ca``."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", key, "-out", csr, cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "1", "-extfile", ext, "-out", cert, cwd=directory,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class TlsRedis:
    """A redis-server that only speaks TLS, with an ACL user and no default user."""

    port: int
    ca: Path
    untrusted_ca: Path

    def url(self, password: str = REDIS_PASSWORD, ca: Path | None = None) -> str:
        ca_path = self.ca if ca is None else ca
        return f"rediss://{REDIS_USER}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca_path}"


def start_tls_redis(directory: Path) -> tuple[subprocess.Popen[bytes], TlsRedis]:
    """Start a TLS-only redis-server (plain port 0) and wait until it answers over TLS."""
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    ca = make_ca(directory, "test-ca")
    untrusted, _ = make_ca(directory, "other-ca")
    cert, key = make_server_cert(directory, ca)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca[0]),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--user",
            "default",
            "off",
            "--user",
            REDIS_USER,
            *SINK_ACL,
        ],
        stdout=(directory / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = TlsRedis(port, ca[0], untrusted)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_client(server.url(), 0.5).ping()
            return proc, server
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"TLS redis-server did not start:\n{log}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    proc, server = start_tls_redis(tmp_path_factory.mktemp("tls-redis"))
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


# --- Redis: TLS and ACL through riskstream's Redis path ------------------------------------------


def test_check_redis_when_rediss_url_names_acl_user_and_ca_succeeds(tls_redis):
    check_redis(tls_redis.url())  # the default user is off: only the ACL user gets in

    client = redis_client(tls_redis.url())
    assert client.connection_pool.connection_class is redis.SSLConnection


def test_state_sink_when_over_tls_with_acl_writes_and_guards_by_event_time(tls_redis):
    part = RedisStateSink(tls_redis.url(), "rs:").build("state_out", 0, 1)
    part.write_batch([StateWrite("trading_state:GLOBAL:", T0 + 2, {"state": "HALTED"})])
    part.write_batch([StateWrite("trading_state:GLOBAL:", T0 + 1, {"state": "ACTIVE"})])  # older
    part.close()

    stored = redis_client(tls_redis.url()).hgetall("rs:trading_state:GLOBAL:")

    assert stored == {b"state": b"HALTED", b"ts_event": f"{T0 + 2:020d}".encode()}


def test_acl_when_sink_user_writes_outside_its_prefix_is_refused(tls_redis):
    """The documented least-privilege ACL is in force (a wrong ACL would let this pass)."""
    client = redis_client(tls_redis.url())

    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hset("other-app:key", "f", "v")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()


def check_redis_error(url: str) -> str:
    with pytest.raises(InfrastructureError) as err:
        check_redis(url, timeout=2.0)
    return str(err.value)


def test_check_redis_when_password_wrong_says_so_without_echoing_it(tls_redis):
    message = check_redis_error(tls_redis.url(password="wrong-pw-0b7d"))

    assert "invalid username-password pair" in message
    assert f"127.0.0.1:{tls_redis.port}" in message
    assert "wrong-pw-0b7d" not in message and REDIS_PASSWORD not in message


def test_check_redis_when_server_cert_from_untrusted_ca_says_verify_failed(tls_redis):
    message = check_redis_error(tls_redis.url(ca=tls_redis.untrusted_ca))

    assert "certificate verify failed" in message
    assert REDIS_PASSWORD not in message


def test_check_redis_when_plain_redis_url_meets_tls_only_server_fails(tls_redis):
    plain = tls_redis.url().replace("rediss://", "redis://").partition("?")[0]

    message = check_redis_error(plain)

    assert f"127.0.0.1:{tls_redis.port}" in message
    assert REDIS_PASSWORD not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://u:pw-1@h:6380/0?ssl_ca_certs=/ca.pem", "rediss://h:6380/0?ssl_ca_certs=/ca.pem"),
        ("redis://h:6379/0?password=pw-1", "redis://h:6379/0?password=***"),
        ("redis://:p%40w-1@h:6379/0?ssl_password=pw-1", "redis://h:6379/0?ssl_password=***"),
        ("unix://u:pw-1@/run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
        ("https://svc:pw-1@registry:8081", "https://registry:8081"),
    ],
)
def test_redacted_url_when_url_carries_credentials_keeps_only_where(url, shown):
    assert redacted_url(url) == shown


# --- Kafka: TLS and SASL settings reach every client ----------------------------------------------


@pytest.fixture
def kafka_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """RISKSTREAM_KAFKA_CONFIG with SASL_SSL (SCRAM) and a CA file; a closed bootstrap port."""
    ca, _ = make_ca(tmp_path, "kafka-ca")
    conf = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "riskstream",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
    }
    import json

    monkeypatch.setenv("RISKSTREAM_KAFKA_CONFIG", json.dumps(conf))
    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    return conf


class Clients:
    """Records the configuration of every Kafka client riskstream builds (real clients)."""

    def __init__(self) -> None:
        self.built: list[tuple[str, dict[str, Any]]] = []

    def wrap(self, real: Any) -> Any:
        def build(config: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.built.append((real.__name__, dict(config)))
            return real(config, *args, **kwargs)  # librdkafka validates the settings

        return build


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Clients:
    from confluent_kafka.admin import AdminClient

    rec = Clients()
    for module, name, real in [
        (kafka_io, "Producer", confluent_kafka.Producer),
        (kafka_io, "AdminClient", AdminClient),
        (confluent_kafka, "Consumer", confluent_kafka.Consumer),  # follow() imports it late
        (kafka_source, "Consumer", confluent_kafka.Consumer),
        (kafka_source, "AdminClient", AdminClient),
        (replay, "Consumer", confluent_kafka.Consumer),
    ]:
        monkeypatch.setattr(module, name, rec.wrap(real))
    return rec


def test_kafka_config_when_tls_and_sasl_set_reaches_producer_and_consumer_settings(kafka_tls):
    settings = Settings()

    for conf in (producer_config(settings), consumer_config(settings)):
        assert {k: conf[k] for k in kafka_tls} == kafka_tls
        assert conf["bootstrap.servers"] == settings.kafka_bootstrap


def test_kafka_clients_when_tls_and_sasl_set_are_all_built_with_them(kafka_tls, clients):
    settings = Settings()
    consumer = consumer_config(settings)

    with pytest.raises(InfrastructureError):
        check_broker(settings, timeout=0.5)  # AdminClient
    kafka_io.Publisher(settings, SingleObjectCodec())  # Producer
    sink = RecordSink(producer_config(settings), "t", "RiskScore", SingleObjectCodec(), dict, bytes)
    sink.build("scores_out", 0, 1).close()  # the flow's sinks
    source = RiskSource(consumer, ["t"], start_offsets={("t", 0): 0})
    source.build_part("input", "0-t", None).close()  # the flow's source
    with pytest.raises(Exception, match=r"(?i)metadata|transport|timed out"):
        list_partitions(consumer, ["t"], timeout=0.5)  # AdminClient of the source
    with pytest.raises(Exception, match=r"(?i)metadata|transport|timed out"):
        next(iter(follow(settings, "t", timeout=0.5)))  # watch, demo, tests
    replay.RangeScanner(consumer).close()  # replay and diff

    kinds = [kind for kind, _ in clients.built]
    assert sorted(set(kinds)) == ["AdminClient", "Consumer", "Producer"]
    assert len(clients.built) == 7
    for kind, conf in clients.built:
        assert {k: conf.get(k) for k in kafka_tls} == kafka_tls, kind


# --- nothing from the network is unpickled --------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dataflows", "operators", "models", "schemas", "export")
UNPICKLERS = {
    "pickle.loads", "pickle.load", "pickle.Unpickler", "_pickle.loads", "_pickle.load",
    "cPickle.loads", "dill.loads", "dill.load", "cloudpickle.loads", "cloudpickle.load",
    "joblib.load", "marshal.loads", "marshal.load", "pandas.read_pickle", "pd.read_pickle",
    "shelve.open", "torch.load", "numpy.load", "np.load", "yaml.load", "yaml.unsafe_load",
}  # fmt: skip
# Where unpickling is allowed, and why.
ALLOWED = {
    ("operators/snapshot.py", "thaw", "pickle.loads"): "Bytewax recovery state we wrote",
    ("models/regime_tft.py", "train", "torch.load"): "the checkpoint training just wrote",
    ("models/vol_nbeats.py", "load_checkpoint", "torch.load"): "training's own checkpoint",
}
STATEFUL_BUILDERS = {"stateful_batch", "stateful_map", "stateful_flat_map", "stateful"}


def package_trees() -> tuple[tuple[str, ast.Module], ...]:
    """(path relative to the repository, syntax tree) of every module of the package."""
    return _parsed(ROOT, PACKAGES)


@functools.cache
def _parsed(root: Path, packages: tuple[str, ...]) -> tuple[tuple[str, ast.Module], ...]:
    return tuple(
        (str(path.relative_to(root)), ast.parse(path.read_text(), str(path)))
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    )


def dotted(node: ast.expr) -> str:
    """``a.b.c`` of a name or attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def enclosing_functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Every node -> the name of the innermost function around it ('' at module level)."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else name
            )
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def imported_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted origin, for ``from pickle import loads as x`` and friends."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
    return out


def never_unpickles(name: str, call: ast.Call) -> bool:
    """torch.load(weights_only=True) and numpy.load without allow_pickle=True are safe."""
    keywords = {k.arg: k.value for k in call.keywords}

    def is_true(arg: str) -> bool:
        value = keywords.get(arg)
        return isinstance(value, ast.Constant) and value.value is True

    if name == "torch.load":
        return is_true("weights_only")
    if name in {"numpy.load", "np.load"}:
        flag = keywords.get("allow_pickle")
        return flag is None or (isinstance(flag, ast.Constant) and flag.value is False)
    return False


def unpickling_calls() -> list[tuple[str, str, str, ast.Call]]:
    """(file, function, callee, call) of every call that can unpickle."""
    found = []
    for file, tree in package_trees():
        owner, aliases = enclosing_functions(tree), imported_aliases(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            head, _, rest = name.partition(".")
            name = aliases.get(head, head) + (f".{rest}" if rest else "")
            if name not in UNPICKLERS:
                continue
            if not never_unpickles(name, node):
                found.append((file, owner.get(node, ""), name, node))
    return found


def test_unpickling_when_code_scanned_happens_only_in_the_allowed_places():
    calls = {(file, func, name) for file, func, name, _ in unpickling_calls()}

    assert calls <= set(ALLOWED), f"unpickling outside the allow-list: {calls - set(ALLOWED)}"
    assert ("operators/snapshot.py", "thaw", "pickle.loads") in calls  # the scan does see it


def test_unpickling_scan_when_given_a_disguised_call_finds_it(tmp_path, monkeypatch):
    """The scan is not fooled by aliases (guards the test above)."""
    pkg = tmp_path / "operators"
    pkg.mkdir()
    (pkg / "evil.py").write_text(
        "from pickle import loads as l\nimport dill as d\ndef f(b):\n    return l(b), d.loads(b)\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("operators",))

    found = {(f, fn, n) for f, fn, n, _ in unpickling_calls()}

    assert found == {
        ("operators/evil.py", "f", "pickle.loads"),
        ("operators/evil.py", "f", "dill.loads"),
    }


def test_thaw_when_called_only_restores_bytewax_resume_state():
    """``thaw`` runs in a stateful logic's ``__init__`` on its own ``state`` parameter, and
    those classes are built only by Bytewax stateful operators (which pass recovery state)."""
    thawing: set[str] = set()
    for file, tree in package_trees():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                    if dotted(call.func) != "thaw":
                        continue
                    params = {a.arg for a in fn.args.args}
                    arg = call.args[0]
                    assert fn.name == "__init__", f"{file}: {cls.name}.{fn.name} thaws"
                    assert isinstance(arg, ast.Name) and arg.id in params, f"{file}: {cls.name}"
                    thawing.add(cls.name)
    assert {"ControlGateLogic", "ShardLogic", "MarketLogic"} <= thawing

    for file, tree in package_trees():
        builders = {
            id(lam.body)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and dotted(call.func).split(".")[-1] in STATEFUL_BUILDERS
            for lam in call.args
            if isinstance(lam, ast.Lambda)
        }
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and dotted(call.func).split(".")[-1] in thawing:
                assert id(call) in builders, (
                    f"{file}:{call.lineno} builds {dotted(call.func)} outside a Bytewax"
                    " stateful operator: its state argument might not be recovery state"
                )


def test_network_facing_modules_when_imported_do_not_import_pickle():
    network = {
        "dataflows/kafka_source.py", "dataflows/kafka_io.py", "dataflows/redis_sink.py",
        "dataflows/replay.py", "schemas/codec.py", "operators/ingest.py",
        "operators/validate.py", "operators/control.py", "operators/control_gate.py",
    }  # fmt: skip
    for file, tree in package_trees():
        if file not in network:
            continue
        names = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])
        }
        assert not names & {"pickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}, file
