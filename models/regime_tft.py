"""Temporal Fusion Transformer that gives the regime probabilities of the next bar.

Data
    A sample is a window of :data:`ENCODER_LENGTH` consecutive market-feature vectors
    (:mod:`models.market_features`, computed by the one ``MarketFeatures`` class used in
    serving) ending at bar ``t``, with the *observed* label of each of those bars (the
    rule-based labeler's causal label, :attr:`Series.observed`: what serving computes
    with :class:`~models.labeler.StreamingLabeler`); its target is the regime of bar
    ``t + 1``. The observed labeler is the one fitted on the real training span (the
    simulator training series when there are no real bars).
    Simulator paths give the true regimes; the real S&P 500 bars
    (:func:`~models.market_features.market_bars_from_real`, 1999-2018) are labelled by
    :class:`~models.labeler.RegimeLabeler`, whose fill is fitted on the real training
    span only. Splits: simulator seeds are disjoint between train, validation and test;
    real bars are split by date (train to 2012, validation 2013-2014, test 2015-2018),
    windows of a later split may look back into the earlier one, never forward.
Inputs
    Raw feature windows are standardised with the training mean/std per feature
    (:class:`Scaling`, clipped at +/- ``clip``), the labels one-hot encoded (7 channels,
    unscaled; :func:`~models.regime_runtime.encoder_input`), and both fed as the unknown
    reals of a pytorch-forecasting ``TimeSeriesDataSet`` (plus its
    ``relative_time_idx``) with no further scaling, so that ONNX serving only needs the
    same :class:`Scaling` and labeler.
Model
    ``TemporalFusionTransformer`` with hidden_size 64, 4 attention heads, dropout 0.1,
    hidden_continuous_size 32, CrossEntropy over the 7 regimes (model order of
    :data:`~models.regimes.REGIMES`); :class:`RegimeTFT` adds the log training
    transition row P(target of t+1 | observed label at t) of the last bar's label to its
    logits (persistence as the prior; the TFT learns the correction, end to end). After
    training the correction is shrunk toward the prior by the scale in [0, 1] with the
    lowest log-loss on the real validation span (:func:`fit_correction_scale`; all
    validation windows without real bars).
    Lightning with EarlyStopping on the validation loss, gradient clipping,
    ReduceLROnPlateau, one CPU thread, seeded. Its internal linear resampling runs as an
    exact matrix product (:func:`use_exact_resampling`).
Baselines (causal, on the same held-out windows)
    persistence of the observed label (``persistence_*`` metrics); majority class of the
    training targets; statsmodels ``MarkovRegression``
    (3 regimes, switching variance) on the returns, fitted on the training returns,
    whose *filtered* state probabilities are mapped to the 7 regimes by the training
    co-occurrence P(regime of t+1 | state at t); and the observed label at ``t``,
    calibrated the same way ("labeler persistence").

``python -m models.regime_tft [--quick]`` trains and writes the run directory
(``build/regime_tft`` by default): ``model.pt`` (state dict), ``run.json`` (config,
scaling, observed labeler, metrics) and ``holdout.npz`` (held-out raw windows, their
observed labels and targets). The ONNX
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
    INPUT_CHANNELS,
    MODEL_NAME,
    N_CLASSES,
    PENDING_WEIGHT,
    Scaling,
    encoder_input,
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
REAL_FEATURE_ORDER: tuple[str, ...] = ("relative_time_idx", *INPUT_CHANNELS)
"""Order of the TFT's continuous inputs (``x_reals``): the dataset's time index first."""
DEFAULT_RUN_DIR = Path(__file__).resolve().parent.parent / "build" / "regime_tft"
_TARGET, _GROUP, _TIME, _WEIGHT = "regime", "series", "time_idx", "weight"
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
    observed: IntArray | None = None
    """The observed labeler's causal label of every bar (-1 in warm-up): a model input."""
    pending: IntArray | None = None
    """Its pending label of every bar (:attr:`~models.labeler.LabelResult.pending`)."""

    def windows(self) -> tuple[FloatArray, IntArray]:
        """Raw windows (n, T, F) and targets (n,)."""
        return feature_windows(self.features, ENCODER_LENGTH, self.ends), self.labels[self.ends + 1]

    def label_windows(self) -> IntArray:
        """The observed and pending labels of the windows' bars (n, T, 2)."""
        if self.observed is None or self.pending is None:
            raise ValueError(f"{self.name}: no observed labels")
        offsets = np.arange(-ENCODER_LENGTH + 1, 1)
        rows = self.ends[:, None] + offsets[None, :]
        return np.stack([self.observed[rows], self.pending[rows]], axis=-1).astype(np.int64)

    def current_observed(self) -> IntArray:
        """The observed label of each window's last bar (what persistence predicts)."""
        if self.observed is None:
            raise ValueError(f"{self.name}: no observed labels")
        return np.asarray(self.observed[self.ends], dtype=np.int64)


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
    max_epochs: int = 16
    limit_train_batches: int = 50
    batch_size: int = 128
    learning_rate: float = 3e-3
    gradient_clip_val: float = 0.5
    early_stopping_patience: int = 3
    lr_patience: int = 1
    seed: int = 7
    markov_regimes: int = 3
    markov_search_reps: int = 5
    prior: str = "labels"
    """Persistence prior of the logits: :func:`transition_log_prior` kind."""
    balance_sources: bool = True
    """Weigh the loss by source (:func:`source_weights`): real windows get ``real_share``
    of the total weight, the simulator's the rest."""
    real_share: float = 0.5
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
    """Series per split and the labelers.

    ``real_labeler`` labels the real bars (None without them); ``observed_labeler`` gives
    the observed labels, the model inputs.
    """

    train: list[Series]
    val: list[Series]
    test: list[Series]
    real_labeler: RegimeLabeler | None = None
    observed_labeler: RegimeLabeler | None = None


