"""Deployment files: each is valid for its tool, and names, ports and labels agree.

Tools (offline, no container engine, no image pulls): ``promtool`` (Debian ``prometheus``),
``docker-compose`` 1.29 (Debian ``docker-compose``; ``config`` needs no engine) and
``kubernetes-validate`` (PyPI, schemas bundled). A test skips only when its tool is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S_VERSION = "1.30.0"
PROCESSES = ("riskstream-0", "riskstream-1")

# Metrics that are documented but not (all) exported yet, Bytewax's own, and Prometheus's.
FUTURE_METRICS = {
    "riskstream_trading_state",
    "riskstream_regime_probability",
    "riskstream_model_load_failures_total",
    "riskstream_model_inference_seconds",
    "up",
}
INSTALL_HINT = {
    "promtool": "apt-get install -y prometheus",
    "docker-compose": "apt-get install -y docker-compose",
    "kubernetes-validate": ".venv/bin/pip install kubernetes-validate",
}


# ----------------------------------------------------------------------------- helpers
def tool(name: str) -> str:
    """The tool's path (the venv's bin first, then PATH); skip the test when it is absent."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; install it with: {INSTALL_HINT[name]}")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objs = {}
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def only(objs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for (k, _), o in objs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def env_value(c: dict[str, Any], name: str) -> str:
    for e in c.get("env", []):
        if e["name"] == name:
            return e["value"]
    raise AssertionError(f"container has no env {name}")


def resolve_port(c: dict[str, Any], port: int | str) -> int:
    """A port number, or a named container port resolved to its number."""
    if isinstance(port, int):
        return port
    for p in c["ports"]:
        if p["name"] == port:
            return p["containerPort"]
    raise AssertionError(f"no container port named {port!r}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as docker-compose resolves it (anchors, env_file, defaults)."""
    env = {k: v for k, v in os.environ.items() if k != "RISKSTREAM_ENV_FILE"}
    out = run([tool("docker-compose"), "-f", str(COMPOSE), "config"], cwd=ROOT, env=env).stdout
    return yaml.safe_load(out)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("RISKSTREAM_"):
            monkeypatch.delenv(key)
    yield monkeypatch


def load_with_env(env: dict[str, str], mp: pytest.MonkeyPatch) -> Any:
    from dataflows.settings import load_settings

    for k, v in env.items():
        mp.setenv(k, str(v))
    return load_settings()


def setting_exists(var: str) -> bool:
    """True when RISKSTREAM_A__B names a field of Settings (``__`` descends into models)."""
    from dataflows.settings import Settings

    model: type[BaseModel] = Settings
    parts = var.removeprefix("RISKSTREAM_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i == len(parts) - 1:
            return True
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return typing.get_origin(ann) is dict
    return True


# ------------------------------------------------------------------- PromQL metric names
_PROMQL_DROP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # string literals (label values, regexes)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range and subquery selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
    re.compile(r"\$\{?\w+\}?"),  # Grafana variables
]
# An identifier not preceded by a word character or dot (numbers like 1e-9) and not
# followed by "(" (functions and aggregations).
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
_DECLARED = re.compile(r'\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*"([A-Za-z_:][\w:]*)"')


def promql_metrics(expr: str) -> set[str]:
    for pattern in _PROMQL_DROP:
        expr = pattern.sub(" ", expr)
    return {m for m in _IDENT.findall(expr) if m.lower() not in _KEYWORDS}


def known_metrics() -> set[str]:
    """Names exported by operators/metrics.py (read as text), plus the documented future set."""
    source = (ROOT / "operators" / "metrics.py").read_text()
    declared = _DECLARED.findall(source)
    names = {name for _, name in declared}
    names |= {
        f"{n}_total" for kind, n in declared if kind == "Counter" and not n.endswith("_total")
    }
    return names | FUTURE_METRICS


def unknown_metrics(expr: str, known: set[str]) -> set[str]:
    out = set()
    for name in promql_metrics(expr):
        base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
        if name not in known and base not in known:
            out.add(name)
    return out


def test_promql_metric_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{x=~"b.c"}[5m])))'
        " > 1e-9 and (sum(rate(c_total[$__rate_interval])) or vector(0)) == 0"
        " unless max without (pod) (d) offset 5m"
    )
    assert promql_metrics(expr) == {"a_seconds_bucket", "c_total", "d"}
    assert unknown_metrics(expr, {"a_seconds", "c_total"}) == {"d"}


