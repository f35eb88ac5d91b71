"""``riskstream run`` probes on the real broker: ready, then not ready when Redis goes away.

Also: a candidate model set in shadow shows in ``riskstream_model_info{role="shadow"}``,
and a live model set whose artifact does not match its manifest is refused at start-up.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dataflows.embedded import EmbeddedRedis, free_port
from export.manifest import ARTIFACTS
from tests.integration.conftest import env_of

CLI = [sys.executable, "-m", "dataflows.cli"]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def wait_for(url: str, status: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        seen = get(url)
        if seen[0] == status:
            return seen[1]
        time.sleep(0.25)
    raise AssertionError(f"{url} never answered {status}; last: {seen}")


def copy_set(target: Path) -> Path:
    target.mkdir()
    for name in ("manifest.json", "regime_tft.onnx", "vol_nbeats.onnx"):
        shutil.copy(ARTIFACTS / name, target / name)
    return target


def test_ready_when_all_up_then_503_when_redis_goes_away(settings, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    shadow = copy_set(tmp_path / "candidate")
    with EmbeddedRedis() as own_redis:
        env = env_of(settings) | {
            "RISKSTREAM_REDIS_URL": own_redis.url,
            "RISKSTREAM_METRICS_PORT": str(port),
        }
        proc = subprocess.Popen([*CLI, "run", "--shadow-models", str(shadow)], env=env)
        try:
            ready = json.loads(wait_for(f"{base}/readyz", 200, 90))
            assert ready["checks"] == {
                "broker": "ok",
                "dataflow": "ok",
                "models": "ok",
                "redis": "ok",
            }
            assert get(f"{base}/healthz")[0] == 200
            metrics = get(f"{base}/metrics")[1]
            for role in ("live", "shadow"):
                assert f'riskstream_model_info{{model="regime_tft",role="{role}"' in metrics

            own_redis.stop()

            body = json.loads(wait_for(f"{base}/readyz", 503, 20))
            assert body["status"] == "not ready"
            assert "cannot reach Redis" in body["checks"]["redis"]
            assert body["checks"]["broker"] == "ok"
            assert get(f"{base}/healthz")[0] == 200, "the flow itself is still alive"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_live_model_set_when_artifact_mismatches_manifest_is_refused_at_start(settings, tmp_path):
    models = copy_set(tmp_path / "models")
    data = bytearray((models / "vol_nbeats.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / "vol_nbeats.onnx").write_bytes(bytes(data))
    env = env_of(settings) | {"RISKSTREAM_MODEL_DIR": str(models)}

    proc = subprocess.run(
        [*CLI, "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert proc.returncode == 2
    assert "vol_nbeats.onnx has sha256" in proc.stderr and "refusing" in proc.stderr
    assert "Traceback" not in proc.stderr
