"""Export the volatility N-BEATS to ONNX, check parity with PyTorch, register it.

``python -m export.nbeats`` exports the run saved by ``python -m models.vol_nbeats``
(``build/vol_nbeats``; trained first when missing) to ``models/artifacts/vol_nbeats.onnx``
and writes its manifest entry. The entry's ``extra`` carries what the torch-free serving
side needs: horizon, history length, scaling, the ensemble weights per regime, the
conformal quantiles, the default GARCH (alpha, beta) and the PSI reference histograms.
``--quick`` trains the tiny configuration into ``build/vol_nbeats_quick`` and exports
there, leaving the committed artifact alone.

Parity is measured twice on histories the model never saw (a fresh simulator seed and
the last year of S&P 500): ONNX Runtime against the PyTorch export wrapper (with the
run's QLIKE calibration, as served), and the wrapper without it against the
pytorch-forecasting model's own forward pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, TensorSpec, register, sha256_file
from models import vol_ensemble as ve
from models import vol_nbeats as vn

NAME = ve.MODEL_NAME
FILE = f"{NAME}.onnx"
VERSION = "1.0.0"
OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(wrapper: vn.NBeatsExport, path: Path, length: int) -> None:
    """Write ``wrapper`` as ONNX: history [B, L] -> forecast [B, 1]."""
    wrapper.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (torch.zeros(2, length),), str(path), input_names=["history"],
            output_names=["forecast"], opset_version=OPSET, dynamo=False,
            dynamic_axes={"history": {0: "batch"}, "forecast": {0: "batch"}},
        )  # fmt: skip


def parity_histories(length: int, h: int) -> npt.NDArray[np.float32]:
    """Unseen inputs: every window of a fresh simulator world and the last S&P 500 year."""
    rows = [ve.nbeats_histories(s.returns, length, h) for s in vn.simulator_series(999, 400)]
    rows.append(ve.nbeats_histories(vn.real_series("sp500").returns[-300:], length, h))
    x = np.concatenate(rows)
    return x[np.isfinite(x).all(axis=1)].astype(np.float32)


def parity(
    model: Any, wrapper: vn.NBeatsExport, path: Path, history: npt.NDArray[np.float32]
) -> dict[str, float]:
    """Max abs differences: ONNX vs ``wrapper``, uncalibrated wrapper vs pytorch-forecasting.

    ``wrapper`` is the served one (with the run's calibration); pytorch-forecasting's
    forward knows no calibration, so it is compared with ``NBeatsExport(model)``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["forecast"], {"history": history})[0][:, 0]
    torch_out = vn.predict_logvol(wrapper.eval(), history)
    raw_out = vn.predict_logvol(vn.NBeatsExport(model).eval(), history)
    h = int(model.hparams.prediction_length)
    with torch.no_grad():
        hist = torch.from_numpy(history)
        x, _ = vn.batch_dict(hist, hist.new_zeros((hist.shape[0], h)))
        pf_out = model(x)["prediction"][:, -1, 0].double().numpy()
    return {
        "parity_max_abs": float(np.max(np.abs(onnx_out - torch_out))),
        "parity_pf_max_abs": float(np.max(np.abs(raw_out - pf_out))),
        "parity_rows": float(len(history)),
    }


def build_entry(path: Path, summary: dict[str, Any], checks: dict[str, float]) -> ArtifactEntry:
    """Manifest entry for the exported file."""
    length = int(summary["extra"]["L"])
    metrics = {k: float(v) for k, v in summary["metrics"].items()} | checks
    training = summary["training"]
    extra = summary["extra"] | {
        "training": {k: training[k] for k in ("seconds", "epochs", "best_epoch", "n_train",
                                              "parameters", "series")},
        "config": summary["config"],
        "opset": OPSET,
    }  # fmt: skip
    return ArtifactEntry(
        name=NAME, version=VERSION, file=path.name, sha256=sha256_file(path),
        inputs=[TensorSpec("history", "float32", [None, length])],
        outputs=[TensorSpec("forecast", "float32", [None, 1])],
        metrics=metrics, extra=extra,
    )  # fmt: skip


def export_run(run_dir: Path, artifacts: Path, manifest: Path) -> ArtifactEntry:
    """Export the run in ``run_dir``, check parity, register; return the entry."""
    model, summary = vn.load_checkpoint(run_dir)
    length, h = int(summary["extra"]["L"]), int(summary["extra"]["h"])
    path = artifacts / FILE
    wrapper = vn.served_module(model, summary)
    export_onnx(wrapper, path, length)
    checks = parity(model, wrapper, path, parity_histories(length, h))
    worst = max(checks["parity_max_abs"], checks["parity_pf_max_abs"])
    if not worst < PARITY_TOLERANCE:
        raise RuntimeError(f"export.nbeats: parity {worst:.2e} >= {PARITY_TOLERANCE:g}")
    entry = build_entry(path, summary, checks)
    register(entry, manifest)
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Train when needed, export, check parity, register."""
    parser = argparse.ArgumentParser(prog="python -m export.nbeats", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run, exported under build/")
    parser.add_argument("--run", type=Path, default=None, help="directory of a saved run")
    parser.add_argument("--retrain", action="store_true", help="train even if a run exists")
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--manifest", type=Path, default=None)
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    run_dir = args.run or Path(f"{vn.DEFAULT_OUT}{suffix}")
    artifacts = args.artifacts or (run_dir / "artifacts" if args.quick else ARTIFACTS)
    manifest = args.manifest or (artifacts / "manifest.json" if args.quick else MANIFEST)
    if args.retrain or not (run_dir / "model.ckpt").exists():
        vn.save(vn.run(vn.QUICK if args.quick else vn.TrainConfig()), run_dir)
    entry = export_run(run_dir, artifacts, manifest)
    size = (artifacts / entry.file).stat().st_size
    print(f"{entry.name} {entry.version}: {artifacts / entry.file} ({size / 1024:.0f} KiB)")
    print(f"sha256 {entry.sha256}")
    print(f"parity max abs: onnx vs torch {entry.metrics['parity_max_abs']:.2e}, "
          f"torch vs pytorch-forecasting {entry.metrics['parity_pf_max_abs']:.2e}")  # fmt: skip
    print(f"registered in {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
