from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.manifest import ARTIFACTS, MANIFEST, load_manifest
from export.regime import ARTIFACT_FILE, PARITY_TOLERANCE, onnx_bytes, onnx_proba
from models.labeler import RegimeLabeler
from models.market_features import (
    MARKET_FEATURES,
    compute_features,
    feature_windows,
    market_bars_from_sim,
)
from models.regime_runtime import (
    ENCODER_LENGTH,
    INPUT_CHANNELS,
    LABEL_CHANNELS,
    MODEL_NAME,
    RegimeWindow,
    Scaling,
    encoder_input,
    labeler_from_extra,
    predict_proba,
    regime_summary,
)
from models.regime_tft import (
    LABEL_SLICE,
    RegimeTFTExport,
    TrainConfig,
    _frame,
    build_model,
    fit_correction_scale,
    log_loss,
    make_dataset,
    resample_matrix,
    sim_series,
    template_dataset,
    torch_proba,
)
from models.regimes import REGIMES
from models.runtime import ArtifactError, LoadedModel, load_model
from models.simulator import MarketSimulator


@pytest.fixture(scope="module")
def sim_bars():
    return market_bars_from_sim(MarketSimulator(seed=9).path(400))


@pytest.fixture(scope="module")
def shipped_labeler() -> RegimeLabeler:
    labeler = labeler_from_extra(load_manifest()[MODEL_NAME].extra)
    assert labeler is not None
    return labeler


@pytest.fixture(scope="module")
def streamed(sim_bars, shipped_labeler) -> tuple[np.ndarray, np.ndarray]:
    """Windows and labels as the market step builds them, bar by bar."""
    stream = RegimeWindow(ENCODER_LENGTH, shipped_labeler.streaming())
    out = [w for w in (stream.update(b) for b in sim_bars.to_dict("records")) if w is not None]
    return np.stack([w for w, _ in out]), np.stack([lab for _, lab in out])


@pytest.fixture(scope="module")
def windows(streamed) -> np.ndarray:
    return streamed[0]


@pytest.fixture(scope="module")
def labels(streamed) -> np.ndarray:
    return streamed[1]


# -- the committed artifact -------------------------------------------------------------


def test_artifact_when_loaded_through_the_runtime_gives_probabilities(windows, labels) -> None:
    model = load_model(MODEL_NAME)
    proba = predict_proba(model, windows, labels)
    assert proba.shape == (len(windows), len(REGIMES))
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    single = predict_proba(model, windows[:1], labels[:1])
    np.testing.assert_allclose(single, proba[:1], atol=1e-6)


def test_runtime_when_given_one_window_runs_the_batch_1_session(windows, labels) -> None:
    model = load_model(MODEL_NAME)
    calls: list[str] = []

    class Spy:
        def __init__(self, name: str, session: object) -> None:
            self.name, self.session = name, session

        def run(self, *args: object) -> object:
            calls.append(self.name)
            return self.session.run(*args)  # type: ignore[attr-defined]

    spied = LoadedModel(model.entry, Spy("any", model.session), Spy("one", model.single))
    predict_proba(spied, windows[:1], labels[:1])
    predict_proba(spied, windows[:3], labels[:3])
    assert calls == ["one", "any"]


def test_regime_window_when_streamed_equals_batch_features_and_labels(
    sim_bars, shipped_labeler, windows, labels
) -> None:
    features = compute_features(sim_bars)
    result = shipped_labeler.label(features)
    codes = np.stack([result.labels, result.pending], axis=-1)
    ends = np.arange(len(features) - len(windows), len(features))
    np.testing.assert_array_equal(windows, feature_windows(features, ENCODER_LENGTH, ends))
    offsets = np.arange(-ENCODER_LENGTH + 1, 1)
    assert labels.shape == (len(windows), ENCODER_LENGTH, 2)
    np.testing.assert_array_equal(labels, codes[ends[:, None] + offsets[None, :]])
    assert (labels[..., 0] != labels[..., 1]).any()  # some switches were pending
    assert ends[0] == 60 + ENCODER_LENGTH - 1  # ready as soon as 32 warm bars exist


