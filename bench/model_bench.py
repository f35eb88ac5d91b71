"""Regime TFT inference: ONNX Runtime vs PyTorch eager, batch sizes 1, 32 and 256.

``python -m bench.model_bench`` writes ``bench/results/model_inference.json`` and ``.md``.
Both engines run on one thread (``torch.set_num_threads(1)``, ONNX Runtime intra-op 1),
on the same scaled windows from a simulator path. PyTorch uses the trained weights from
``build/regime_tft/model.pt`` when present, else an untrained network of the same
architecture (the cost is the same). Engines are timed round-robin (one call each in
turn), so a shared machine's load hits all of them alike. Latency is per batch call;
throughput is windows/s at the median latency; the ratio is PyTorch median / ONNX Runtime
median.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 32, 256)
MIN_SECONDS = {1: 3.0, 32: 6.0, 256: 12.0}
MIN_REPS = {1: 50, 32: 10, 256: 5}


def _windows(n: int) -> np.ndarray:
    from models.market_features import FeatureWindow, market_bars_from_sim
    from models.regime_runtime import ENCODER_LENGTH
    from models.simulator import MarketSimulator

    bars = market_bars_from_sim(MarketSimulator(seed=42).path(n + ENCODER_LENGTH + 80))
    stream = FeatureWindow(ENCODER_LENGTH)
    out = [w for w in (stream.update(b) for b in bars.to_dict("records")) if w is not None]
    return np.stack(out[:n])


def _time(calls: dict[str, Callable[[], Any]], batch: int) -> dict[str, dict[str, float]]:
    """Per-call latency of each engine, measured round-robin so load hits all alike."""
    for fn in calls.values():
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {engine: [] for engine in calls}
    started = time.perf_counter()
    while (
        min(len(v) for v in samples.values()) < MIN_REPS[batch]
        or time.perf_counter() - started < MIN_SECONDS[batch]
    ):
        for engine, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[engine].append(time.perf_counter() - t0)
    out = {}
    for engine, values in samples.items():
        median = statistics.median(values)
        out[engine] = {
            "median_ms": 1e3 * median,
            "p95_ms": 1e3 * float(np.quantile(values, 0.95)),
            "windows_per_s": batch / median,
            "reps": float(len(values)),
        }
    return out


def run() -> dict[str, Any]:
    import torch

    from models.regime_runtime import MODEL_NAME, Scaling, predict_proba
    from models.regime_tft import (
        DEFAULT_RUN_DIR,
        RegimeTFTExport,
        TrainConfig,
        build_model,
        load_model,
        template_dataset,
    )
    from models.runtime import load_model as load_onnx

    torch.set_num_threads(1)
    onnx_model = load_onnx(MODEL_NAME, threads=1)
    checkpoint = DEFAULT_RUN_DIR / "model.pt"
    if checkpoint.exists():
        tft, weights = load_model(checkpoint), "trained (build/regime_tft/model.pt)"
    else:
        tft = build_model(template_dataset(), TrainConfig()).eval()
        weights = "untrained, same architecture (no build/regime_tft/model.pt)"
    wrapper = RegimeTFTExport(tft).eval()
    raw = _windows(max(BATCH_SIZES))
    scaled = Scaling.from_dict(onnx_model.entry.extra["scaling"]).apply(raw)
    name = onnx_model.entry.inputs[0].name
    rows: list[dict[str, Any]] = []
    ratio: dict[str, float] = {}
    for batch in BATCH_SIZES:
        x_np, x_raw = scaled[:batch], raw[:batch]
        x_t = torch.from_numpy(x_np)

        def torch_call(x: torch.Tensor = x_t) -> Any:
            with torch.inference_mode():
                return wrapper(x)

        timings = _time(
            {
                "onnxruntime": functools.partial(onnx_model.run, {name: x_np}),
                "onnxruntime+predict_proba": functools.partial(predict_proba, onnx_model, x_raw),
                "pytorch_eager": torch_call,
            },
            batch,
        )
        for engine, t in timings.items():
            rows.append({"batch": batch, "engine": engine, **t})
        ratio[str(batch)] = (
            timings["pytorch_eager"]["median_ms"] / timings["onnxruntime"]["median_ms"]
        )
    return {
        "model": MODEL_NAME,
        "version": onnx_model.entry.version,
        "sha256": onnx_model.entry.sha256,
        "input": f"encoder_cont [B, {raw.shape[1]}, {raw.shape[2]}] float32",
        "torch_weights": weights,
        "threads": 1,
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": list(os.getloadavg()),
        },
        "results": rows,
        "ratio_pytorch_over_onnxruntime": ratio,
    }


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Regime TFT inference ({report['model']} {report['version']})",
        "",
        f"Input {report['input']}; one thread per engine; torch {report['torch']}, "
        f"onnxruntime {report['onnxruntime']}; PyTorch weights: {report['torch_weights']}.",
        f"Machine: {report['machine']['cpus']} CPUs, load average at start "
        f"{', '.join(f'{v:.2f}' for v in report['machine']['load_avg_at_start'])} "
        "(the machine is shared: absolute figures move with the load, the ratio less so).",
        "",
        "| batch | engine | median ms | p95 ms | windows/s | reps |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch']} | {r['engine']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['windows_per_s']:.0f} | {int(r['reps'])} |"
        )
    lines += ["", "PyTorch eager / ONNX Runtime median latency:", ""]
    for batch, value in report["ratio_pytorch_over_onnxruntime"].items():
        lines.append(f"- batch {batch}: {value:.1f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_inference.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "model_inference.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