def observed_labeler(train: Sequence[Series], real_labeler: RegimeLabeler | None) -> RegimeLabeler:
    """The labeler serving runs on the market features (its labels are model inputs).

    The one that labels the real bars (fitted on the real training span) when there are
    real bars, so that on them the observed label at ``t`` is the target's own labeler;
    otherwise one fitted on the simulator training series.
    """
    if real_labeler is not None:
        return real_labeler
    return RegimeLabeler().fit(np.concatenate([s.features for s in train if s.source == "sim"]))


def build_splits(config: TrainConfig) -> Splits:
    """Simulator and (optionally) real series for train / validation / test.

    Every series also carries the observed labeler's labels (:attr:`Series.observed`),
    computed causally over its whole history.
    """
    train = [sim_series(s, config.sim_bars) for s in config.sim_train_seeds]
    val = [sim_series(s, config.sim_eval_bars) for s in config.sim_val_seeds]
    test = [sim_series(s, config.sim_eval_bars) for s in config.sim_test_seeds]
    labeler = None
    if config.use_real:
        r_train, r_val, r_test, labeler = real_series(config.real_train_end, config.real_val_end)
        train.append(r_train)
        val.append(r_val)
        test.append(r_test)
    observer = observed_labeler(train, labeler)
    cache: dict[int, tuple[IntArray, IntArray]] = {}

    def observe(s: Series) -> Series:
        key = id(s.features)
        if key not in cache:
            result = observer.label(s.features)
            cache[key] = (result.labels, result.pending)
        return replace(s, observed=cache[key][0], pending=cache[key][1])

    return Splits(
        [observe(s) for s in train],
        [observe(s) for s in val],
        [observe(s) for s in test],
        labeler,
        observer,
    )


