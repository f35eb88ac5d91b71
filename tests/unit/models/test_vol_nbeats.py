from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from export import nbeats as export_nbeats
from export.manifest import MANIFEST, load_manifest
from models import vol_ensemble as ve
from models import vol_nbeats as vn
from models.runtime import ArtifactError, load_model

L, H = 16, 5


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    return vn.real_series("sp500").returns[:300]


def _pf_dataset(x: np.ndarray) -> object:
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.encoders import TorchNormalizer

    frame = pd.DataFrame({"group": "g", "time_idx": np.arange(x.size), "logrv": x})
    return TimeSeriesDataSet(
        frame, time_idx="time_idx", target="logrv", group_ids=["group"],
        max_encoder_length=L, min_encoder_length=L, max_prediction_length=H,
        min_prediction_length=H, time_varying_unknown_reals=["logrv"],
        target_normalizer=TorchNormalizer("identity"), add_relative_time_idx=False,
        add_target_scales=False, add_encoder_length=False,
    )  # fmt: skip


def _tiny_model() -> torch.nn.Module:
    cfg = replace(vn.QUICK, length=L, h=H)
    table = vn.build_table([vn.Series("s", vn.real_series("sp500").returns[:400])], cfg)
    torch.manual_seed(0)
    return vn.build_model(table, cfg).eval()


def test_windows_and_batches_match_timeseriesdataset(returns: np.ndarray) -> None:
    x = ve.log_realized_vol(returns, H)[H - 1 :].astype(np.float32)
    ds = _pf_dataset(x)
    pf_x, (pf_y, _) = next(iter(ds.to_dataloader(train=False, batch_size=10_000)))  # type: ignore[attr-defined]
    order = torch.argsort(pf_x["decoder_time_idx"][:, 0])
    hist = ve.nbeats_histories(returns, L, H)
    t = pf_x["decoder_time_idx"][order, 0].numpy() - 1 + (H - 1)  # origin in return index
    np.testing.assert_array_equal(pf_x["encoder_target"][order].numpy(), hist[t].astype(np.float32))
    future = np.stack([ve.log_realized_vol(returns, H)[t + k] for k in range(1, H + 1)], 1)
    np.testing.assert_allclose(pf_y[order].numpy(), future, rtol=1e-6)
    mine, _ = vn.batch_dict(
        torch.from_numpy(hist[t].astype(np.float32)), torch.from_numpy(future.astype(np.float32))
    )
    for key in ("encoder_cont", "encoder_target", "decoder_target", "target_scale",
                "encoder_lengths", "decoder_lengths"):  # fmt: skip
        np.testing.assert_allclose(mine[key].numpy(), pf_x[key][order].numpy(), rtol=1e-6)


def test_export_wrapper_equals_model_forward_and_is_level_invariant() -> None:
    model = _tiny_model()
    wrapper = vn.NBeatsExport(model).eval()
    hist = torch.randn(32, L) * 0.3 - 4.5
    x, _ = vn.batch_dict(hist, hist.new_zeros((32, H)))
    with torch.no_grad():
        expected = model(x)["prediction"][:, -1, 0]
        got = wrapper(hist)[:, 0]
        shifted = wrapper(hist + 2.0)[:, 0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(shifted, got + 2.0, rtol=0, atol=1e-5)


def test_qlike_calibration_recovers_a_known_bias_and_runs_in_the_wrapper() -> None:
    rng = np.random.default_rng(0)
    hist = rng.normal(-4.5, 0.3, size=(4000, L))
    level = hist.mean(axis=1)
    raw = level + rng.normal(0.0, 0.2, size=len(level))
    # log-vol targets whose implied variance is exactly a gain 0.8 / offset 0.15 away
    y = level + 0.8 * (raw - level) + 0.15 - ve.gaussian_log_bias(H)
    cal = vn.QlikeCalibration.fit(hist, raw, y, H)
    assert cal.gain == pytest.approx(0.8, abs=1e-3)
    assert cal.offset == pytest.approx(0.15, abs=1e-3)
    model = _tiny_model()
    x = torch.from_numpy(hist[:32].astype(np.float32))
    plain = vn.predict_logvol(vn.NBeatsExport(model), x)
    served = vn.predict_logvol(vn.NBeatsExport(model, cal), x)
    np.testing.assert_allclose(served, cal.apply(hist[:32], plain), atol=1e-5)


def test_origin_spans_never_straddle_a_boundary() -> None:
    n, h = 1000, 5
    span = vn.origin_spans(n, h, (0.6, 0.75, 0.85))
    bounds = vn.span_bounds(n, (0.6, 0.75, 0.85))
    for t in np.flatnonzero(span >= 0):
        covered = np.searchsorted(bounds, np.arange(t + 1, t + h + 1), side="right")
        assert (covered == span[t]).all()
    assert set(np.unique(span)) == {-1, 0, 1, 2, 3}
    assert (span[-h:] == -1).all()


def test_quick_run_trains_exports_with_parity_and_registers(tmp_path: Path) -> None:
    cfg = replace(vn.QUICK, sim_bars=500, max_epochs=1, limit_train_batches=5)
    result = vn.run(cfg)
    vn.save(result, tmp_path / "run")
    entry = export_nbeats.export_run(tmp_path / "run", tmp_path / "art", tmp_path / "m.json")
    assert entry.metrics["parity_max_abs"] < 1e-4
    assert entry.metrics["parity_pf_max_abs"] < 1e-4
    assert set(entry.extra["qlike_calibration"]) >= {"gain", "offset"}
    for key in ("mse_logvol_nbeats", "mse_logvol_ewma", "mse_logvol_garch",
                "mse_logvol_ensemble", "coverage_90"):  # fmt: skip
        assert math.isfinite(entry.metrics[key])
    loaded = load_model("vol_nbeats", tmp_path / "m.json", tmp_path / "art")
    out = loaded.run({"history": result.table.history[:7]})["forecast"]
    assert out.shape == (7, 1) and np.isfinite(out).all()
    ens = ve.VolEnsemble.load(tmp_path / "m.json")
    assert ens.forecast(float(out[0, 0]), 1e-4, 1e-4, np.full(7, 1 / 7))[0] > 0
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["training"]["n_train"] > 0


# -- the committed artifact -----------------------------------------------------------------


def test_committed_artifact_loads_and_forecasts_finite_log_vols(returns: np.ndarray) -> None:
    model = load_model("vol_nbeats")
    length = model.entry.inputs[0].shape[1]
    assert isinstance(length, int)
    hist = ve.nbeats_histories(returns, length, 5)[-10:].astype(np.float32)
    out = model.run({"history": hist})["forecast"]
    assert out.shape == (10, 1) and np.isfinite(out).all()
    assert (np.abs(out[:, 0] - hist[:, -1]) < 2.0).all()  # a daily vol near the recent level
    metrics = model.entry.metrics
    assert metrics["parity_max_abs"] < 1e-4
    assert 0.85 <= metrics["coverage_90"] <= 0.95


def test_committed_artifact_when_hash_mismatches_is_refused(tmp_path: Path) -> None:
    entry = load_manifest()["vol_nbeats"]
    art = tmp_path / "artifacts"
    art.mkdir()
    shutil.copy(MANIFEST.parent / entry.file, art / entry.file)
    with (art / entry.file).open("ab") as f:
        f.write(b"\0")
    shutil.copy(MANIFEST, tmp_path / "manifest.json")
    with pytest.raises(ArtifactError, match="sha256"):
        load_model("vol_nbeats", tmp_path / "manifest.json", art)
