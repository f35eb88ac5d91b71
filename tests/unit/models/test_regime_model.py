from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.manifest import ARTIFACTS, MANIFEST, load_manifest
from export.regime import ARTIFACT_FILE, PARITY_TOLERANCE, onnx_bytes, onnx_proba
from models.market_features import MARKET_FEATURES, FeatureWindow, market_bars_from_sim
from models.regime_runtime import (
    ENCODER_LENGTH,
    MODEL_NAME,
    Scaling,
    predict_proba,
    regime_summary,
)
from models.regime_tft import (
    RegimeTFTExport,
    TrainConfig,
    _frame,
    build_model,
    make_dataset,
    resample_matrix,
    sim_series,
    template_dataset,
    torch_proba,
)
from models.regimes import REGIMES
from models.runtime import ArtifactError, load_model
from models.simulator import MarketSimulator


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    bars = market_bars_from_sim(MarketSimulator(seed=9).path(400))
    stream = FeatureWindow(ENCODER_LENGTH)
    out = [w for w in (stream.update(b) for b in bars.to_dict("records")) if w is not None]
    return np.stack(out)


# -- the committed artifact -------------------------------------------------------------


def test_artifact_when_loaded_through_the_runtime_gives_probabilities(windows) -> None:
    model = load_model(MODEL_NAME)
    proba = predict_proba(model, windows)
    assert proba.shape == (len(windows), len(REGIMES))
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    single = predict_proba(model, windows[:1])
    np.testing.assert_allclose(single, proba[:1], atol=1e-6)


def test_manifest_entry_when_read_describes_inputs_scaling_and_metrics() -> None:
    entry = load_manifest()[MODEL_NAME]
    assert entry.file == ARTIFACT_FILE
    assert entry.inputs[0].shape == [None, ENCODER_LENGTH, len(MARKET_FEATURES)]
    assert entry.outputs[0].shape == [None, len(REGIMES)]
    assert tuple(entry.extra["features"]) == MARKET_FEATURES
    assert entry.extra["regimes"] == [r.value for r in REGIMES]
    assert len(entry.extra["scaling"]["mean"]) == len(MARKET_FEATURES)
    m = entry.metrics
    assert m["parity_max_abs"] < PARITY_TOLERANCE
    assert m["accuracy"] > m["baseline_accuracy"]
    assert m["log_loss"] < m["baseline_log_loss"]
    assert m["accuracy"] > m["majority_accuracy"]
    assert (ARTIFACTS / entry.file).stat().st_size < 5_000_000


def test_artifact_when_a_byte_is_flipped_is_refused(tmp_path: Path) -> None:
    entry = load_manifest()[MODEL_NAME]
    shutil.copy(MANIFEST, tmp_path / "manifest.json")
    data = bytearray((ARTIFACTS / entry.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / entry.file).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(MODEL_NAME, manifest=tmp_path / "manifest.json", artifacts=tmp_path)


def test_artifact_when_hash_in_manifest_differs_is_refused(tmp_path: Path) -> None:
    raw = json.loads(MANIFEST.read_text())
    raw["models"][MODEL_NAME]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    shutil.copy(ARTIFACTS / ARTIFACT_FILE, tmp_path / ARTIFACT_FILE)
    with pytest.raises(ArtifactError, match="refusing"):
        load_model(MODEL_NAME, manifest=tmp_path / "manifest.json", artifacts=tmp_path)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, ENCODER_LENGTH - 1, len(MARKET_FEATURES))), np.zeros((ENCODER_LENGTH, 15))],
)
def test_predict_proba_when_windows_have_the_wrong_shape_raises(bad) -> None:
    with pytest.raises(ValueError, match="shape"):
        predict_proba(load_model(MODEL_NAME), bad)


def test_predict_proba_when_windows_hold_nan_raises(windows) -> None:
    bad = windows[:2].copy()
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_proba(load_model(MODEL_NAME), bad)


# -- export path and input building, on an untrained network (no training needed) -------


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return build_model(template_dataset(), TrainConfig()).eval()


def test_export_when_run_matches_pytorch_within_tolerance(untrained, windows) -> None:
    scaling = Scaling.fit(windows.reshape(-1, len(MARKET_FEATURES)))
    scaled = scaling.apply(windows)
    model_bytes = onnx_bytes(untrained, "test")
    reference = torch_proba(untrained, scaled)
    for batch in (1, 32, 256):
        got = onnx_proba(model_bytes, scaled[:256], batch=batch)
        assert np.abs(got - reference[:256]).max() < PARITY_TOLERANCE


def test_wrapper_when_fed_windows_equals_the_tft_on_training_batches(untrained) -> None:
    series = sim_series(seed=3, n_bars=200)
    scaling = Scaling.fit(series.features[np.isfinite(series.features).all(axis=1)])
    dataset = make_dataset(_frame([series], scaling))
    x, _ = next(iter(dataset.to_dataloader(train=False, batch_size=64, num_workers=0)))
    raw, _ = series.windows()
    # the dataset's encoder inputs are exactly the scaled feature windows, in order
    np.testing.assert_array_equal(x["encoder_cont"][..., 1:].numpy(), scaling.apply(raw[:64]))
    expected_rel = np.arange(-ENCODER_LENGTH, 0) / ENCODER_LENGTH
    np.testing.assert_allclose(x["encoder_cont"][0, :, 0].numpy(), expected_rel, atol=1e-7)
    with torch.no_grad():
        reference = torch.softmax(untrained(x)["prediction"][:, 0, :], dim=-1)
        wrapped = RegimeTFTExport(untrained)(x["encoder_cont"][..., 1:])
    assert torch.max(torch.abs(reference - wrapped)).item() < 1e-6


# -- quick training end to end --------------------------------------------------------


def test_quick_training_when_run_trains_exports_and_registers(tmp_path: Path) -> None:
    from export.regime import main as export_main
    from models.regime_tft import main as train_main

    run_dir = tmp_path / "run"
    assert train_main(["--quick", "--run-dir", str(run_dir)]) == 0
    for name in ("model.pt", "run.json", "holdout.npz"):
        assert (run_dir / name).exists()
    artifacts = tmp_path / "artifacts"
    assert export_main(["--run-dir", str(run_dir), "--artifacts", str(artifacts)]) == 0
    model = load_model(MODEL_NAME, manifest=artifacts / "manifest.json", artifacts=artifacts)
    assert model.entry.metrics["parity_max_abs"] < PARITY_TOLERANCE
    assert np.isfinite(model.entry.metrics["baseline_log_loss"])


@pytest.mark.parametrize(("n_in", "n_out"), [(512, 16), (32, 64), (16, 16), (7, 1), (1, 5)])
def test_resample_matrix_when_applied_equals_linear_interpolation(n_in, n_out) -> None:
    x = torch.randn(8, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        x.unsqueeze(1), n_out, mode="linear", align_corners=True
    ).squeeze(1)
    got = x @ torch.from_numpy(resample_matrix(n_in, n_out))
    assert torch.max(torch.abs(got - expected)).item() < 1e-12


def test_regime_summary_when_given_probabilities_reports_entropy_and_views() -> None:
    p = np.array([0.05, 0.6, 0.1, 0.1, 0.05, 0.05, 0.05])
    summary = regime_summary(p)
    assert summary.regime.value == "VOL_RISK_OFF"
    assert summary.coarse.value == "BEAR"
    assert summary.entropy == pytest.approx(-(p * np.log(p)).sum())
    assert regime_summary(np.full(7, 1 / 7)).entropy == pytest.approx(np.log(7))