def transition_log_prior(series: Sequence[Series], kind: str = "labels") -> FloatArray:
    """``(7, 7)`` log of a training transition matrix of the observed labels (+0.5).

    Rows are indexed by the last bar's *pending* label (what the model's prior reads),
    columns by ``kind="labels"``: the observed label of t+1, P(label of t+1 | pending
    label of t), the labels' own dynamics (rows peak on the diagonal for both sources);
    ``"targets"``: the target of t+1, which pools the simulator's latent regimes with
    the real bars' labels.
    """
    if kind not in ("labels", "targets"):
        raise ValueError(f"transition prior kind must be 'labels' or 'targets', got {kind!r}")
    one_hot = np.eye(N_CLASSES)
    current = np.concatenate([one_hot[np.asarray(s.pending)[s.ends]] for s in series])
    if kind == "labels":
        target = np.concatenate([np.asarray(s.observed)[s.ends + 1] for s in series])
    else:
        target = np.concatenate([s.labels[s.ends + 1] for s in series])
    return np.log(_calibrate(current, target))


def source_weights(series: Sequence[Series], real_share: float = 0.5) -> dict[str, float]:
    """Per-window loss weight of each source: real windows weigh ``real_share`` in total.

    The mean weight is 1. The real bars are far fewer windows than the simulator's, and
    their targets (the labeler's own labels) are what the observed labels predict best,
    so without weights the simulator's corrections would dominate them. A single source
    gets weight 1.
    """
    counts: dict[str, int] = {}
    for s in series:
        counts[s.source] = counts.get(s.source, 0) + len(s.ends)
    if set(counts) != {"real", "sim"}:
        return dict.fromkeys(counts, 1.0)
    total = sum(counts.values())
    share = {"real": real_share, "sim": 1.0 - real_share}
    return {src: total * share[src] / n for src, n in counts.items()}


def fit_scaling(series: Sequence[Series]) -> Scaling:
    """Scaling of the feature rows the training windows cover."""
    rows = [s.features[s.ends[0] - ENCODER_LENGTH + 1 : s.ends[-1] + 1] for s in series]
    return Scaling.fit(np.concatenate(rows))


# ---------------------------------------------------------------------------------------
# pytorch-forecasting dataset and model


def _frame(
    series: Sequence[Series], scaling: Scaling, weights: dict[str, float] | None = None
) -> pd.DataFrame:
    """Long frame for TimeSeriesDataSet: one group per series span.

    Scaled features, then the one-hot observed labels (the model input of
    :func:`encoder_input`).
    """
    parts = []
    for s in series:
        lo, hi = int(s.ends[0]) - ENCODER_LENGTH + 1, int(s.ends[-1]) + 2
        assert s.observed is not None and s.pending is not None
        codes = np.stack([s.observed[lo:hi], s.pending[lo:hi]], axis=-1)
        x = encoder_input(scaling, s.features[lo:hi], codes).astype(np.float64)
        part = pd.DataFrame(x, columns=list(INPUT_CHANNELS))
        part[_GROUP] = s.name
        part[_TIME] = np.arange(lo, hi, dtype=np.int64)
        part[_TARGET] = [str(int(c)) for c in s.labels[lo:hi]]
        part[_WEIGHT] = (weights or {}).get(s.source, 1.0)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def make_dataset(frame: pd.DataFrame, weighted: bool = False) -> TimeSeriesDataSet:
    """TimeSeriesDataSet of full ENCODER_LENGTH windows predicting one step (no scaling).

    ``weighted``: the loss weighs each window by the frame's weight column.
    """
    classes = pd.Series([str(i) for i in range(N_CLASSES)])
    return TimeSeriesDataSet(
        frame,
        time_idx=_TIME,
        target=_TARGET,
        group_ids=[_GROUP],
        weight=_WEIGHT if weighted else None,
        max_encoder_length=ENCODER_LENGTH,
        min_encoder_length=ENCODER_LENGTH,
        max_prediction_length=1,
        min_prediction_length=1,
        time_varying_unknown_reals=list(INPUT_CHANNELS),
        target_normalizer=NaNLabelEncoder(add_nan=False).fit(classes),
        categorical_encoders={_GROUP: NaNLabelEncoder(add_nan=True)},
        scalers=dict.fromkeys(INPUT_CHANNELS),
        add_relative_time_idx=True,
        add_target_scales=False,
        add_encoder_length=False,
    )


