"""Export the regime TFT to ONNX, check parity with PyTorch, register it in the manifest.

``python -m export.regime`` reads a training run (``build/regime_tft`` by default, written
by ``python -m models.regime_tft``; ``--train`` or ``--quick`` trains first), exports the
plain-tensor wrapper (``encoder_cont [B, 32, F] float32 -> probabilities [B, 7]``, the
softmax of the next-bar logits, dynamic batch axis, opset 17, TorchScript exporter),
compares ONNX Runtime with PyTorch on every held-out window, refuses to register when the
largest absolute probability difference reaches :data:`PARITY_TOLERANCE`, and writes the
artifact plus its ``ArtifactEntry`` (sha256, tensor specs, metrics, scaling) to
``models/artifacts``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, TensorSpec, register, sha256_file
from models.market_features import MARKET_FEATURES, WARMUP_BARS
from models.regime_tft import (
    DEFAULT_RUN_DIR,
    ENCODER_LENGTH,
    MODEL_NAME,
    N_CLASSES,
    TFT_HPARAMS,
    RegimeTFTExport,
    SavedRun,
    TrainConfig,
    torch_proba,
    train,
)
from models.regimes import REGIMES
from operators.errors import RiskstreamError

if TYPE_CHECKING:
    from pytorch_forecasting import TemporalFusionTransformer

PARITY_TOLERANCE = 1e-4
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "encoder_cont", "probabilities"
ARTIFACT_FILE = f"{MODEL_NAME}.onnx"
DEFAULT_VERSION = "1.0.0"

log = logging.getLogger(__name__)


class ParityError(RiskstreamError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


def onnx_bytes(model: TemporalFusionTransformer, version: str) -> bytes:
    """The serialised ONNX model of the wrapped TFT, with name/version metadata."""
    import onnx
    import torch

    wrapper = RegimeTFTExport(model).eval()
    example = torch.zeros(2, ENCODER_LENGTH, len(MARKET_FEATURES), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / ARTIFACT_FILE
        torch.onnx.export(
            wrapper,
            (example,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
        proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {"name": MODEL_NAME, "version": version, "regimes": ",".join(r.value for r in REGIMES)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "Regime TFT: next-bar probabilities of the 7 market regimes"
    return bytes(proto.SerializeToString())


def onnx_proba(model_bytes: bytes, scaled: npt.NDArray[np.float32], batch: int = 256) -> Any:
    """Probabilities of scaled windows with ONNX Runtime (one thread), in batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: scaled[lo : lo + batch]})[0]
        for lo in range(0, len(scaled), batch)
    ]
    return np.concatenate(parts) if parts else np.empty((0, N_CLASSES), np.float32)


def parity_max_abs(
    model: TemporalFusionTransformer, model_bytes: bytes, scaled: npt.NDArray[np.float32]
) -> float:
    """Largest |ONNX - PyTorch| probability over ``scaled`` windows (batches of 256 and 1)."""
    reference = torch_proba(model, scaled)
    batched = onnx_proba(model_bytes, scaled)
    single = onnx_proba(model_bytes, scaled[:16], batch=1)
    worst = float(np.max(np.abs(batched - reference))) if len(scaled) else 0.0
    if len(single):
        worst = max(worst, float(np.max(np.abs(single - reference[:16]))))
    return worst


def export_run(
    run: SavedRun,
    artifacts: Path = ARTIFACTS,
    manifest: Path = MANIFEST,
    version: str = DEFAULT_VERSION,
    tolerance: float = PARITY_TOLERANCE,
) -> ArtifactEntry:
    """Export ``run``, check parity on its held-out windows, write and register the artifact."""
    model_bytes = onnx_bytes(run.model, version)
    scaled = run.scaling.apply(run.holdout_windows)
    parity = parity_max_abs(run.model, model_bytes, scaled)
    if not parity < tolerance:
        raise ParityError(
            f"{MODEL_NAME}: ONNX and PyTorch probabilities differ by {parity:.3g}"
            f" (tolerance {tolerance:g}); not registering"
        )
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / ARTIFACT_FILE
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(model_bytes)
    tmp.replace(path)
    metrics = {k: float(v) for k, v in run.metrics.items()}
    metrics["parity_max_abs"] = parity
    metrics["parity_windows"] = float(len(scaled))
    entry = ArtifactEntry(
        name=MODEL_NAME,
        version=version,
        file=ARTIFACT_FILE,
        sha256=sha256_file(path),
        inputs=[TensorSpec(INPUT_NAME, "float32", [None, ENCODER_LENGTH, len(MARKET_FEATURES)])],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [None, N_CLASSES])],
        metrics=metrics,
        extra=_extra(run),
    )
    register(entry, manifest)
    return entry


def _extra(run: SavedRun) -> dict[str, Any]:
    config = run.meta.get("config", {})
    return {
        "features": list(MARKET_FEATURES),
        "feature_module": "models.market_features.MarketFeatures",
        "scaling": run.scaling.to_dict(),
        "scaling_note": "raw features -> clip((x - mean) / std, -clip, clip), float32",
        "encoder_length": ENCODER_LENGTH,
        "warmup_bars": WARMUP_BARS,
        "regimes": [r.value for r in REGIMES],
        "predicts": "probabilities of the regime of the bar after the window's last bar",
        "architecture": {"model": "pytorch_forecasting.TemporalFusionTransformer", **TFT_HPARAMS},
        "training": {
            "sim_train_seeds": config.get("sim_train_seeds"),
            "sim_test_seeds": config.get("sim_test_seeds"),
            "real_train_end": config.get("real_train_end"),
            "real_val_end": config.get("real_val_end"),
            "use_real": config.get("use_real"),
            "train_seconds": run.meta.get("train_seconds"),
        },
        "baseline": "statsmodels MarkovRegression(k=3, switching_variance) filtered probabilities"
        " mapped to regimes by training co-occurrence",
        "confusion_test": run.meta.get("report", {}).get("confusion", {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.regime [--train | --quick] [--run-dir DIR] [--version V]``."""
    parser = argparse.ArgumentParser(prog="python -m export.regime", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--train", action="store_true", help="train the full model first")
    parser.add_argument("--quick", action="store_true", help="train the quick model first")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.train or args.quick:
        config = TrainConfig.quick_config() if args.quick else TrainConfig()
        train(config, args.run_dir).save(args.run_dir)
    run = SavedRun.load(args.run_dir)
    manifest = args.manifest or args.artifacts / MANIFEST.name
    entry = export_run(run, args.artifacts, manifest, args.version)
    size = (args.artifacts / entry.file).stat().st_size
    summary: dict[str, Any] = {"file": str(args.artifacts / entry.file), "bytes": size}
    summary.update(sha256=entry.sha256, **entry.metrics)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