def test_manifest_entry_when_read_describes_inputs_scaling_and_metrics() -> None:
    entry = load_manifest()[MODEL_NAME]
    assert entry.file == ARTIFACT_FILE
    assert entry.inputs[0].name == "encoder_cont"
    assert entry.inputs[0].shape == [None, ENCODER_LENGTH, len(MARKET_FEATURES) + len(REGIMES)]
    assert entry.inputs[0].shape == [None, 32, 22]
    assert entry.outputs[0].shape == [None, len(REGIMES)]
    assert tuple(entry.extra["features"]) == MARKET_FEATURES
    assert tuple(entry.extra["label_channels"]) == LABEL_CHANNELS
    assert tuple(entry.extra["input_channels"]) == INPUT_CHANNELS
    assert entry.extra["regimes"] == [r.value for r in REGIMES]
    assert len(entry.extra["scaling"]["mean"]) == len(MARKET_FEATURES)
    prior = np.exp(np.array(entry.extra["persistence_prior"]["log_transition"]))
    np.testing.assert_allclose(prior.sum(axis=1), 1.0, atol=1e-9)
    assert RegimeLabeler.from_dict(entry.extra["labeler"]).centroids is not None
    assert len(entry.extra["training_data_fingerprint"]) == 64
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
        predict_proba(load_model(MODEL_NAME), bad, np.zeros((*bad.shape[:2], 2), dtype=np.int64))


def test_predict_proba_when_windows_hold_nan_raises(windows, labels) -> None:
    bad = windows[:2].copy()
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_proba(load_model(MODEL_NAME), bad, labels[:2])


def test_predict_proba_when_labels_are_missing_or_unlabelled_raises(windows, labels) -> None:
    model = load_model(MODEL_NAME)
    with pytest.raises(ValueError, match="labels"):
        predict_proba(model, windows[:2])
    with pytest.raises(ValueError, match="labels"):
        predict_proba(model, windows[:2], labels[:2, :-1])
    unlabelled = labels[:2].copy()
    unlabelled[1, 0, 1] = -1
    with pytest.raises(ValueError, match="labels"):
        predict_proba(model, windows[:2], unlabelled)


def test_encoder_input_when_built_is_scaled_features_then_one_hot_labels(windows, labels) -> None:
    scaling = Scaling.fit(windows.reshape(-1, len(MARKET_FEATURES)))
    x = encoder_input(scaling, windows, labels)
    assert x.shape == (len(windows), ENCODER_LENGTH, len(INPUT_CHANNELS)) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., : len(MARKET_FEATURES)], scaling.apply(windows))
    channels = x[..., len(MARKET_FEATURES) :]
    # 1 on the bar's label, 2 on its pending label, 3 when they coincide
    np.testing.assert_array_equal(channels.sum(axis=-1), 3.0)
    np.testing.assert_array_equal((channels >= 1.5).argmax(axis=-1), labels[..., 1])
    np.testing.assert_array_equal((channels % 2 == 1).argmax(axis=-1), labels[..., 0])


# -- export path and input building, on an untrained network (no training needed) -------


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    model = build_model(template_dataset(), TrainConfig()).eval()
    # a non-trivial persistence prior, so that the export has to carry it
    rows = torch.rand(len(REGIMES), len(REGIMES)) + 4.0 * torch.eye(len(REGIMES))
    model.log_transition.copy_(torch.log(rows / rows.sum(dim=1, keepdim=True)))
    model.correction_scale.fill_(0.6)  # a shrunk correction, which the export must carry too
    return model


def test_export_when_run_matches_pytorch_within_tolerance(untrained, windows, labels) -> None:
    scaling = Scaling.fit(windows.reshape(-1, len(MARKET_FEATURES)))
    scaled = encoder_input(scaling, windows, labels)
    model_bytes = onnx_bytes(untrained, "test")
    reference = torch_proba(untrained, scaled)
    for batch in (1, 32, 256):
        got = onnx_proba(model_bytes, scaled[:256], batch=batch)
        assert np.abs(got - reference[:256]).max() < PARITY_TOLERANCE