def template_dataset() -> TimeSeriesDataSet:
    """A dataset with the model's variables, to rebuild the network without training data."""
    n = ENCODER_LENGTH + 1 + N_CLASSES
    frame = pd.DataFrame(np.zeros((n, len(INPUT_CHANNELS))), columns=list(INPUT_CHANNELS))
    frame[_GROUP] = "template"
    frame[_TIME] = np.arange(n)
    frame[_TARGET] = [str(i % N_CLASSES) for i in range(n)]
    return make_dataset(frame)


LABEL_SLICE = slice(1 + len(MARKET_FEATURES), 1 + len(INPUT_CHANNELS))
"""Where the one-hot labels sit in the TFT's ``encoder_cont`` (after relative_time_idx)."""


class RegimeTFT(TemporalFusionTransformer):
    """The TFT whose next-bar logits start from persistence: a learned correction to it.

    ``forward`` adds ``log_transition[pending label of the window's last bar]`` (buffer
    ``(7, 7)``, :func:`transition_log_prior`; the pending label is where the label
    channels are >= 2) to pytorch-forecasting's output logits. With the TFT's own output
    at 0 the model *is* the labeler's calibrated persistence (of the label it is about to
    hold); training (end to end, through this sum) learns what the features and the
    label history add to it.
    """

    log_transition: torch.Tensor
    correction_scale: torch.Tensor
    """Scalar weight of the TFT's output in the logits: 1 in training, then the shrinkage
    :func:`fit_correction_scale` fits on the validation span."""

    def forward(self, x: dict[str, torch.Tensor]) -> Any:
        out = super().forward(x)
        enc = x["encoder_cont"]
        channels = enc[torch.arange(enc.shape[0]), x["encoder_lengths"] - 1, LABEL_SLICE]
        last = (channels >= PENDING_WEIGHT - 0.5).to(enc.dtype)
        prior = (last @ self.log_transition.to(enc.dtype)).unsqueeze(1)
        correction = out["prediction"] * self.correction_scale.to(enc.dtype)
        return out._replace(prediction=correction + prior)


