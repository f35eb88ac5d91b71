"""Model inference: ONNX Runtime vs PyTorch eager, regime TFT and vol N-BEATS, batch 1 and 64.

``python -m bench.model_bench`` writes ``bench/results/model_inference.json`` and ``.md``.

Engines, all on one core (``torch.set_num_threads(1)``; ONNX Runtime intra- and inter-op
threads 1), on the same inputs (scaled market-feature windows and log-vol histories from
a simulator path):

``onnxruntime_served``
    the sessions the dataflow uses: :func:`models.runtime.load_model` (sha256-verified
    artifact, :func:`models.runtime.inference_session`: ``ORT_ENABLE_ALL`` without
    ``SkipLayerNormFusion``, sequential, no spinning; batch 1 runs in the session with the
    batch dimension pinned to 1, other sizes in the dynamic one) called through
    ``LoadedModel.run``.
``onnxruntime_tuned``
    the same artifact bytes in a served session with the batch dimension pinned to the
    benchmarked size, run through IO binding to input and output buffers allocated once.
``pytorch_eager``
    the export wrappers (``RegimeTFTExport``, ``NBeatsExport``: pytorch-forecasting's own
    forward) over the weights the artifacts were exported from
    (``build/regime_tft/model.pt``, ``build/vol_nbeats/model.ckpt``; their agreement with
    the artifact is measured and reported), under ``torch.inference_mode``. Without those
    files it times an untrained network of the same architecture and says so. The
    speed-ups are eager / ONNX Runtime with this engine as eager.
``pytorch_eager_lean`` (regime_tft only)
    :class:`export.regime.LeanRegimeTFT`, the module the regime artifact is exported from
    (same weights and function, linear maps composed, feature GRNs stacked in closed form,
    constants precomputed), in eager mode: it shows how much of the ONNX Runtime speed-up
    is the leaner graph itself.

Engines are timed round-robin (one call of each in turn, the order rotating every
round), so the load of a shared machine and the cold caches after a PyTorch call fall on
all of them alike; Python's garbage collector is off inside the timed
loops (as ``timeit`` does). Reported per model, batch and engine: p50 / p99 /
mean latency of one call, throughput (rows per second of busy time), and the ratios
eager / ONNX Runtime at p50 and p99. ``cpu_share`` is the process CPU time over the
wall time of the timed loop: below 1 the process was waiting for a core. Each call's
process CPU time is recorded too (``cpu p50`` / ``cpu p99``): on a shared machine its p99
leaves out the time spent waiting for a core, which the wall-clock p99 includes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "model_inference"
BATCH_SIZES = (1, 64)
MODELS = ("regime_tft", "vol_nbeats")
BLOCKS = 10
ROUNDS = {
    ("regime_tft", 1): 300,
    ("regime_tft", 64): 20,
    ("vol_nbeats", 1): 2000,
    ("vol_nbeats", 64): 100,
}
TARGET_P99_MS = 2.0
TARGET_SPEEDUP = 5.0
ENGINES = ("onnxruntime_served", "onnxruntime_tuned", "pytorch_eager", "pytorch_eager_lean")
SAMPLES = ("all", "quietest")


# ---------------------------------------------------------------------------------------
# Inputs


def regime_inputs(n: int) -> np.ndarray:
    """``n`` model inputs of a simulator path: 32-bar windows of the scaled market features
    and the labeler's causal labels, as the market step builds them (float32)."""
    from export.manifest import load_manifest
    from models.market_features import market_bars_from_sim
    from models.regime_runtime import (
        ENCODER_LENGTH,
        RegimeWindow,
        Scaling,
        encoder_input,
        labeler_from_extra,
    )  # fmt: skip
    from models.simulator import MarketSimulator

    extra = load_manifest()["regime_tft"].extra
    bars = market_bars_from_sim(MarketSimulator(seed=42).path(n + ENCODER_LENGTH + 80))
    stream = RegimeWindow(ENCODER_LENGTH, labeler_from_extra(extra).streaming())
    out = [w for w in (stream.update(b) for b in bars.to_dict("records")) if w is not None]
    windows = np.stack([w for w, _ in out[:n]])
    labels = np.stack([label for _, label in out[:n]])
    return encoder_input(Scaling.from_dict(extra["scaling"]), windows, labels)