def test_lean_module_when_run_equals_the_tft_forward_at_extreme_inputs(
    untrained, windows, labels
) -> None:
    from export.regime import LeanRegimeTFT

    scaling = Scaling.fit(windows.reshape(-1, len(MARKET_FEATURES)))
    scaled = encoder_input(scaling, windows[:64], labels[:64])
    # features at large and tiny magnitudes: the closed-form skip LayerNorm of the feature
    # GRNs must hold where its variance is smallest and largest
    rng = np.random.default_rng(0)
    feats = scaled[..., : len(MARKET_FEATURES)]
    feats[:16] = rng.choice([-8.0, -1e-4, 0.0, 1e-4, 8.0], size=feats[:16].shape)
    reference = torch_proba(untrained, scaled)
    lean = LeanRegimeTFT(untrained).eval()
    with torch.no_grad():
        batched = lean(torch.from_numpy(scaled)).numpy()
        single = np.concatenate(
            [lean(torch.from_numpy(scaled[i : i + 1])).numpy() for i in range(8)]
        )
    assert np.abs(batched - reference).max() < 1e-5
    assert np.abs(single - reference[:8]).max() < 1e-5


def test_wrapper_when_fed_windows_equals_the_tft_on_training_batches(untrained) -> None:
    series = sim_series(seed=3, n_bars=200)
    warm = series.features[np.isfinite(series.features).all(axis=1)]
    result = RegimeLabeler().fit(warm).label(series.features)
    series = dataclasses.replace(series, observed=result.labels, pending=result.pending)
    scaling = Scaling.fit(warm)
    dataset = make_dataset(_frame([series], scaling))
    x, _ = next(iter(dataset.to_dataloader(train=False, batch_size=64, num_workers=0)))
    raw, _ = series.windows()
    # the dataset's encoder inputs are exactly the scaled feature windows and the one-hot
    # observed labels, in order
    expected = encoder_input(scaling, raw[:64], series.label_windows()[:64])
    np.testing.assert_array_equal(x["encoder_cont"][..., 1:].numpy(), expected)
    expected_rel = np.arange(-ENCODER_LENGTH, 0) / ENCODER_LENGTH
    np.testing.assert_allclose(x["encoder_cont"][0, :, 0].numpy(), expected_rel, atol=1e-7)
    with torch.no_grad():
        reference = torch.softmax(untrained(x)["prediction"][:, 0, :], dim=-1)
        wrapped = RegimeTFTExport(untrained)(x["encoder_cont"][..., 1:])
        # the persistence prior is the log transition row of the last bar's label
        channels = x["encoder_cont"][:, -1, LABEL_SLICE]
        assert torch.equal(channels.sum(dim=1), torch.full((len(channels),), 3.0))
        last = (channels >= 1.5).to(channels.dtype)  # the pending label
        plain = torch.nn.Module.__call__(untrained, x)["prediction"][:, 0, :]
        base = super(type(untrained), untrained).forward(x)["prediction"][:, 0, :]
        prior = last @ untrained.log_transition
        assert torch.allclose(plain - 0.6 * base, prior, atol=1e-6)
    assert torch.max(torch.abs(reference - wrapped)).item() < 1e-6


def test_correction_scale_when_fitted_has_the_lowest_log_loss_of_the_grid() -> None:
    torch.manual_seed(1)
    model = build_model(template_dataset(), TrainConfig()).eval()
    series = sim_series(seed=5, n_bars=200)
    warm = series.features[np.isfinite(series.features).all(axis=1)]
    result = RegimeLabeler().fit(warm).label(series.features)
    series = dataclasses.replace(series, observed=result.labels, pending=result.pending)
    scaling = Scaling.fit(warm)
    best = fit_correction_scale(model, scaling, [series])
    assert 0.0 <= best <= 1.0 and float(model.correction_scale) == pytest.approx(best)
    x = encoder_input(scaling, series.windows()[0], series.label_windows())
    y = series.windows()[1]
    losses = {}
    for scale in (0.0, best, 1.0):
        model.correction_scale.fill_(scale)
        losses[scale] = log_loss(torch_proba(model, x), y)
    assert losses[best] <= min(losses.values()) + 1e-9


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
    assert model.entry.inputs[0].shape == [None, ENCODER_LENGTH, len(INPUT_CHANNELS)]
    assert labeler_from_extra(model.entry.extra) is not None
    holdout = np.load(run_dir / "holdout.npz")
    assert holdout["labels"].shape == (*holdout["windows"].shape[:2], 2)
    assert (holdout["labels"] >= 0).all()


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