def build_model(dataset: TimeSeriesDataSet, config: TrainConfig) -> TemporalFusionTransformer:
    """The TFT with the default hyper-parameters and a 7-class CrossEntropy head.

    A :class:`RegimeTFT` whose ``log_transition`` buffer is zero (no prior) and
    ``correction_scale`` 1 until :func:`train` sets them, or ``load_state_dict`` restores
    them.
    """
    with warnings.catch_warnings():
        # Lightning notes that loss modules are saved twice; harmless here.
        warnings.filterwarnings("ignore", message="Attribute .* is an instance of `nn.Module`")
        model = RegimeTFT.from_dataset(
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
    model.register_buffer("log_transition", torch.zeros(N_CLASSES, N_CLASSES))
    model.register_buffer("correction_scale", torch.tensor(1.0))
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
    """Plain-tensor wrapper: ``encoder_cont [B, T, F + 7] -> probabilities [B, 7]``.

    Builds the TFT's input dict inside (``relative_time_idx`` prepended like the
    dataset does, full lengths, the decoder step carrying only the known
    ``relative_time_idx`` = 0) and returns the softmax of the next-bar logits (with
    :class:`RegimeTFT`'s persistence prior).
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
    """Probabilities (n, 7) of model inputs (n, T, F + 7) with the PyTorch model, in batches."""
    wrapper = RegimeTFTExport(model).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(scaled), 512):
            out.append(wrapper(torch.from_numpy(scaled[lo : lo + 512])).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.empty((0, N_CLASSES))


# ---------------------------------------------------------------------------------------
# Metrics and baselines


def fit_correction_scale(
    model: TemporalFusionTransformer, scaling: Scaling, series: Sequence[Series]
) -> float:
    """The shrinkage ``s`` of the TFT's correction with the lowest log-loss on ``series``.

    ``s`` is searched in [0, 1] on a grid of 0.01. The logits are ``prior + s *
    correction``: ``s = 1`` is the trained model, ``s = 0`` its persistence prior alone,
    so ``log p(s) = (1 - s) log p(0) + s log p(1)`` up to a constant.
    Leaves ``model.correction_scale`` at the fitted value.
    """
    windows, labels, targets = [], [], []
    for s in series:
        w, y = s.windows()
        windows.append(w)
        labels.append(s.label_windows())
        targets.append(y)
    x = encoder_input(scaling, np.concatenate(windows), np.concatenate(labels))
    y = np.concatenate(targets)
    logp = []
    for scale in (0.0, 1.0):
        with torch.no_grad():
            model.correction_scale.fill_(scale)
        logp.append(np.log(np.clip(torch_proba(model, x), _EPS, None)))
    grid = np.linspace(0.0, 1.0, 101)
    losses = []
    for s in grid:
        logits = (1.0 - s) * logp[0] + s * logp[1]
        proba = np.exp(logits - logits.max(axis=1, keepdims=True))
        losses.append(log_loss(proba / proba.sum(axis=1, keepdims=True), y))
    best = float(grid[int(np.argmin(losses))])
    with torch.no_grad():
        model.correction_scale.fill_(best)
    return best


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
    train: Sequence[Series], test: Sequence[Series], real_labeler: RegimeLabeler | None = None
) -> dict[str, FloatArray]:
    """The observed label at ``t``, calibrated on training per source, as the forecast.

    Probabilities P(target of t+1 | observed label at t) by test series name.

    Its probabilities are those of observed persistence; only the most likely class can
    differ (it is the label itself for persistence). ``real_labeler`` is unused (the
    observed labels come with the series).
    """
    del real_labeler
    out: dict[str, FloatArray] = {}
    one_hot = np.eye(N_CLASSES)
    for source in sorted({s.source for s in test}):
        fit_series = [s for s in train if s.source == source]
        if not fit_series:
            continue
        mapping = _calibrate(
            np.concatenate([one_hot[s.current_observed()] for s in fit_series]),
            np.concatenate([s.labels[s.ends + 1] for s in fit_series]),
        )
        for s in (t for t in test if t.source == source):
            out[s.name] = one_hot[s.current_observed()] @ mapping
    return out


def macro_f1(predicted: IntArray, target: IntArray) -> float:
    """Mean per-class F1 over the classes in the truth or the predictions."""
    conf = _confusion(target, predicted).astype(np.float64)
    tp = np.diag(conf)
    denom = 2 * tp + (conf.sum(axis=0) - tp) + (conf.sum(axis=1) - tp)
    used = denom > 0
    return float(np.mean(2 * tp[used] / denom[used])) if used.any() else float("nan")


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
    holdout_labels: IntArray
    """Observed and pending labels of their bars (n, T, 2)."""
    holdout_target: IntArray
    holdout_source: npt.NDArray[np.str_]
    train_seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    labeler: dict[str, Any] = field(default_factory=dict)
    """The observed labeler (:meth:`RegimeLabeler.to_dict`), what serving must run."""

    def save(self, run_dir: Path) -> None:
        """Write ``model.pt``, ``run.json`` and ``holdout.npz`` to ``run_dir``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), run_dir / "model.pt")
        np.savez_compressed(
            run_dir / "holdout.npz",
            windows=self.holdout_windows,
            labels=self.holdout_labels,
            target=self.holdout_target,
            source=self.holdout_source,
        )
        meta = {
            "config": asdict(self.config),
            "scaling": self.scaling.to_dict(),
            "labeler": self.labeler,
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
    holdout_labels: IntArray
    holdout_target: IntArray

    @classmethod
    def load(cls, run_dir: Path) -> SavedRun:
        """Read what :meth:`TrainResult.save` wrote."""
        meta = json.loads((run_dir / "run.json").read_text())
        with np.load(run_dir / "holdout.npz") as data:
            windows, labels, target = data["windows"], data["labels"], data["target"]
        return cls(
            load_model(run_dir / "model.pt"),
            Scaling.from_dict(meta["scaling"]),
            dict(meta["metrics"]),
            meta,
            np.asarray(windows, dtype=np.float64),
            np.asarray(labels, dtype=np.int64),
            np.asarray(target, dtype=np.int64),
        )

    def model_input(self) -> npt.NDArray[np.float32]:
        """The held-out windows as the model reads them (n, T, F + 7)."""
        return encoder_input(self.scaling, self.holdout_windows, self.holdout_labels)


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
    balance = config.balance_sources
    train_w = source_weights(splits.train, config.real_share) if balance else None
    val_w = source_weights(splits.val, config.real_share) if balance else None
    train_ds = make_dataset(_frame(splits.train, scaling, train_w), weighted=balance)
    val_ds = make_dataset(_frame(splits.val, scaling, val_w), weighted=balance)
    train_dl = train_ds.to_dataloader(train=True, batch_size=config.batch_size, num_workers=0)
    val_dl = val_ds.to_dataloader(train=False, batch_size=512, num_workers=0)
    model = build_model(train_ds, config)
    with torch.no_grad():
        prior = transition_log_prior(splits.train, config.prior)
        model.log_transition.copy_(torch.from_numpy(prior))
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
    # the shrinkage is fitted where the targets are the labeler's own labels, as on the
    # markets serving reads (the simulator's latent regimes are a training device)
    real_val = [s for s in splits.val if s.source == "real"]
    scale = fit_correction_scale(model, scaling, real_val or splits.val)
    train_seconds = time.perf_counter() - started
    result = evaluate(model, scaling, splits, config)
    result.train_seconds = train_seconds
    assert splits.observed_labeler is not None
    result.labeler = splits.observed_labeler.to_dict()
    result.metrics["epochs"] = float(trainer.current_epoch)
    result.metrics["correction_scale"] = scale
    log.info("regime TFT trained in %.1f s: %s", train_seconds, result.metrics)
    return result


def evaluate(
    model: TemporalFusionTransformer, scaling: Scaling, splits: Splits, config: TrainConfig
) -> TrainResult:
    """Test-split metrics of the TFT and the baselines, per source and overall."""
    windows, label_windows, targets, sources, names = [], [], [], [], []
    for s in splits.test:
        w, y = s.windows()
        windows.append(w)
        label_windows.append(s.label_windows())
        targets.append(y)
        sources.append(np.full(len(y), s.source))
        names.append(np.full(len(y), s.name))
    x = np.concatenate(windows)
    lab = np.concatenate(label_windows)
    y = np.concatenate(targets)
    source = np.concatenate(sources)
    name = np.concatenate(names)
    observed = lab[:, -1, 0]
    proba = torch_proba(model, encoder_input(scaling, x, lab))
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
        metrics[f"macro_f1{suffix}"] = macro_f1(proba[rows].argmax(axis=1), y[rows])
        metrics[f"persistence_accuracy{suffix}"] = float(np.mean(observed[rows] == y[rows]))
        metrics[f"persistence_macro_f1{suffix}"] = macro_f1(observed[rows], y[rows])
        for base in ("majority", "markov", "labeler"):
            metrics[f"{base}_log_loss{suffix}"] = log_loss(baselines[base][rows], y[rows])
            if base != "majority":
                metrics[f"{base}_accuracy{suffix}"] = accuracy(baselines[base][rows], y[rows])
        report["n_test"][scope] = int(rows.sum())
        report["confusion"][scope] = _confusion(y[rows], proba[rows].argmax(axis=1)).tolist()
    metrics["baseline_accuracy"] = metrics["markov_accuracy"]
    metrics["baseline_log_loss"] = metrics["markov_log_loss"]
    return TrainResult(model, scaling, config, metrics, x, lab, y, source, 0.0, report)


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
    parser.add_argument("--real-share", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.quick_config() if args.quick else TrainConfig()
    if args.max_epochs is not None:
        config = replace(config, max_epochs=args.max_epochs)
    if args.real_share is not None:
        config = replace(config, real_share=args.real_share)
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