def vol_inputs(n: int) -> np.ndarray:
    """``n`` 64-value log realized-vol histories of simulator instruments (float32)."""
    from models import vol_ensemble as ve
    from models import vol_nbeats as vn

    rows = [ve.nbeats_histories(s.returns) for s in vn.simulator_series(42, 400)]
    x = np.concatenate(rows)
    return np.ascontiguousarray(x[np.isfinite(x).all(axis=1)][:n], dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Engines


def tuned_session(model_bytes: bytes, batch: int) -> Any:
    """A served session of ``model_bytes`` with the batch dimension pinned to ``batch``."""
    from models.runtime import inference_session

    return inference_session(model_bytes, threads=1, batch=batch)


def bound_call(session: Any, x: np.ndarray, out_shape: list[int]) -> tuple[Callable[[], Any], Any]:
    """``session`` run through IO binding on buffers allocated once; returns (call, output)."""
    import onnxruntime as ort

    binding = session.io_binding()
    x_value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x))
    out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, x_value)
    binding.bind_ortvalue_output(session.get_outputs()[0].name, out)

    def call() -> None:
        session.run_with_iobinding(binding)

    return call, out


def eager_regime() -> tuple[Any, Any, str]:
    """The TFT export wrapper and the lean export module with the exported weights (or
    untrained), eval mode."""
    from export.regime import LeanRegimeTFT
    from models.regime_tft import (
        DEFAULT_RUN_DIR,
        RegimeTFTExport,
        TrainConfig,
        build_model,
        load_model,
        template_dataset,
    )

    checkpoint = DEFAULT_RUN_DIR / "model.pt"
    if checkpoint.exists():
        tft, weights = load_model(checkpoint), f"trained ({_rel(checkpoint)})"
    else:
        tft = build_model(template_dataset(), TrainConfig()).eval()
        weights = f"UNTRAINED, same architecture ({_rel(checkpoint)} missing)"
    return RegimeTFTExport(tft).eval(), LeanRegimeTFT(tft).eval(), weights


def eager_vol() -> tuple[Any, str]:
    """The N-BEATS export wrapper with the exported weights (or untrained), eval mode."""
    from dataclasses import replace

    from export.manifest import load_manifest
    from models import vol_nbeats as vn

    run_dir = Path(__file__).resolve().parent.parent / vn.DEFAULT_OUT
    if (run_dir / "model.ckpt").exists():
        model, summary = vn.load_checkpoint(run_dir)
        wrapper = vn.served_module(model, summary).eval()
        return wrapper, f"trained ({_rel(run_dir / 'model.ckpt')})"
    raw: dict[str, Any] = load_manifest()["vol_nbeats"].extra["config"]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    cfg = replace(vn.TrainConfig(**fields), sim_seeds=(101,), sim_bars=600, real=())
    table = vn.build_table(vn.simulator_series(101, 600), cfg)
    model = vn.build_model(table, cfg).eval()
    weights = f"UNTRAINED, same architecture ({_rel(run_dir / 'model.ckpt')} missing)"
    return vn.NBeatsExport(model).eval(), weights


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# Timing


def _stats(values: list[float], cpu: list[float]) -> dict[str, float]:
    arr, cpu_arr = np.asarray(values), np.asarray(cpu)
    return {
        "p50_ms": 1e3 * float(np.quantile(arr, 0.50)),
        "p99_ms": 1e3 * float(np.quantile(arr, 0.99)),
        "mean_ms": 1e3 * float(arr.mean()),
        "min_ms": 1e3 * float(arr.min()),
        "cpu_p50_ms": 1e3 * float(np.quantile(cpu_arr, 0.50)),
        "cpu_p99_ms": 1e3 * float(np.quantile(cpu_arr, 0.99)),
        "reps": len(values),
    }


