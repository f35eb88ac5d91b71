"""Temporal Fusion Transformer that gives the regime probabilities of the next bar.

Data
    A sample is a window of :data:`ENCODER_LENGTH` consecutive market-feature vectors
    (:mod:`models.market_features`, computed by the one ``MarketFeatures`` class used in
    serving) ending at bar ``t``; its target is the regime of bar ``t + 1``.
    Simulator paths give the true regimes; the real S&P 500 bars
    (:func:`~models.market_features.market_bars_from_real`, 1999-2018) are labelled by
    :class:`~models.labeler.RegimeLabeler`, whose fill is fitted on the real training
    span only. Splits: simulator seeds are disjoint between train, validation and test;
    real bars are split by date (train to 2012, validation 2013-2014, test 2015-2018),
    windows of a later split may look back into the earlier one, never forward.
Inputs
    Raw feature windows are standardised with the training mean/std per feature
    (:class:`Scaling`, clipped at +/- ``clip``) and fed as the unknown reals of a
    pytorch-forecasting ``TimeSeriesDataSet`` (plus its ``relative_time_idx``) with
    no further scaling, so that ONNX serving only needs the same :class:`Scaling`.
Model
    ``TemporalFusionTransformer`` with hidden_size 64, 4 attention heads, dropout 0.1,
    hidden_continuous_size 32, CrossEntropy over the 7 regimes (model order of
    :data:`~models.regimes.REGIMES`); Lightning with EarlyStopping on the validation
    loss, gradient clipping, ReduceLROnPlateau, one CPU thread, seeded. Its internal
    linear resampling runs as an exact matrix product (:func:`use_exact_resampling`).
Baselines (causal, on the same held-out windows)
    majority class of the training targets; statsmodels ``MarkovRegression``
    (3 regimes, switching variance) on the returns, fitted on the training returns,
    whose *filtered* state probabilities are mapped to the 7 regimes by the training
    co-occurrence P(regime of t+1 | state at t); and the labeler's own label at ``t``,
    calibrated the same way ("labeler persistence").

``python -m models.regime_tft [--quick]`` trains and writes the run directory
(``build/regime_tft`` by default): ``model.pt`` (state dict), ``run.json`` (config,
scaling, metrics) and ``holdout.npz`` (held-out raw windows and targets). The ONNX
export is :mod:`export.regime`; serving uses :mod:`models.regime_runtime` (re-exported
here: :func:`predict_proba`), which needs no torch.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.data.encoders import NaNLabelEncoder
from pytorch_forecasting.metrics import CrossEntropy
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    TimeDistributedInterpolation,
)
from torch import nn

from models.labeler import RegimeLabeler
from models.market_features import (
    MARKET_FEATURES,
    compute_features,
    feature_windows,
    market_bars_from_real,
    market_bars_from_sim,
)
from models.regime_runtime import (
    ENCODER_LENGTH,
    MODEL_NAME,
    N_CLASSES,
    Scaling,
    predict_proba,
    regime_summary,
)
from models.simulator import MarketSimulator

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "ENCODER_LENGTH",
    "MODEL_NAME",
    "N_CLASSES",
    "Scaling",
    "TrainConfig",
    "predict_proba",
    "regime_summary",
    "train",
]

TFT_HPARAMS: dict[str, Any] = {
    "hidden_size": 64,
    "attention_head_size": 4,
    "dropout": 0.1,
    "hidden_continuous_size": 32,
}
REAL_FEATURE_ORDER: tuple[str, ...] = ("relative_time_idx", *MARKET_FEATURES)
"""Order of the TFT's continuous inputs (``x_reals``): the dataset's time index first."""
DEFAULT_RUN_DIR = Path(__file__).resolve().parent.parent / "build" / "regime_tft"
_TARGET, _GROUP, _TIME = "regime", "series", "time_idx"
_EPS = 1e-7

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Series and windows


@dataclass(frozen=True)
class Series:
    """Raw features and regime codes of one history, and the window ends in one split.

    A window ending at ``t`` covers bars ``t - ENCODER_LENGTH + 1 .. t`` and predicts the
    label of ``t + 1``. ``ends`` is contiguous.
    """

    name: str
    source: str
    features: FloatArray
    labels: IntArray
    ends: IntArray

    def windows(self) -> tuple[FloatArray, IntArray]:
        """Raw windows (n, T, F) and targets (n,)."""
        return feature_windows(self.features, ENCODER_LENGTH, self.ends), self.labels[self.ends + 1]


def _valid_ends(
    features: FloatArray, labels: IntArray, lo: int = 0, hi: int | None = None
) -> IntArray:
    """Window ends in [lo, hi) whose window is NaN-free and whose next label is known."""
    n = len(features)
    ok_rows = np.isfinite(features).all(axis=1)
    first = int(np.argmax(ok_rows)) if ok_rows.any() else n
    start = max(lo, first + ENCODER_LENGTH - 1)
    stop = min(n - 1, n - 1 if hi is None else hi)
    ends = np.arange(start, max(start, stop), dtype=np.int64)
    return ends[labels[ends + 1] >= 0]


def sim_series(seed: int, n_bars: int) -> Series:
    """A simulator path of ``n_bars`` with its true regimes; every valid window."""
    path = MarketSimulator(seed=seed).path(n_bars)
    features = compute_features(market_bars_from_sim(path))
    labels = path["regime_code"].to_numpy(dtype=np.int64)
    return Series(f"sim-{seed}", "sim", features, labels, _valid_ends(features, labels))


def real_series(train_end: str, val_end: str) -> tuple[Series, Series, Series, RegimeLabeler]:
    """Real S&P 500 bars labelled by the labeler (fitted up to ``train_end``): 3 splits."""
    bars = market_bars_from_real()
    features = compute_features(bars)
    dates = bars.index
    tz = dates.tz
    cut1 = int(dates.searchsorted(pd.Timestamp(train_end, tz=tz), side="right"))
    cut2 = int(dates.searchsorted(pd.Timestamp(val_end, tz=tz), side="right"))
    labeler = RegimeLabeler().fit(features[:cut1])
    labels = labeler.label(features).labels
    # a window belongs to the split of the bar it predicts (t + 1)
    splits = [(0, cut1 - 1), (cut1 - 1, cut2 - 1), (cut2 - 1, len(dates) - 1)]
    names = ("real-train", "real-val", "real-test")
    out = [
        Series(name, "real", features, labels, _valid_ends(features, labels, lo, hi))
        for name, (lo, hi) in zip(names, splits, strict=True)
    ]
    return out[0], out[1], out[2], labeler


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """What one training run uses; :meth:`quick_config` is the seconds-long test variant."""

    sim_train_seeds: tuple[int, ...] = (101, 102, 103, 104, 105, 106, 107, 108)
    sim_val_seeds: tuple[int, ...] = (201, 202)
    sim_test_seeds: tuple[int, ...] = (301, 302, 303, 304)
    sim_bars: int = 1200
    sim_eval_bars: int = 1000
    use_real: bool = True
    real_train_end: str = "2012-12-31"
    real_val_end: str = "2014-12-31"
    max_epochs: int = 10
    limit_train_batches: int = 40
    batch_size: int = 128
    learning_rate: float = 3e-3
    gradient_clip_val: float = 0.5
    early_stopping_patience: int = 3
    lr_patience: int = 1
    seed: int = 7
    markov_regimes: int = 3
    markov_search_reps: int = 5
    quick: bool = False

    @classmethod
    def quick_config(cls) -> TrainConfig:
        """Tiny run for tests: two short paths, one epoch of a few batches, no real data."""
        return cls(
            sim_train_seeds=(101, 102), sim_val_seeds=(201,), sim_test_seeds=(301,),
            sim_bars=400, sim_eval_bars=300, use_real=False, max_epochs=1,
            limit_train_batches=3, batch_size=64, markov_search_reps=0, quick=True,
        )  # fmt: skip


@dataclass
class Splits:
    """Series per split, and the labeler fitted for the real bars (None without them)."""

    train: list[Series]
    val: list[Series]
    test: list[Series]
    real_labeler: RegimeLabeler | None = None


def build_splits(config: TrainConfig) -> Splits:
    """Simulator and (optionally) real series for train / validation / test."""
    train = [sim_series(s, config.sim_bars) for s in config.sim_train_seeds]
    val = [sim_series(s, config.sim_eval_bars) for s in config.sim_val_seeds]
    test = [sim_series(s, config.sim_eval_bars) for s in config.sim_test_seeds]
    labeler = None
    if config.use_real:
        r_train, r_val, r_test, labeler = real_series(config.real_train_end, config.real_val_end)
        train.append(r_train)
        val.append(r_val)
        test.append(r_test)
    return Splits(train, val, test, labeler)


def fit_scaling(series: Sequence[Series]) -> Scaling:
    """Scaling of the feature rows the training windows cover."""
    rows = [s.features[s.ends[0] - ENCODER_LENGTH + 1 : s.ends[-1] + 1] for s in series]
    return Scaling.fit(np.concatenate(rows))


# ---------------------------------------------------------------------------------------
# pytorch-forecasting dataset and model


def _frame(series: Sequence[Series], scaling: Scaling) -> pd.DataFrame:
    """Long frame for TimeSeriesDataSet: one group per series span, scaled features."""
    parts = []
    for s in series:
        lo, hi = int(s.ends[0]) - ENCODER_LENGTH + 1, int(s.ends[-1]) + 2
        scaled = scaling.apply(s.features[lo:hi]).astype(np.float64)
        part = pd.DataFrame(scaled, columns=list(MARKET_FEATURES))
        part[_GROUP] = s.name
        part[_TIME] = np.arange(lo, hi, dtype=np.int64)
        part[_TARGET] = [str(int(c)) for c in s.labels[lo:hi]]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def make_dataset(frame: pd.DataFrame) -> TimeSeriesDataSet:
    """TimeSeriesDataSet of full ENCODER_LENGTH windows predicting one step (no scaling)."""
    classes = pd.Series([str(i) for i in range(N_CLASSES)])
    return TimeSeriesDataSet(
        frame,
        time_idx=_TIME,
        target=_TARGET,
        group_ids=[_GROUP],
        max_encoder_length=ENCODER_LENGTH,
        min_encoder_length=ENCODER_LENGTH,
        max_prediction_length=1,
        min_prediction_length=1,
        time_varying_unknown_reals=list(MARKET_FEATURES),
        target_normalizer=NaNLabelEncoder(add_nan=False).fit(classes),
        categorical_encoders={_GROUP: NaNLabelEncoder(add_nan=True)},
        scalers=dict.fromkeys(MARKET_FEATURES),
        add_relative_time_idx=True,
        add_target_scales=False,
        add_encoder_length=False,
    )


def template_dataset() -> TimeSeriesDataSet:
    """A dataset with the model's variables, to rebuild the network without training data."""
    n = ENCODER_LENGTH + 1 + N_CLASSES
    frame = pd.DataFrame(np.zeros((n, len(MARKET_FEATURES))), columns=list(MARKET_FEATURES))
    frame[_GROUP] = "template"
    frame[_TIME] = np.arange(n)
    frame[_TARGET] = [str(i % N_CLASSES) for i in range(n)]
    return make_dataset(frame)