# ------------------------------------------------------------------------- Prometheus
def test_promtool_check_config():
    run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])


def test_promtool_check_rules():
    run([tool("promtool"), "check", "rules", str(PROM / "rules.yml")])


def test_promtool_test_rules():
    run([tool("promtool"), "test", "rules", str(PROM / "rules_test.yml")], cwd=PROM)


def test_every_alert_has_a_firing_and_a_quiet_unit_case():
    groups = load_yaml(PROM / "rules.yml")["groups"]
    alerts = [r["alert"] for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"
    cases = [c for t in load_yaml(PROM / "rules_test.yml")["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(alerts) - firing == set(), "alerts without a firing case"
    assert set(alerts) - quiet == set(), "alerts without a non-firing case"
    assert (firing | quiet) - set(alerts) == set(), "cases for alerts that do not exist"


def test_alert_rules_name_known_metrics():
    known = known_metrics()
    for group in load_yaml(PROM / "rules.yml")["groups"]:
        for rule in group["rules"]:
            assert promql_metrics(rule["expr"]), rule["alert"]
            assert unknown_metrics(rule["expr"], known) == set(), rule.get("alert")


# ------------------------------------------------------------------------- Compose
def test_compose_config_is_valid(compose: dict[str, Any]):
    services = compose["services"]
    expected = {"kafka", "schema-registry", "redis", "prometheus", "grafana", *PROCESSES}
    assert expected <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert str(kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "true"
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")


def test_compose_riskstream_processes_agree(compose: dict[str, Any], clean_env: pytest.MonkeyPatch):
    from dataflows.cli import build_parser

    services = compose["services"]
    procs = {name: services[name] for name in PROCESSES}
    args = {name: build_parser().parse_args(svc["command"]) for name, svc in procs.items()}
    assert sorted(a.process_id for a in args.values()) == list(range(len(PROCESSES)))
    addresses = {a.addresses for a in args.values()}
    assert len(addresses) == 1, "every process needs the same address list"
    hosts = [addr.rsplit(":", 1)[0] for addr in addresses.pop().split(";")]
    for name, a in args.items():
        assert hosts[a.process_id] in (name, procs[name].get("hostname"))
    # Recovery: one shared volume, initialised once for exactly this many processes.
    recovery_volumes = set()
    for name, a in args.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in procs[name]["volumes"]}
        recovery_volumes.add(mounts[str(a.recovery_dir)])
    assert len(recovery_volumes) == 1
    init = " ".join(services["recovery-init"]["command"])
    assert f"bytewax.recovery {next(iter(args.values())).recovery_dir} {len(PROCESSES)}" in init
    assert procs[PROCESSES[0]]["depends_on"]["recovery-init"]["condition"] == (
        "service_completed_successfully"
    )
    kafka_env = services["kafka"]["environment"]
    # Settings: every RISKSTREAM_* variable is a real setting and the whole set validates.
    for svc in procs.values():
        env = svc["environment"]
        assert [k for k in env if k.startswith("RISKSTREAM_") and not setting_exists(k)] == []
        settings = load_with_env(env, clean_env)
        assert settings.metrics_host == "0.0.0.0"
        assert settings.control_keys, "control keys come from the env file"
        assert settings.brokers == ["kafka:19092"]
        assert "PLAINTEXT://kafka:19092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
        assert settings.redis_url.get_secret_value().startswith("redis://redis:")
        assert settings.schema_registry_url is not None
        assert settings.schema_registry_url.get_secret_value() == "http://schema-registry:8081"
    # Prometheus scrapes each process on its metrics port.
    targets = {
        t
        for job in load_yaml(PROM / "prometheus.yml")["scrape_configs"]
        if job["job_name"] == "riskstream"
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets == {f"{name}:{settings.metrics_port}" for name in PROCESSES}


def test_compose_mounts_prometheus_and_grafana_files(compose: dict[str, Any]):
    services = compose["services"]
    prom = {v.split(":")[1]: Path(v.split(":")[0]) for v in services["prometheus"]["volumes"]}
    assert prom["/etc/prometheus"] == PROM
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    graf = {v.split(":")[1]: Path(v.split(":")[0]) for v in services["grafana"]["volumes"]}
    assert graf["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/riskstream.yml")["providers"]
    assert graf[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = Path(services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (graf[str(home.parent)] / home.name).is_file()
    (ds,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert ds["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------- Kubernetes
def test_kubernetes_validate_manifests():
    files = [str(p) for p in k8s_files()]
    assert len(files) >= 6
    run([tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", "--quiet", *files])


def test_k8s_names_ports_and_labels_agree():
    objs = k8s_objects()
    sts = only(objs, "StatefulSet")
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    c = container(sts)

    def selects_pods(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    assert selects_pods(sts["spec"]["selector"]["matchLabels"])
    services = {name: o for (kind, name), o in objs.items() if kind == "Service"}
    for name, svc in services.items():
        assert selects_pods(svc["spec"]["selector"]), f"Service {name} selects no riskstream pod"
    assert selects_pods(only(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])

    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert env_value(c, "HEADLESS_SERVICE") == sts["spec"]["serviceName"]
    assert int(env_value(c, "PROCESS_COUNT")) == sts["spec"]["replicas"]
    timely = int(env_value(c, "TIMELY_PORT"))
    assert [resolve_port(c, p["targetPort"]) for p in headless["spec"]["ports"]] == [timely]

    config = only(objs, "ConfigMap")
    metrics_port = int(config["data"]["RISKSTREAM_METRICS_PORT"])
    assert config["data"]["RISKSTREAM_METRICS_HOST"] == "0.0.0.0"
    assert resolve_port(c, "metrics") == metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert resolve_port(c, c[probe]["httpGet"]["port"]) == metrics_port, probe
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    metrics_svc = services["riskstream-metrics"]
    metrics_ports = [resolve_port(c, p["targetPort"]) for p in metrics_svc["spec"]["ports"]]
    assert metrics_ports == [metrics_port]
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == metrics_port

    # References resolve: ConfigMap, Secret keys (secret.example.yaml), account, volumes.
    for ref in c.get("envFrom", []):
        assert ("ConfigMap", ref["configMapRef"]["name"]) in objs
    secret = objs[("Secret", "riskstream-secrets")]
    for e in c["env"]:
        key_ref = e.get("valueFrom", {}).get("secretKeyRef")
        if key_ref:
            assert objs[("Secret", key_ref["name"])] is secret
            assert key_ref["key"] in secret["stringData"]
    assert ("ServiceAccount", pod["spec"]["serviceAccountName"]) in objs
    volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert set(mounts) <= volumes | claims
    assert mounts["recovery"] == env_value(c, "RECOVERY_DIR") == "/var/lib/riskstream/recovery"
    assert "recovery" in claims
    assert c["securityContext"]["readOnlyRootFilesystem"] and mounts.get("tmp") == "/tmp"
    assert c["resources"]["requests"] and c["resources"]["limits"]

    kustomization = load_yaml(K8S / "kustomization.yaml")
    applied = {p.name for p in k8s_files()} - {"secret.example.yaml"}
    assert set(kustomization["resources"]) == applied


def test_k8s_settings_are_valid(clean_env: pytest.MonkeyPatch):
    objs = k8s_objects()
    c = container(only(objs, "StatefulSet"))
    env = dict(only(objs, "ConfigMap")["data"])
    secret = objs[("Secret", "riskstream-secrets")]["stringData"]
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
    assert [k for k in env if k.startswith("RISKSTREAM_") and not setting_exists(k)] == []
    settings = load_with_env(env, clean_env)
    assert settings.redis_url is not None and settings.brokers and settings.control_keys


def test_k8s_entrypoint_derives_process_id_addresses_and_recovery(tmp_path: Path):
    from dataflows.cli import build_parser

    c = container(only(k8s_objects(), "StatefulSet"))
    assert c["command"] == ["/bin/sh", "-c"]
    (script,) = c["args"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "riskstream").write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    (fake_bin / "riskstream").chmod(0o755)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    env = {
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOSTNAME": "riskstream-1",
        "PROCESS_COUNT": "3",
        "HEADLESS_SERVICE": env_value(c, "HEADLESS_SERVICE"),
        "TIMELY_PORT": env_value(c, "TIMELY_PORT"),
        "RECOVERY_DIR": str(recovery),
        "SNAPSHOT_INTERVAL_S": env_value(c, "SNAPSHOT_INTERVAL_S"),
        "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
    }
    for attempt in range(2):  # the second start must keep the partition, not re-create it
        out = run(["/bin/sh", "-c", script], env=env).stdout
        args = build_parser().parse_args(json.loads(out.strip().splitlines()[-1]))
        assert args.command == "run" and args.process_id == 1
        assert args.addresses.split(";") == [
            "riskstream-0.riskstream-headless:2101",
            "0.0.0.0:2101",
            "riskstream-2.riskstream-headless:2101",
        ]
        assert args.recovery_dir == recovery
        assert [p.name for p in recovery.glob("part-*.sqlite3")] == ["part-1.sqlite3"], attempt
        assert not list(recovery.glob(".init*")), "temporary init directory left behind"
        with sqlite3.connect(recovery / "part-1.sqlite3") as db:
            assert db.execute("SELECT part_index, part_count FROM parts").fetchall() == [(1, 3)]


# ------------------------------------------------------------------------- Grafana
def test_grafana_panels_name_known_metrics():
    known = known_metrics()
    (ds,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert len(dashboards) >= 4
    uids = set()
    for path in dashboards:
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        assert dash["panels"], path.name
        for panel in dash["panels"]:
            where = f"{path.name}: {panel['title']}"
            assert panel["datasource"]["uid"] == ds["uid"], where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert promql_metrics(target["expr"]), where
                assert unknown_metrics(target["expr"], known) == set(), where
    assert len(uids) == len(dashboards), "dashboard uids must be unique"


# ------------------------------------------------------------------------- image
def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert [s[1] for s in stages] == ["builder", "runtime"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    torch = text.index("pip install torch==2.13.0")
    assert torch < text.index("pip install -r") < text.index("pip install --no-deps .")
    runtime = text[text.index("AS runtime") :]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert "models/artifacts" in runtime
    user = re.search(r"^USER\s+(\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK .*\n?.*CMD (\[.*\])$", runtime, re.M)
    assert healthcheck and json.loads(healthcheck.group(1)) == [
        "python",
        "/opt/riskstream/healthcheck.py",
    ]
    warm = re.search(r"NUMBA_CACHE_DIR=(\S+) riskstream warm-up", text[: text.index("AS runtime")])
    assert warm, "the builder compiles the kernels into a cache the image ships"
    assert f"COPY --from=builder --chown=10001:10001 {warm[1]} {warm[1]}" in runtime
    assert f"NUMBA_CACHE_DIR={warm[1]} " in runtime
    assert '\nENTRYPOINT ["riskstream"]\n' in runtime
    assert '\nCMD ["run"]\n' in runtime
    env_vars = re.findall(r"\b(RISKSTREAM_[A-Z0-9_]+)=", text)
    assert "RISKSTREAM_METRICS_HOST" in env_vars
    assert [v for v in env_vars if not setting_exists(v)] == []
    ignored = set((ROOT / ".dockerignore").read_text().split())
    must = {".venv", ".git", "bench/results", "**/__pycache__", ".pytest_cache", ".mypy_cache"}
    assert must <= ignored


def test_probe_paths_are_served_by_the_metrics_endpoint():
    """Every path the manifests and the health check probe is one the endpoint answers."""
    import inspect

    from dataflows import metrics_server

    served = set(re.findall(r'"(/\w+)"', inspect.getsource(metrics_server._Handler)))
    c = container(only(k8s_objects(), "StatefulSet"))
    probed = {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    probed |= set(re.findall(r'"(/\w+)"', (DEPLOY / "healthcheck.py").read_text()))
    assert probed == {"/healthz", "/readyz"}
    assert probed <= served


def test_healthcheck_script_follows_liveness_and_readiness():
    from dataflows.embedded import free_port
    from dataflows.metrics_server import Health, serve_metrics

    health = Health(30.0)
    problems: list[str] = ["cannot reach Redis"]
    health.add_check("redis", lambda: problems[0] if problems else None)
    port = free_port()
    server = serve_metrics(port, "127.0.0.1", health)
    assert server is not None
    check = [sys.executable, str(DEPLOY / "healthcheck.py")]
    base = {"PATH": os.environ.get("PATH", ""), "RISKSTREAM_METRICS_HOST": "0.0.0.0"}
    env = {**base, "RISKSTREAM_METRICS_PORT": str(port)}

    def status(*args: str) -> int:
        return subprocess.run([*check, *args], env=env, capture_output=True, timeout=20).returncode

    try:
        assert status() == 1, "no heartbeat yet: starting"
        health.beat(0)
        assert status() == 0
        assert status("--ready") == 1, "Redis is down"
        problems.clear()
        health._cached = None  # skip the readiness cache
        assert status("--ready") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert status() == 1, "nothing listens"
    off = subprocess.run(check, env={**base, "RISKSTREAM_METRICS_PORT": "0"}, timeout=20)
    assert off.returncode == 0