def time_round_robin(
    calls: dict[str, Callable[[], Any]], blocks: int, rounds: int
) -> dict[str, Any]:
    """Per-call latency of each engine, one call of each in turn, in ``blocks`` blocks.

    The order rotates by one engine every round, so each engine runs after each other
    one equally often: the call right after a PyTorch engine finds the caches cold
    (about 20 % slower at batch 1), which a fixed order would charge to one engine.

    Returns the statistics over every sample (``all``) and over the least disturbed block
    (``quietest``: the lowest sum over engines of block median / overall median, so each
    engine weighs the same and all engines come from that one block, which keeps the
    ratios fair), each block's p50 per engine and each block's CPU share.
    """
    for fn in calls.values():
        for _ in range(5):
            fn()
    order = list(calls)
    per_block: list[dict[str, list[float]]] = []
    per_block_cpu: list[dict[str, list[float]]] = []
    shares: list[float] = []
    gc.collect()
    gc.disable()  # as timeit does: a collection inside a call would land in the p99
    try:
        for _ in range(blocks):
            samples: dict[str, list[float]] = {k: [] for k in calls}
            cpu: dict[str, list[float]] = {k: [] for k in calls}
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for r in range(rounds):
                for engine in order[r % len(order) :] + order[: r % len(order)]:
                    fn = calls[engine]
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    samples[engine].append(time.perf_counter() - t0)
                    cpu[engine].append(time.process_time() - c0)
            shares.append((time.process_time() - cpu0) / (time.perf_counter() - wall0))
            per_block.append(samples)
            per_block_cpu.append(cpu)
    finally:
        gc.enable()
    # least disturbed block: lowest sum over engines of (block median / overall median),
    # so every engine weighs the same and all engines' figures come from one block
    overall = {k: float(np.median([v for b in per_block for v in b[k]])) for k in calls}
    score = [sum(float(np.median(b[k])) / overall[k] for k in calls) for b in per_block]
    quiet = int(np.argmin(score))
    return {
        "all": {
            k: _stats(
                [v for b in per_block for v in b[k]], [v for b in per_block_cpu for v in b[k]]
            )
            for k in calls
        },
        "quietest": {k: _stats(per_block[quiet][k], per_block_cpu[quiet][k]) for k in calls},
        "block_p50_ms": {k: [1e3 * float(np.median(b[k])) for b in per_block] for k in calls},
        "quietest_block": quiet,
        "cpu_share_blocks": shares,
        "cpu_share_all": float(np.mean(shares)),
        "cpu_share_quietest": shares[quiet],
    }


def _load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    running = Path("/proc/loadavg").read_text().split()[3] if Path("/proc/loadavg").exists() else ""
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "running/total": running}


