"""Shadow models: agreement metrics beside the live models, outputs untouched; model sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from export.manifest import ARTIFACTS, load_manifest, sha256_file
from models.runtime import ArtifactError, verify_model_set
from models.simulator import MarketSimulator
from operators.market import (
    MarketConfig,
    MarketLogic,
    ModelSources,
    RegimeUpdate,
    VolForecast,
    model_sources,
    relative_difference,
    same_argmax,
    total_variation,
    use_model_sources,
)
from operators.records import Mark
from tests.unit.test_market_step import batches, comparable, in_order, marks_from_path, run

N_BARS = 130
FILES = ("manifest.json", "regime_tft.onnx", "vol_nbeats.onnx")


# --- agreement arithmetic ------------------------------------------------------------------


def test_same_argmax_when_rows_differ_flags_each_row():
    live = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
    shadow = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    assert same_argmax(live, shadow).tolist() == [True, False, True]


def test_total_variation_when_crafted_is_half_the_l1_distance():
    live = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    shadow = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]])
    assert total_variation(live, shadow).tolist() == pytest.approx([1.0, 0.0, 0.1])


def test_relative_difference_when_crafted_is_abs_diff_over_live():
    live = np.array([0.02, 0.01, 0.0, 0.0])
    shadow = np.array([0.021, 0.009, 0.0, 0.001])
    assert relative_difference(live, shadow).tolist() == pytest.approx([0.05, 0.1, 0.0, np.inf])


# --- the market step with a shadow ----------------------------------------------------------


def copy_set(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(ARTIFACTS / name, target / name)
    return target


def perturbed_set(target: Path, seed: int = 7, scale: float = 0.5) -> Path:
    """A candidate whose regime weights are perturbed, re-registered with its new hash."""
    import onnx
    from onnx import numpy_helper

    copy_set(target)
    path = target / "regime_tft.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 1000:
            noisy = w * (1 + scale * rng.standard_normal(w.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, str(path))
    manifest = json.loads((target / "manifest.json").read_text())
    entry = manifest["models"]["regime_tft"]
    entry["sha256"], entry["version"] = sha256_file(path), "1.0.0-candidate"
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


@pytest.fixture(scope="module")
def marks() -> dict[str, list[Mark]]:
    sim = MarketSimulator(seed=11)
    path: pd.DataFrame = sim.path(N_BARS)
    return marks_from_path(path, sim.instrument_ids)


@pytest.fixture(scope="module")
def live_only(marks: dict[str, list[Mark]]) -> list[Any]:
    return run(MarketLogic(MarketConfig(), None), batches(in_order(marks), 5))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def shadow_samples() -> dict[str, float]:
    return {
        "agree": sample("riskstream_shadow_regime_agreement_total", outcome="agree"),
        "disagree": sample("riskstream_shadow_regime_agreement_total", outcome="disagree"),
        "tv_count": sample("riskstream_shadow_regime_tv_distance_count"),
        "tv_sum": sample("riskstream_shadow_regime_tv_distance_sum"),
        "vol_count": sample("riskstream_shadow_vol_relative_difference_count"),
        "vol_sum": sample("riskstream_shadow_vol_relative_difference_sum"),
        "failures": sample("riskstream_shadow_failures_total", model="regime_tft")
        + sample("riskstream_shadow_failures_total", model="vol_nbeats"),
    }


def delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in shadow_samples().items()}


def with_shadow(shadow: Path, marks: dict[str, list[Mark]]) -> list[Any]:
    return run(
        MarketLogic(MarketConfig(shadow_artifacts=shadow), None), batches(in_order(marks), 5)
    )


def test_identical_candidate_when_shadowed_agrees_on_every_bar_and_changes_no_output(
    tmp_path: Path, marks: dict[str, list[Mark]], live_only: list[Any]
) -> None:
    before = shadow_samples()

    out = with_shadow(copy_set(tmp_path / "candidate"), marks)

    assert comparable(out) == comparable(live_only)
    d = delta(before)
    bars = sum(1 for o in out if isinstance(o, RegimeUpdate) and o.probabilities)
    forecasts = sum(1 for o in out if isinstance(o, VolForecast) and o.version)  # not NaN ones
    assert bars > 20 and forecasts > 100
    assert d["agree"] == bars and d["disagree"] == 0
    assert d["tv_count"] == bars and d["tv_sum"] == 0.0
    assert d["vol_count"] == forecasts and d["vol_sum"] == 0.0
    assert d["failures"] == 0
    sha = load_manifest(ARTIFACTS / "manifest.json")["regime_tft"].sha256
    info = {"model": "regime_tft", "version": "1.0.0", "sha256": sha}
    assert sample("riskstream_model_info", role="live", **info) == 1.0
    assert sample("riskstream_model_info", role="shadow", **info) == 1.0


def test_perturbed_candidate_when_shadowed_disagrees_in_metrics_only(
    tmp_path: Path, marks: dict[str, list[Mark]], live_only: list[Any]
) -> None:
    candidate = perturbed_set(tmp_path / "candidate")
    before = shadow_samples()

    out = with_shadow(candidate, marks)

    assert comparable(out) == comparable(live_only)
    d = delta(before)
    assert d["tv_count"] > 20 and d["tv_sum"] > 0.0
    assert d["agree"] + d["disagree"] == d["tv_count"]
    assert d["vol_count"] > 0  # the vol model is the same: tiny or no differences
    assert d["failures"] == 0
    sha = sha256_file(candidate / "regime_tft.onnx")
    labels = {"role": "shadow", "model": "regime_tft", "version": "1.0.0-candidate"}
    assert sample("riskstream_model_info", sha256=sha, **labels) == 1.0


def test_candidate_with_wrong_hash_when_shadowed_is_refused_and_counted_outputs_unchanged(
    tmp_path: Path, marks: dict[str, list[Mark]], live_only: list[Any]
) -> None:
    candidate = copy_set(tmp_path / "candidate")
    data = bytearray((candidate / "regime_tft.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (candidate / "regime_tft.onnx").write_bytes(bytes(data))
    before = shadow_samples()

    out = with_shadow(candidate, marks)

    assert comparable(out) == comparable(live_only)
    d = delta(before)
    assert d["failures"] == 1  # refused once at load
    assert d["tv_count"] == 0 and d["vol_count"] > 0  # the vol candidate still compares


def test_process_model_sources_when_set_are_the_default_of_new_configs(tmp_path: Path) -> None:
    saved = model_sources()
    try:
        use_model_sources(ModelSources(live=tmp_path / "live", shadow=tmp_path / "shadow"))
        config = MarketConfig()
        explicit = MarketConfig(artifacts=ARTIFACTS, shadow_artifacts=None)
    finally:
        use_model_sources(saved)
    assert config.manifest_path == tmp_path / "live" / "manifest.json"
    assert config.shadow_manifest_path == tmp_path / "shadow" / "manifest.json"
    assert explicit.artifacts == ARTIFACTS and explicit.shadow_artifacts is None
    assert MarketConfig().artifacts == saved.live


# --- model sets: switching the live model by configuration ----------------------------------


def test_verify_model_set_when_intact_returns_every_entry(tmp_path: Path) -> None:
    entries = verify_model_set(copy_set(tmp_path / "set"))
    assert sorted(entries) == ["regime_tft", "vol_nbeats"]


def test_verify_model_set_when_pinned_manifest_hash_matches_accepts_it(tmp_path: Path) -> None:
    d = copy_set(tmp_path / "set")
    pin = sha256_file(d / "manifest.json").upper()
    assert sorted(verify_model_set(d, expected_sha256=pin)) == ["regime_tft", "vol_nbeats"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest at"),
        (lambda d: (d / "vol_nbeats.onnx").unlink(), "vol_nbeats.onnx is missing"),
        (
            lambda d: (d / "regime_tft.onnx").write_bytes(b"not the model"),
            r"regime_tft.onnx has sha256 .*the manifest says .*refusing",
        ),
        (lambda d: (d / "manifest.json").write_text("{"), "cannot read"),
    ],
)
def test_verify_model_set_when_damaged_refuses_with_a_clear_error(
    tmp_path: Path, damage: Any, message: str
) -> None:
    d = copy_set(tmp_path / "set")
    damage(d)
    with pytest.raises(ArtifactError, match=message):
        verify_model_set(d)


def test_verify_model_set_when_pinned_hash_differs_refuses(tmp_path: Path) -> None:
    d = copy_set(tmp_path / "set")
    with pytest.raises(ArtifactError, match="the configuration pins 00ff; refusing"):
        verify_model_set(d, expected_sha256="00ff")