def build_model(dataset: TimeSeriesDataSet, config: TrainConfig) -> TemporalFusionTransformer:
    """The TFT with the default hyper-parameters and a 7-class CrossEntropy head."""
    with warnings.catch_warnings():
        # Lightning notes that loss modules are saved twice; harmless here.
        warnings.filterwarnings("ignore", message="Attribute .* is an instance of `nn.Module`")
        model = TemporalFusionTransformer.from_dataset(
            dataset,
            **TFT_HPARAMS,
            output_size=N_CLASSES,
            loss=CrossEntropy(),
            logging_metrics=nn.ModuleList([]),
            learning_rate=config.learning_rate,
            optimizer="adam",
            reduce_on_plateau_patience=config.lr_patience,
            log_interval=-1,
        )
    if list(model.hparams.x_reals) != list(REAL_FEATURE_ORDER):
        raise RuntimeError(f"unexpected TFT input order {model.hparams.x_reals}")
    use_exact_resampling(model)
    return model


def resample_matrix(n_in: int, n_out: int) -> FloatArray:
    """(n_in, n_out) matrix of 1-D linear interpolation with ``align_corners=True``."""
    weights = np.zeros((n_in, n_out))
    for j in range(n_out):
        pos = j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(np.floor(pos)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = pos - lo
        weights[lo, j] += 1.0 - frac
        weights[hi, j] += frac
    return weights


@functools.lru_cache(maxsize=64)
def _resample_tensor(n_in: int, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(resample_matrix(n_in, n_out)).to(dtype)


def use_exact_resampling(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the TFT's ``F.interpolate`` resampling for the same linear map as a matrix.

    pytorch-forecasting resamples vectors to another width with linear interpolation
    (``align_corners=True``), a fixed linear map. ``F.interpolate`` computes its source
    coordinates in float32: on the 512-wide variable-selection input that alone moved
    the output probabilities by up to 7.7e-5 against a float64 evaluation, and ONNX
    Runtime's ``Resize`` rounds differently again (ONNX vs PyTorch: 1.1e-4). The matrix
    (weights computed in float64, one MatMul) is the same function; float32 vs float64
    drops to 8e-7 and PyTorch and ONNX compute the same MatMul. Applied by
    :func:`build_model`, so training, evaluation and export all use it.
    """
    for module in model.modules():
        if type(module) is TimeDistributedInterpolation:
            module.__class__ = _MatrixInterpolation
    return model


class _MatrixInterpolation(TimeDistributedInterpolation):
    """TimeDistributedInterpolation whose resampling is an exact matrix product."""

    def interpolate(self, x: torch.Tensor) -> torch.Tensor:
        matrix = _resample_tensor(int(x.size(-1)), self.output_size, x.dtype)
        upsampled = x @ matrix.to(device=x.device)
        if self.trainable:
            upsampled = upsampled * self.gate(self.mask.unsqueeze(0)) * 2.0
        return upsampled


def load_model(path: Path) -> TemporalFusionTransformer:
    """The TFT of a saved state dict (``model.pt``), in eval mode."""
    model = build_model(template_dataset(), TrainConfig())
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


class RegimeTFTExport(nn.Module):
    """Plain-tensor wrapper: ``encoder_cont [B, T, F] -> probabilities [B, 7]``.

    Builds the TFT's input dict inside (``relative_time_idx`` prepended like the
    dataset does, full lengths, the decoder step carrying only the known
    ``relative_time_idx`` = 0) and returns the softmax of the next-bar logits.
    """

    def __init__(self, tft: TemporalFusionTransformer) -> None:
        super().__init__()
        self.tft = tft

    def forward(self, encoder_cont: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = encoder_cont.shape
        dtype = encoder_cont.dtype
        rel = torch.arange(-steps, 0, dtype=dtype) / ENCODER_LENGTH
        rel = rel.view(1, steps, 1).expand(batch, steps, 1)
        x = {
            "encoder_cat": torch.zeros(batch, steps, 0, dtype=torch.long),
            "decoder_cat": torch.zeros(batch, 1, 0, dtype=torch.long),
            "encoder_cont": torch.cat([rel, encoder_cont], dim=-1),
            "decoder_cont": torch.zeros(batch, 1, encoder_cont.shape[-1] + 1, dtype=dtype),
            "encoder_lengths": torch.full((batch,), steps, dtype=torch.long),
            "decoder_lengths": torch.ones(batch, dtype=torch.long),
            "target_scale": torch.zeros(batch, 2, dtype=dtype),
        }
        logits = self.tft(x)["prediction"][:, 0, :]
        return torch.softmax(logits, dim=-1)


def torch_proba(model: TemporalFusionTransformer, scaled: npt.NDArray[np.float32]) -> FloatArray:
    """Probabilities (n, 7) of scaled windows (n, T, F) with the PyTorch model, in batches."""
    wrapper = RegimeTFTExport(model).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(scaled), 512):
            out.append(wrapper(torch.from_numpy(scaled[lo : lo + 512])).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.empty((0, N_CLASSES))


# ---------------------------------------------------------------------------------------
# Metrics and baselines


def accuracy(proba: FloatArray, target: IntArray) -> float:
    """Share of windows whose most probable regime is the target."""
    return float(np.mean(np.argmax(proba, axis=1) == target)) if len(target) else float("nan")


def log_loss(proba: FloatArray, target: IntArray) -> float:
    """Mean negative log probability of the target (probabilities clipped at 1e-7)."""
    if not len(target):
        return float("nan")
    p = np.clip(proba[np.arange(len(target)), target], _EPS, 1.0)
    return float(-np.mean(np.log(p)))


def _calibrate(states: FloatArray, target: IntArray) -> FloatArray:
    """P(target | state) from soft state memberships (n, k), Laplace-smoothed: (k, 7)."""
    counts = states.T @ np.eye(N_CLASSES)[target] + 0.5
    return np.asarray(counts / counts.sum(axis=1, keepdims=True), dtype=np.float64)


def markov_filtered(
    returns: FloatArray,
    k: int,
    params: FloatArray | None = None,
    search_reps: int = 5,
    seed: int | None = None,
) -> Any:
    """Fitted (``params`` None) or filtered MarkovRegression results on percent returns.

    ``seed`` fixes statsmodels' random start-parameter search (otherwise fresh entropy).
    """
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MarkovRegression(100.0 * returns, k_regimes=k, switching_variance=True)
        if params is None:
            return model.fit(disp=False, search_reps=search_reps, rng=seed)
        return model.filter(params)


def markov_baseline(
    train: Sequence[Series],
    test: Sequence[Series],
    k: int,
    search_reps: int = 5,
    seed: int | None = None,
) -> dict[str, FloatArray]:
    """Causal MarkovRegression probabilities of each test series' windows, per source.

    One model per source (simulator, real), fitted on the training returns of that
    source; test series are filtered with those parameters. Returns probabilities by
    test series name.
    """
    ret = MARKET_FEATURES.index("ret_1")
    out: dict[str, FloatArray] = {}
    for source in sorted({s.source for s in test}):
        fit_series = [s for s in train if s.source == source]
        if not fit_series:
            continue
        spans = [(s, s.ends[0], s.ends[-1] + 1) for s in fit_series]
        returns = np.concatenate([s.features[lo:hi, ret] for s, lo, hi in spans])
        fitted = markov_filtered(returns, k, search_reps=search_reps, seed=seed)
        filt = np.asarray(fitted.filtered_marginal_probabilities)
        targets = np.concatenate([s.labels[lo + 1 : hi + 1] for s, lo, hi in spans])
        mapping = _calibrate(filt, targets)
        for s in (t for t in test if t.source == source):
            first = int(np.argmax(np.isfinite(s.features).all(axis=1)))
            res = markov_filtered(s.features[first:, ret], k, np.asarray(fitted.params))
            f = np.asarray(res.filtered_marginal_probabilities)
            out[s.name] = f[s.ends - first] @ mapping
    return out


def labeler_baseline(
    train: Sequence[Series], test: Sequence[Series], real_labeler: RegimeLabeler | None
) -> dict[str, FloatArray]:
    """The labeler's label at ``t`` (calibrated on training) as the forecast for ``t + 1``."""
    out: dict[str, FloatArray] = {}
    for source in sorted({s.source for s in test}):
        fit_series = [s for s in train if s.source == source]
        if not fit_series:
            continue
        labeler = real_labeler if source == "real" and real_labeler else None
        if labeler is None:
            labeler = RegimeLabeler().fit(np.concatenate([s.features for s in fit_series]))
        one_hot = np.eye(N_CLASSES)
        pred = [labeler.label(s.features).labels for s in fit_series]
        mapping = _calibrate(
            np.concatenate([one_hot[p[s.ends]] for p, s in zip(pred, fit_series, strict=True)]),
            np.concatenate([s.labels[s.ends + 1] for s in fit_series]),
        )
        for s in (t for t in test if t.source == source):
            out[s.name] = one_hot[labeler.label(s.features).labels[s.ends]] @ mapping
    return out


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """A trained model and everything the export needs."""

    model: TemporalFusionTransformer
    scaling: Scaling
    config: TrainConfig
    metrics: dict[str, float]
    holdout_windows: FloatArray
    """Raw held-out windows (n, T, F), all test series concatenated."""
    holdout_target: IntArray
    holdout_source: npt.NDArray[np.str_]
    train_seconds: float
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        """Write ``model.pt``, ``run.json`` and ``holdout.npz`` to ``run_dir``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), run_dir / "model.pt")
        np.savez_compressed(
            run_dir / "holdout.npz",
            windows=self.holdout_windows,
            target=self.holdout_target,
            source=self.holdout_source,
        )
        meta = {
            "config": asdict(self.config),
            "scaling": self.scaling.to_dict(),
            "metrics": self.metrics,
            "train_seconds": self.train_seconds,
            "report": self.report,
        }
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")


@dataclass
class SavedRun:
    """A run directory read back: model, scaling, metrics, held-out data."""

    model: TemporalFusionTransformer
    scaling: Scaling
    metrics: dict[str, float]
    meta: dict[str, Any]
    holdout_windows: FloatArray
    holdout_target: IntArray

    @classmethod
    def load(cls, run_dir: Path) -> SavedRun:
        """Read what :meth:`TrainResult.save` wrote."""
        meta = json.loads((run_dir / "run.json").read_text())
        with np.load(run_dir / "holdout.npz") as data:
            windows, target = data["windows"], data["target"]
        return cls(
            load_model(run_dir / "model.pt"),
            Scaling.from_dict(meta["scaling"]),
            dict(meta["metrics"]),
            meta,
            np.asarray(windows, dtype=np.float64),
            np.asarray(target, dtype=np.int64),
        )


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="pytorch_forecasting")
    warnings.filterwarnings("ignore", category=UserWarning)


def train(config: TrainConfig, run_dir: Path | None = None) -> TrainResult:
    """Build the splits, train the TFT, evaluate it and the baselines on the test split."""
    _quiet_lightning()
    torch.set_num_threads(1)
    started = time.perf_counter()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    splits = build_splits(config)
    scaling = fit_scaling(splits.train)
    train_ds = make_dataset(_frame(splits.train, scaling))
    val_ds = make_dataset(_frame(splits.val, scaling))
    train_dl = train_ds.to_dataloader(train=True, batch_size=config.batch_size, num_workers=0)
    val_dl = val_ds.to_dataloader(train=False, batch_size=512, num_workers=0)
    model = build_model(train_ds, config)
    checkpoints = (run_dir or DEFAULT_RUN_DIR) / "checkpoints"
    best = ModelCheckpoint(dirpath=checkpoints, monitor="val_loss", mode="min", save_top_k=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.max_epochs,
        limit_train_batches=config.limit_train_batches,
        gradient_clip_val=config.gradient_clip_val,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", patience=config.early_stopping_patience),
            best,
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(model, train_dataloaders=train_dl, val_dataloaders=val_dl)
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
    model.eval()
    train_seconds = time.perf_counter() - started
    result = evaluate(model, scaling, splits, config)
    result.train_seconds = train_seconds
    result.metrics["epochs"] = float(trainer.current_epoch)
    log.info("regime TFT trained in %.1f s: %s", train_seconds, result.metrics)
    return result


def evaluate(
    model: TemporalFusionTransformer, scaling: Scaling, splits: Splits, config: TrainConfig
) -> TrainResult:
    """Test-split metrics of the TFT and the baselines, per source and overall."""
    windows, targets, sources, names = [], [], [], []
    for s in splits.test:
        w, y = s.windows()
        windows.append(w)
        targets.append(y)
        sources.append(np.full(len(y), s.source))
        names.append(np.full(len(y), s.name))
    x = np.concatenate(windows)
    y = np.concatenate(targets)
    source = np.concatenate(sources)
    name = np.concatenate(names)
    proba = torch_proba(model, scaling.apply(x))
    train_targets = np.concatenate([s.labels[s.ends + 1] for s in splits.train])
    majority = np.bincount(train_targets, minlength=N_CLASSES).argmax()
    prior = np.bincount(train_targets, minlength=N_CLASSES) / len(train_targets)
    baselines = {
        "majority": np.tile(prior, (len(y), 1)),
        "markov": _by_series(
            markov_baseline(
                splits.train, splits.test, config.markov_regimes, config.markov_search_reps
            ),
            name,
        ),
        "labeler": _by_series(
            labeler_baseline(splits.train, splits.test, splits.real_labeler), name
        ),
    }
    metrics: dict[str, float] = {}
    report: dict[str, Any] = {"n_test": {}, "confusion": {}}
    for scope in ("all", *sorted(set(source.tolist()))):
        rows = np.ones(len(y), bool) if scope == "all" else source == scope
        suffix = "" if scope == "all" else f"_{scope}"
        metrics[f"accuracy{suffix}"] = accuracy(proba[rows], y[rows])
        metrics[f"log_loss{suffix}"] = log_loss(proba[rows], y[rows])
        metrics[f"majority_accuracy{suffix}"] = float(np.mean(y[rows] == majority))
        for base in ("majority", "markov", "labeler"):
            metrics[f"{base}_log_loss{suffix}"] = log_loss(baselines[base][rows], y[rows])
            if base != "majority":
                metrics[f"{base}_accuracy{suffix}"] = accuracy(baselines[base][rows], y[rows])
        report["n_test"][scope] = int(rows.sum())
        report["confusion"][scope] = _confusion(y[rows], proba[rows].argmax(axis=1)).tolist()
    metrics["baseline_accuracy"] = metrics["markov_accuracy"]
    metrics["baseline_log_loss"] = metrics["markov_log_loss"]
    return TrainResult(model, scaling, config, metrics, x, y, source, 0.0, report)


def _by_series(per_series: dict[str, FloatArray], names: npt.NDArray[np.str_]) -> FloatArray:
    out = np.full((len(names), N_CLASSES), 1.0 / N_CLASSES)
    for key, proba in per_series.items():
        out[names == key] = proba
    return out


def _confusion(truth: IntArray, predicted: IntArray) -> IntArray:
    return np.bincount(truth * N_CLASSES + predicted, minlength=N_CLASSES**2).reshape(
        N_CLASSES, N_CLASSES
    )


# ---------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.regime_tft [--quick] [--run-dir DIR]``: train and save a run."""
    parser = argparse.ArgumentParser(prog="python -m models.regime_tft", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run for tests (< 60 s)")
    parser.add_argument("--run-dir", type=Path, default=None, help="where to write the run")
    parser.add_argument("--max-epochs", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.quick_config() if args.quick else TrainConfig()
    if args.max_epochs is not None:
        config = replace(config, max_epochs=args.max_epochs)
    run_dir = args.run_dir or (
        DEFAULT_RUN_DIR.with_name("regime_tft_quick") if args.quick else DEFAULT_RUN_DIR
    )
    result = train(config, run_dir)
    result.save(run_dir)
    summary = {"run_dir": str(run_dir), "train_seconds": round(result.train_seconds, 1)}
    summary.update({k: round(v, 4) for k, v in result.metrics.items()})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