def bench_model(
    model: str, inputs: np.ndarray, eager: Any, weights: str, eager_lean: Any = None
) -> dict[str, Any]:
    """All engines and batch sizes of one model (``eager_lean``: an extra eager engine)."""
    import torch

    from export.manifest import ARTIFACTS
    from models.runtime import load_model

    served = load_model(model, threads=1)
    in_name, out_name = served.entry.inputs[0].name, served.entry.outputs[0].name
    out_width = int(served.entry.outputs[0].shape[-1] or 1)
    model_bytes = (ARTIFACTS / served.entry.file).read_bytes()
    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    parity: dict[str, float] = {}
    loops: dict[str, dict[str, Any]] = {}
    for batch in BATCH_SIZES:
        x = np.ascontiguousarray(inputs[:batch])
        x_t = torch.from_numpy(x)
        tuned, tuned_out = bound_call(tuned_session(model_bytes, batch), x, [batch, out_width])

        def eager_call(x_t: torch.Tensor = x_t) -> Any:
            with torch.inference_mode():
                return eager(x_t)

        def eager_lean_call(x_t: torch.Tensor = x_t) -> Any:
            with torch.inference_mode():
                return eager_lean(x_t)

        def served_call(x: np.ndarray = x) -> Any:
            return served.run({in_name: x})[out_name]

        reference = np.asarray(served_call())
        tuned()
        parity[str(batch)] = max(
            float(np.max(np.abs(np.asarray(eager_call().numpy()) - reference))),
            float(np.max(np.abs(tuned_out.numpy() - reference))),
        )
        calls = {
            "onnxruntime_served": served_call,
            "onnxruntime_tuned": tuned,
            "pytorch_eager": eager_call,
        }
        if eager_lean is not None:
            calls["pytorch_eager_lean"] = eager_lean_call
            parity[f"{batch} (lean eager)"] = float(
                np.max(np.abs(np.asarray(eager_lean_call().numpy()) - reference))
            )
        load_before = _load()
        started = time.perf_counter()
        timings = time_round_robin(calls, BLOCKS, ROUNDS[(model, batch)])
        loops[str(batch)] = {
            "cpu_share_all": timings["cpu_share_all"],
            "cpu_share_quietest": timings["cpu_share_quietest"],
            "cpu_share_blocks": timings["cpu_share_blocks"],
            "block_p50_ms": timings["block_p50_ms"],
            "quietest_block": timings["quietest_block"],
            "seconds": time.perf_counter() - started,
            "load_1m_before": load_before["load_1m"],
            "load_1m_after": _load()["load_1m"],
        }
        ratios[str(batch)] = {}
        for sample in SAMPLES:
            stats = timings[sample]
            for engine in (e for e in ENGINES if e in calls):
                t = stats[engine]
                rows.append(
                    {
                        "model": model,
                        "batch": batch,
                        "engine": engine,
                        "sample": sample,
                        **t,
                        "rows_per_s": batch / (t["mean_ms"] / 1e3),
                    }
                )
            eager_t = stats["pytorch_eager"]
            ratios[str(batch)][sample] = {
                f"{engine}_{q}": eager_t[f"{q}_ms"] / stats[engine][f"{q}_ms"]
                for engine in ("onnxruntime_served", "onnxruntime_tuned")
                for q in ("p50", "p99")
            }
    return {
        "version": served.entry.version,
        "sha256": served.entry.sha256,
        "input": f"{in_name} {served.entry.inputs[0].shape} float32",
        "torch_weights": weights,
        "max_abs_diff_vs_served_onnx": parity,
        "results": rows,
        "eager_over_onnxruntime": ratios,
        "loops": loops,
    }


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's TFT targets, per ONNX Runtime engine and sample."""
    tft = report["models"]["regime_tft"]
    out: dict[str, Any] = {}
    for sample in SAMPLES:
        for engine in ("onnxruntime_served", "onnxruntime_tuned"):
            row = next(
                r
                for r in tft["results"]
                if r["batch"] == 1 and r["engine"] == engine and r["sample"] == sample
            )
            ratio = tft["eager_over_onnxruntime"]["1"][sample]
            out[f"{engine}/{sample}"] = {
                "batch1_p99_ms": row["p99_ms"],
                "batch1_cpu_p99_ms": row["cpu_p99_ms"],
                "p99_target_met": row["p99_ms"] <= TARGET_P99_MS,
                "speedup_p50": ratio[f"{engine}_p50"],
                "speedup_p99": ratio[f"{engine}_p99"],
                "speedup_target_met": ratio[f"{engine}_p50"] >= TARGET_SPEEDUP,
            }
    return out


def run() -> dict[str, Any]:
    import onnxruntime
    import torch

    from models.runtime import DISABLED_OPTIMIZERS

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    started, load_start = time.perf_counter(), _load()
    n = max(BATCH_SIZES)
    models: dict[str, Any] = {}
    eager, lean, weights = eager_regime()
    models["regime_tft"] = bench_model("regime_tft", regime_inputs(n), eager, weights, lean)
    eager, weights = eager_vol()
    models["vol_nbeats"] = bench_model("vol_nbeats", vol_inputs(n), eager, weights)
    report: dict[str, Any] = {
        "benchmark": NAME,
        "threads": 1,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "served_session": {
            "base": "models.runtime.inference_session(threads=1)",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "disabled_optimizers": list(DISABLED_OPTIMIZERS),
            "execution_mode": "ORT_SEQUENTIAL",
            "batch_1": "a second session with the batch dimension pinned to 1",
        },
        "tuned_session": {
            "base": "models.runtime.inference_session(threads=1, batch=the benchmarked size)",
            "io_binding": "input and output OrtValues allocated once",
        },
        "targets": {"tft_batch1_p99_ms": TARGET_P99_MS, "tft_speedup_vs_eager": TARGET_SPEEDUP},
        "models": models,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": load_start,
            "load_at_end": _load(),
        },
        "seconds": time.perf_counter() - started,
    }
    report["target_check"] = targets(report)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Model inference: ONNX Runtime vs PyTorch eager",
        "",
        f"One core per engine (torch {report['torch']} with 1 thread, onnxruntime"
        f" {report['onnxruntime']} with 1 intra-op and 1 inter-op thread); engines timed"
        f" round-robin on the same inputs (the order rotating every round), in {BLOCKS}"
        " blocks per model and batch size."
        " `onnxruntime_served` is the dataflow's sessions (`models.runtime.load_model`:"
        " ORT_ENABLE_ALL without SkipLayerNormFusion, sequential, no spinning; batch 1 in a"
        " session with the batch dimension pinned to 1);"
        " `onnxruntime_tuned` is the same artifact in a served session pinned to the batch"
        " size, run through IO binding on pre-allocated buffers. `pytorch_eager` is"
        " pytorch-forecasting's forward (the"
        " speed-ups are against it); `pytorch_eager_lean` is `export.regime.LeanRegimeTFT`,"
        " the same function in the form the regime artifact is exported from, in eager"
        " mode. Latency is per call (one batch).",
        "",
        f"Machine: {m['cpus']} CPUs, shared with other work. Load average (1 min) at start"
        f" {m['load_at_start']['load_1m']:.2f}, at end {m['load_at_end']['load_1m']:.2f}."
        " *cpu share* is the benchmark's CPU time over wall time (below 1: it waited for a"
        " core); *cpu p50 / p99* are of each call's process CPU time, which leaves out"
        " waiting for a core. *all* = every sample; *quietest* = the least disturbed block"
        " (lowest sum over"
        " engines of block median / overall median; all engines from that one block), in the"
        " spirit of `bench.common.best_of`. The last table shows how far each engine's block"
        " medians drift during the run: other work on the host moves them even at cpu share"
        " 1.00.",
        "",
        "| model | batch | engine | sample | p50 ms | p99 ms | mean ms | cpu p50 ms | cpu p99 ms"
        " | rows/s | reps |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, data in report["models"].items():
        for r in data["results"]:
            lines.append(
                f"| {model} | {r['batch']} | {r['engine']} | {r['sample']} | {r['p50_ms']:.3f}"
                f" | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | {r['cpu_p50_ms']:.3f}"
                f" | {r['cpu_p99_ms']:.3f} | {r['rows_per_s']:,.0f}"
                f" | {r['reps']} |"
            )
    lines += [
        "",
        "| model | batch | sample | eager / served p50 | eager / served p99 | eager / tuned p50"
        " | eager / tuned p99 | cpu share | load 1m before / after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for model, data in report["models"].items():
        for batch, by_sample in data["eager_over_onnxruntime"].items():
            loop = data["loops"][batch]
            for sample, r in by_sample.items():
                lines.append(
                    f"| {model} | {batch} | {sample} | {r['onnxruntime_served_p50']:.1f}x"
                    f" | {r['onnxruntime_served_p99']:.1f}x | {r['onnxruntime_tuned_p50']:.1f}x"
                    f" | {r['onnxruntime_tuned_p99']:.1f}x | {loop[f'cpu_share_{sample}']:.2f}"
                    f" | {loop['load_1m_before']:.2f} / {loop['load_1m_after']:.2f} |"
                )
    lines += [
        "",
        "| model | batch | engine | block p50 min / max ms (spread) |",
        "|---|---:|---|---|",
    ]
    for model, data in report["models"].items():
        for batch, loop in data["loops"].items():
            for engine, values in loop["block_p50_ms"].items():
                lo, hi = min(values), max(values)
                lines.append(
                    f"| {model} | {batch} | {engine} | {lo:.3f} / {hi:.3f}"
                    f" ({100 * (hi / lo - 1):.0f} %) |"
                )
    lines += ["", "PyTorch weights and agreement with the served ONNX session (max |diff|):", ""]
    for model, data in report["models"].items():
        diffs = ", ".join(
            f"batch {b}: {v:.1e}" for b, v in data["max_abs_diff_vs_served_onnx"].items()
        )
        lines.append(f"- {model}: {data['torch_weights']}; {diffs}")
    lines += [
        "",
        f"Targets (regime_tft, batch 1): p99 <= {TARGET_P99_MS:g} ms, and >= "
        f"{TARGET_SPEEDUP:g}x faster than eager (p50 ratio):",
        "",
    ]
    for key, t in report["target_check"].items():
        lines.append(
            f"- {key}: p99 {t['batch1_p99_ms']:.2f} ms"
            f" ({'met' if t['p99_target_met'] else 'NOT met'};"
            f" p99 of process CPU time per call {t['batch1_cpu_p99_ms']:.2f} ms);"
            f" {t['speedup_p50']:.1f}x at p50, {t['speedup_p99']:.1f}x at p99"
            f" ({'met' if t['speedup_target_met'] else 'NOT met'})"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{NAME}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
