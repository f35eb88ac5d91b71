"""N-BEATS forecaster of log realized volatility: data, model, training and evaluation.

One global pytorch-forecasting ``NBeats`` (generic stack, 3 blocks x 3 layers x 128
units, 134 k parameters) over many instruments: simulator instruments from several seeds
plus real daily S&P 500, NASDAQ and WTI (real windows repeated 3x in training).

Series and target (see :mod:`models.vol_ensemble`)
    ``x[t]`` = log realized vol of the bar log returns ``r[t-h+1..t]``. N-BEATS reads the
    last ``L`` values ``x[t-L+1..t]`` and forecasts ``x[t+1..t+h]`` (trained on all h
    steps, MSE in log-vol); the last step ``x[t+h]`` is the target, the log realized vol
    of the next ``h`` bars.
Scaling
    None outside the model: the history is raw natural-log per-bar vol. Inside, each
    window is centred on its own mean (``CenteredNBeats``), which makes the model
    invariant to the vol level (multiplying returns by c shifts input and output by
    log c), so one model serves a 0.5 %-vol bond and a 3 %-vol equity.
Spans (by the bars the target covers)
    Training worlds (6 seeds x 3000 bars x 12 instruments) and the real series are split
    in time: train [0, 60 %) for N-BEATS and the GARCH fits; validation [60 %, 75 %);
    calibration [75 %, 85 %); test [85 %, 100 %). Twelve further worlds (2000 bars) are
    held out whole: four each for validation, calibration and test, which gives the
    per-regime weights and conformal quantiles many independent regime episodes.
    Validation drives early stopping and the ensemble weights, calibration the conformal
    quantiles; every reported metric is on test.
Calibration
    N-BEATS is fitted for squared error in log-vol; QLIKE, which scores the variance a
    forecast implies, punishes under-forecasts. The served forecast is recalibrated for
    it: ``level + gain * (forecast - level) + offset`` (``level`` the window mean), both
    fitted for the lowest QLIKE on the validation span (:class:`QlikeCalibration`) and
    exported inside the ONNX graph; the ensemble is fitted on the calibrated member.
Training
    Lightning with EarlyStopping (best weights restored) and gradient clipping, one CPU
    thread, seeded. Batches are built from NumPy windows in the exact layout that
    ``TimeSeriesDataSet`` gives NBeats (checked against it in the tests): its per-item
    loader would take longer than the whole training.

``python -m models.vol_nbeats [--quick] [--out DIR]`` trains, evaluates and writes
``DIR/model.ckpt`` and ``DIR/result.json``; ``python -m export.nbeats`` exports them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import nn

from models import vol_ensemble as ve
from models.drift import reference_histogram
from models.regimes import REGIMES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_OUT = Path("build") / "vol_nbeats"
SPAN_NAMES: tuple[str, ...] = ("train", "val", "cal", "test")
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Data, network and optimisation settings."""

    length: int = ve.DEFAULT_L
    h: int = ve.DEFAULT_H
    sim_seeds: tuple[int, ...] = (101, 102, 103, 104, 105, 106)
    sim_bars: int = 3000
    real: tuple[str, ...] = ("sp500", "nasdaq", "wti")
    val_seeds: tuple[int, ...] = (201, 202, 203, 204)
    cal_seeds: tuple[int, ...] = (205, 206, 207, 208)
    test_seeds: tuple[int, ...] = (209, 210, 211, 212)
    heldout_bars: int = 2000
    """Held-out worlds: every origin of a world is in one span (val, cal or test)."""
    splits: tuple[float, float, float] = (0.60, 0.75, 0.85)
    width: int = 128
    num_blocks: int = 3
    num_block_layers: int = 3
    expansion: int = 16
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_epochs: int = 25
    patience: int = 3
    limit_train_batches: int | None = None
    real_repeat: int = 3
    """Copies of each real-data training window (they are few next to the simulator's)."""
    gradient_clip: float = 1.0
    seed: int = 0


QUICK = TrainConfig(
    sim_seeds=(101,), sim_bars=900, real=("sp500",), val_seeds=(), cal_seeds=(), test_seeds=(),
    width=32, num_blocks=1,
    num_block_layers=2, expansion=8, max_epochs=2, patience=1, limit_train_batches=20,
)  # fmt: skip
"""Seconds-long run for tests: same pipeline, tiny data and network."""


# ---------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Series:
    """Bar log returns of one instrument; regime codes of the same bars (simulator only)."""

    name: str
    returns: FloatArray
    regime: IntArray | None = None
    whole_span: int | None = None
    """Span (1 val, 2 cal, 3 test) of a held-out world's every origin; None: time split."""

    @property
    def source(self) -> str:
        """``sim`` or ``real``."""
        return "sim" if self.regime is not None else "real"


def simulator_series(seed: int, n_bars: int, whole_span: int | None = None) -> list[Series]:
    """Every instrument of one simulated world; ``regime[k]`` is the regime of return ``k``."""
    from models.simulator import MarketSimulator

    sim = MarketSimulator(seed=seed)
    path = sim.path(n_bars)
    codes = path["regime_code"].to_numpy(dtype=np.int64)[1:]
    out = []
    for iid in sim.instrument_ids:
        r = np.diff(np.log(path[f"{iid}.price"].to_numpy(dtype=np.float64)))
        out.append(Series(f"sim{seed}:{iid}", r, codes, whole_span))
    return out


def real_series(name: str) -> Series:
    """Daily close-to-close log returns of a data set shipped with ``arch``."""
    from models.datasets import load_daily

    close = load_daily(name)["close"].to_numpy(dtype=np.float64)
    return Series(name, np.diff(np.log(close)))


def load_series(cfg: TrainConfig) -> list[Series]:
    """Time-split simulator worlds, the real data sets, then the held-out worlds."""
    out = [s for seed in cfg.sim_seeds for s in simulator_series(seed, cfg.sim_bars)]
    out += [real_series(name) for name in cfg.real]
    for span, seeds in enumerate((cfg.val_seeds, cfg.cal_seeds, cfg.test_seeds), start=1):
        out += [s for seed in seeds for s in simulator_series(seed, cfg.heldout_bars, span)]
    return out


def span_bounds(n: int, splits: Sequence[float]) -> IntArray:
    """Return indices where the val, cal and test spans start."""
    return np.array([round(n * f) for f in splits], dtype=np.int64)


def origin_spans(n: int, h: int, splits: Sequence[float]) -> IntArray:
    """Span of each origin ``t`` (0-3), or -1 when ``r[t+1..t+h]`` straddles spans or ends."""
    bounds = span_bounds(n, splits)
    t = np.arange(n)
    first = np.searchsorted(bounds, t + 1, side="right")
    last = np.searchsorted(bounds, t + h, side="right")
    return np.where((first == last) & (t + h < n), first, -1).astype(np.int64)


@dataclass
class Table:
    """One row per usable origin over all series."""

    series: IntArray
    t: IntArray
    span: IntArray
    regime: IntArray
    """Regime code at the origin; -1 for real data."""
    history: npt.NDArray[np.float32]
    """``(n, L)`` N-BEATS input."""
    future: npt.NDArray[np.float32]
    """``(n, h)`` ``x[t+1..t+h]``; the last column is the target."""
    ewma_var: FloatArray
    garch_var: FloatArray
    garch_served_var: FloatArray
    names: list[str] = field(default_factory=list)
    garch: list[ve.GarchParams] = field(default_factory=list)
    """Per-series GARCH fitted on the training span (the baseline)."""
    garch_default: ve.GarchParams = field(default_factory=lambda: ve.GarchParams(0.0, 0.08, 0.9))
    """Pooled (alpha, beta) of the served member."""

    @property
    def y(self) -> FloatArray:
        """Target: log realized vol of the next h bars."""
        return self.future[:, -1].astype(np.float64)

    def rows(self, mask: npt.NDArray[np.bool_]) -> Table:
        """The rows where ``mask`` holds."""
        fields = {
            k: getattr(self, k)[mask]
            for k in ("series", "t", "span", "regime", "history", "future", "ewma_var",
                      "garch_var", "garch_served_var")
        }  # fmt: skip
        return Table(**fields, names=self.names, garch=self.garch, garch_default=self.garch_default)


def build_table(series: Sequence[Series], cfg: TrainConfig) -> Table:
    """Windows, baselines and targets of every series, with span labels.

    GARCH parameters are fitted on each series' training span and filtered forward;
    EWMA needs no fit. Origins need a full history and 75 bars of baseline warm-up.
    """
    parts: dict[str, list[Any]] = {k: [] for k in (
        "series", "t", "span", "regime", "history", "future", "ewma_var", "garch_var",
        "garch_served_var")}  # fmt: skip
    garch: list[ve.GarchParams] = []
    fitted = [_fit_train_garch(s, cfg) for s in series]
    default = _median_garch(fitted)
    for i, s in enumerate(series):
        n, h = len(s.returns), cfg.h
        x = ve.log_realized_vol(s.returns, h)
        hist = ve.nbeats_histories(s.returns, cfg.length, h)
        fut = np.full((n, h), np.nan)
        for k in range(1, h + 1):
            fut[: n - k, k - 1] = x[k:]
        span = origin_spans(n, h, cfg.splits)
        if s.whole_span is not None:
            span = np.where(np.arange(n) + h < n, s.whole_span, -1)
        warm = max(cfg.length + h - 2, ve.BACKCAST_OBS)
        ok = (span >= 0) & (np.arange(n) >= warm)
        ok &= np.isfinite(hist).all(axis=1) & np.isfinite(fut).all(axis=1)
        params = fitted[i] or default
        garch.append(params)
        rows = np.flatnonzero(ok)
        parts["series"].append(np.full(rows.size, i))
        parts["t"].append(rows)
        parts["span"].append(span[rows])
        reg = s.regime[rows] if s.regime is not None else np.full(rows.size, -1)
        parts["regime"].append(reg)
        parts["history"].append(hist[rows].astype(np.float32))
        parts["future"].append(fut[rows].astype(np.float32))
        parts["ewma_var"].append(ve.ewma_forecast(s.returns)[rows])
        fit_var = ve.garch_forecast(s.returns, params, h) if fitted[i] else np.full(n, np.nan)
        parts["garch_var"].append(fit_var[rows])
        served = ve.targeted_garch_forecast(s.returns, default.alpha, default.beta, h)
        parts["garch_served_var"].append(served[rows])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Table(**cat, names=[s.name for s in series], garch=garch, garch_default=default)


def _fit_train_garch(s: Series, cfg: TrainConfig) -> ve.GarchParams | None:
    """GARCH(1,1) on the training span; None when the fit is not usable or no span."""
    if s.whole_span is not None:
        return None
    train = s.returns[: span_bounds(len(s.returns), cfg.splits)[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = ve.fit_garch(train)
        except (ValueError, np.linalg.LinAlgError):
            return None
    return p if p.persistence < 0.9999 and p.omega > 0 else None


def _median_garch(fits: Sequence[ve.GarchParams | None]) -> ve.GarchParams:
    """Median (alpha, beta) of the usable fits; omega 0 = variance targeting when served."""
    ok = [p for p in fits if p is not None]
    if not ok:
        return ve.GarchParams(0.0, 0.08, 0.9)
    return ve.GarchParams(0.0, float(np.median([p.alpha for p in ok])),
                          float(np.median([p.beta for p in ok])))  # fmt: skip


# ---------------------------------------------------------------------------------------
# Model


def _mse_metric() -> Any:
    """Mean squared error over all horizon steps (pytorch-forecasting metric)."""
    from pytorch_forecasting.metrics import MultiHorizonMetric

    class MSE(MultiHorizonMetric):
        """Squared error of the point forecast."""

        def loss(self, y_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (self.to_prediction(y_pred) - target) ** 2

    return MSE()


def _centered_nbeats_class() -> type[Any]:
    """``NBeats`` whose input window is centred on its own mean (level-free)."""
    from pytorch_forecasting import NBeats

    class CenteredNBeats(NBeats):
        """pytorch-forecasting NBeats on ``x - mean(x)``; the mean is added back."""

        def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            enc = x["encoder_cont"]
            level = enc[..., 0].mean(dim=1, keepdim=True)
            scale = x["target_scale"]
            centred = dict(x)
            centred["encoder_cont"] = enc - level.unsqueeze(-1)
            centred["target_scale"] = torch.cat([scale[:, :1] + level, scale[:, 1:]], dim=1)
            return super().forward(centred)

    return CenteredNBeats


CenteredNBeats = _centered_nbeats_class()


@dataclass(frozen=True)
class QlikeCalibration:
    """Affine recalibration of the forecast's deviation from its window mean, for QLIKE.

    Served forecast = ``level + gain * (raw - level) + offset``, ``level`` the mean of
    the history window. N-BEATS is fitted for squared error in log-vol, which aims at
    the median log-vol: its implied variance ``exp(2 (y_hat - gaussian_log_bias))`` is
    biased low (E[exp] > exp E), and QLIKE weighs under-forecast variance heavily.
    """

    gain: float = 1.0
    offset: float = 0.0

    @classmethod
    def fit(
        cls, history: npt.ArrayLike, raw: npt.ArrayLike, y: npt.ArrayLike, h: int
    ) -> QlikeCalibration:
        """The (gain, offset) with the lowest mean QLIKE on the given rows (convex in both)."""
        from scipy.optimize import minimize

        level = np.asarray(history, dtype=np.float64).mean(axis=1)
        dev = np.asarray(raw, dtype=np.float64) - level
        gap = np.asarray(y, dtype=np.float64) - level + ve.gaussian_log_bias(h)

        def qlike(p: FloatArray) -> float:
            log_s = 2.0 * (gap - p[0] * dev - p[1])
            return float(np.mean(np.exp(log_s) - log_s - 1.0))

        fit = minimize(qlike, np.array([1.0, 0.0]), method="BFGS")
        return cls(float(fit.x[0]), float(fit.x[1]))

    def apply(self, history: npt.ArrayLike, raw: npt.ArrayLike) -> FloatArray:
        """Calibrated forecasts of raw forecasts ``raw`` of windows ``history``."""
        level = np.asarray(history, dtype=np.float64).mean(axis=1)
        return np.asarray(level + self.gain * (raw - level) + self.offset, dtype=np.float64)


class NBeatsExport(nn.Module):
    """ONNX face of the model: ``history [B, L]`` log-vols -> ``forecast [B, 1]`` log-vol.

    The forecast has the :class:`QlikeCalibration` (identity by default) applied.
    """

    def __init__(self, model: Any, calibration: QlikeCalibration | None = None) -> None:
        super().__init__()
        self.blocks: nn.ModuleList = copy.deepcopy(model.net_blocks).eval()
        self.h = int(model.hparams.prediction_length)
        self.calibration = calibration or QlikeCalibration()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Forecast of ``x[t+h]`` from ``x[t-L+1..t]``."""
        level = history.mean(dim=1, keepdim=True)
        backcast = history - level
        forecast = torch.zeros(history.shape[0], self.h, dtype=history.dtype)
        for block in self.blocks:
            b, f = block(backcast)
            backcast = backcast - b
            forecast = forecast + f
        cal = self.calibration
        return forecast[:, -1:] * cal.gain + (level + cal.offset)


def metadata_dataset(table: Table, cfg: TrainConfig) -> Any:
    """A small ``TimeSeriesDataSet`` with the layout NBeats is built from."""
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.encoders import TorchNormalizer

    first = table.rows(table.series == table.series[0])
    n = min(len(first.t), 4 * (cfg.length + cfg.h))
    x = np.r_[first.history[0], first.future[:n, 0]]
    frame = pd.DataFrame({"group": "g", "time_idx": np.arange(x.size), "logrv": x})
    return TimeSeriesDataSet(
        frame, time_idx="time_idx", target="logrv", group_ids=["group"],
        max_encoder_length=cfg.length, min_encoder_length=cfg.length,
        max_prediction_length=cfg.h, min_prediction_length=cfg.h,
        time_varying_unknown_reals=["logrv"], target_normalizer=TorchNormalizer("identity"),
        add_relative_time_idx=False, add_target_scales=False, add_encoder_length=False,
    )  # fmt: skip


def build_model(table: Table, cfg: TrainConfig) -> Any:
    """A fresh ``CenteredNBeats`` with a generic stack of ``cfg`` size."""
    return CenteredNBeats.from_dataset(
        metadata_dataset(table, cfg),
        stack_types=["generic"], num_blocks=[cfg.num_blocks],
        num_block_layers=[cfg.num_block_layers], widths=[cfg.width], sharing=[False],
        expansion_coefficient_lengths=[cfg.expansion], dropout=cfg.dropout,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, optimizer="adam",
        loss=_mse_metric(), logging_metrics=nn.ModuleList([]),
    )  # fmt: skip


def batch_dict(
    history: torch.Tensor, future: torch.Tensor
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, None]]:
    """``(x, y)`` as ``TimeSeriesDataSet``'s loader gives them to NBeats (identity scale)."""
    b, length = history.shape
    h = future.shape[1]
    x = {
        "encoder_cat": history.new_zeros((b, length, 0), dtype=torch.int64),
        "encoder_cont": history.unsqueeze(-1),
        "encoder_target": history,
        "encoder_lengths": torch.full((b,), length, dtype=torch.int64),
        "decoder_cat": history.new_zeros((b, h, 0), dtype=torch.int64),
        "decoder_cont": future.unsqueeze(-1),
        "decoder_target": future,
        "decoder_lengths": torch.full((b,), h, dtype=torch.int64),
        "target_scale": torch.cat([history.new_zeros((b, 1)), history.new_ones((b, 1))], 1),
    }
    return x, (future, None)


class _Windows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Tensor windows, fetched a whole batch at a time (``__getitems__``)."""

    def __init__(self, history: npt.NDArray[np.float32], future: npt.NDArray[np.float32]):
        self.history = torch.from_numpy(np.ascontiguousarray(history))
        self.future = torch.from_numpy(np.ascontiguousarray(future))

    def __len__(self) -> int:
        return int(self.history.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.history[i], self.future[i]

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.int64)
        return self.history[idx], self.future[idx]


def _collate(batch: Any) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, None]]:
    """``batch`` is the ``(history, future)`` pair from ``_Windows.__getitems__``."""
    return batch_dict(*batch)


def loader(table: Table, batch_size: int, shuffle: bool, seed: int = 0, repeat: Any = None) -> Any:
    """A ``DataLoader`` over the table's windows; ``repeat[i]`` copies of row ``i``."""
    rows = np.arange(len(table.t)) if repeat is None else np.repeat(np.arange(len(table.t)), repeat)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _Windows(table.history[rows], table.future[rows]), batch_size=batch_size,
        shuffle=shuffle, collate_fn=_collate, generator=gen, num_workers=0,
    )  # fmt: skip


def _best_weights_callback() -> Any:
    import lightning.pytorch as pl

    class BestWeights(pl.Callback):
        """Keep the weights of the epoch with the lowest ``val_loss``; restore at the end."""

        def __init__(self) -> None:
            self.best = float("inf")
            self.state: dict[str, torch.Tensor] | None = None
            self.epoch = -1

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            loss = trainer.callback_metrics.get("val_loss")
            if loss is not None and float(loss) < self.best:
                self.best, self.epoch = float(loss), trainer.current_epoch
                self.state = copy.deepcopy(module.state_dict())

        def on_fit_end(self, trainer: Any, module: Any) -> None:
            if self.state is not None:
                module.load_state_dict(self.state)

    return BestWeights()


@dataclass
class TrainOutcome:
    """A trained model and how the training went."""

    model: Any
    seconds: float
    epochs: int
    best_epoch: int
    best_val_loss: float
    n_train: int
    n_val: int


def train(table: Table, cfg: TrainConfig) -> TrainOutcome:
    """Fit N-BEATS on the train span with early stopping on the validation span."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping

    torch.set_num_threads(1)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tr, va = table.rows(table.span == 0), table.rows(table.span == 1)
    model = build_model(table, cfg)
    best = _best_weights_callback()
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs, accelerator="cpu", devices=1, logger=False,
        gradient_clip_val=cfg.gradient_clip, deterministic=True,
        callbacks=[EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min"), best],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_train_batches=cfg.limit_train_batches,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repeat = np.where(tr.regime < 0, cfg.real_repeat, 1)
        trainer.fit(
            model, loader(tr, cfg.batch_size, True, cfg.seed, repeat), loader(va, 4096, False)
        )
    seconds = time.perf_counter() - start
    model.eval()
    return TrainOutcome(
        model, seconds, trainer.current_epoch, best.epoch, best.best, len(tr.t), len(va.t)
    )


@torch.no_grad()
def predict_logvol(module: nn.Module, history: npt.ArrayLike, batch: int = 8192) -> FloatArray:
    """``NBeatsExport`` forward in batches: the target forecast per row of ``history``."""
    h = torch.as_tensor(np.asarray(history, dtype=np.float32))
    out = [module(h[i : i + batch])[:, 0] for i in range(0, h.shape[0], batch)]
    return torch.cat(out).double().numpy() if out else np.empty(0)


# ---------------------------------------------------------------------------------------
# Evaluation, ensemble and calibration


def _mse(y: FloatArray, y_hat: FloatArray) -> float:
    return float(np.mean((y - y_hat) ** 2))


@dataclass
class Evaluation:
    """Metrics and what the serving side needs (the manifest ``extra``)."""

    metrics: dict[str, float]
    extra: dict[str, Any]


def evaluate(table: Table, nbeats: FloatArray, cfg: TrainConfig) -> Evaluation:
    """Fit the ensemble on val, calibrate on cal, report on test."""
    members = np.column_stack(
        [
            nbeats,
            ve.logvol_from_var(table.ewma_var, cfg.h),
            ve.logvol_from_var(table.garch_served_var, cfg.h),
        ]
    )
    y = table.y
    val = (table.span == 1) & (table.regime >= 0)
    weights, bias = ve.fit_regime_weights(members[val], y[val], table.regime[val])
    prior = np.bincount(table.regime[val], minlength=len(REGIMES)) / val.sum()
    probs = np.tile(prior, (len(y), 1))
    sim = table.regime >= 0
    probs[sim] = np.eye(len(REGIMES))[table.regime[sim]]
    ens = _blend_rows(members, weights, bias, probs)
    ens_prior = _blend_rows(members, weights, bias, np.tile(prior, (len(y), 1)))
    cal = table.span == 2
    scores = np.abs(y[cal] - ens[cal])
    quantiles = {c: ve.regime_quantiles(scores, table.regime[cal], c) for c in COVERAGES}
    pooled = {c: ve.conformal_quantile(scores, c) for c in COVERAGES}
    half = {c: probs @ q for c, q in quantiles.items()}
    half_prior = {c: np.full(len(y), prior @ q) for c, q in quantiles.items()}
    metrics = _test_metrics(table, members, ens, ens_prior, half, half_prior, cfg)
    metrics |= {f"conformal_q_{round(c * 100)}_pooled": q for c, q in pooled.items()}
    extra = {
        "L": cfg.length,
        "h": cfg.h,
        "target": f"log sqrt(mean(r^2) + {ve.VOL_FLOOR:g}^2) of the next h bar log returns",
        "scaling": (
            "input history: raw natural-log per-bar realized vol over trailing h bars "
            "(LogVolHistory / nbeats_histories); the model centres each window on its mean "
            "internally; output: log-vol, same units"
        ),
        "components": list(ve.COMPONENTS),
        "ensemble": {
            "weights": {r.value: weights[k].tolist() for k, r in enumerate(REGIMES)},
            "bias": {r.value: float(bias[k]) for k, r in enumerate(REGIMES)},
            "prior": {r.value: float(prior[k]) for k, r in enumerate(REGIMES)},
            "fit": "simplex least squares per true simulator regime on the validation span",
        },
        "conformal": {
            "quantiles": {
                str(c): {r.value: float(q[k]) for k, r in enumerate(REGIMES)}
                for c, q in quantiles.items()
            },
            "pooled": {str(c): q for c, q in pooled.items()},
            "score": "abs(log rv - ensemble log-vol) on the calibration span, per true regime"
            " (Mondrian); half-width served as regime_probs @ q",
            "n_cal": int(cal.sum()),
            "n_cal_per_regime": {
                r.value: int(np.sum(table.regime[cal] == k)) for k, r in enumerate(REGIMES)
            },
        },
        "garch_default": asdict(table.garch_default),
        "garch_served": (
            "GARCH(1,1) with the pooled (alpha, beta), intercept targeting an EWMA(0.995) of r^2"
            " (GarchVariance)"
        ),
        "psi_reference": psi_reference(table, cfg),
    }
    return Evaluation(metrics, extra)


def _blend_rows(
    members: FloatArray, weights: FloatArray, bias: FloatArray, probs: FloatArray
) -> FloatArray:
    w, b = ve.blend(weights, bias, probs)
    return np.asarray(np.sum(members * w, axis=1) + b, dtype=np.float64)


def _test_metrics(
    table: Table,
    members: FloatArray,
    ens: FloatArray,
    ens_prior: FloatArray,
    half: dict[float, FloatArray],
    half_prior: dict[float, FloatArray],
    cfg: TrainConfig,
) -> dict[str, float]:
    """MSE of every member and the ensemble, conformal coverage: test span.

    ``mse_logvol_garch`` is the per-series fitted GARCH baseline; the member the ensemble
    blends (and the dataflow serves) is ``mse_logvol_garch_served``.
    """
    y = table.y
    test = table.span == 3
    garch_fitted = ve.logvol_from_var(table.garch_var, cfg.h)
    out: dict[str, float] = {}
    fitted = np.isfinite(garch_fitted)
    groups = {
        "": test, "_sim": test & (table.regime >= 0), "_real": test & (table.regime < 0),
        "_timesplit": test & fitted,
    }  # fmt: skip
    for suffix, rows in groups.items():
        for k, name in enumerate(ve.COMPONENTS):
            served = "_served" if name == "garch" else ""
            out[f"mse_logvol_{name}{served}{suffix}"] = _mse(y[rows], members[rows, k])
        out[f"mse_logvol_garch{suffix}"] = _mse(y[rows & fitted], garch_fitted[rows & fitted])
        out[f"mse_logvol_ensemble{suffix}"] = _mse(y[rows], ens[rows])
        out[f"coverage_90{suffix}"] = _covered(y[rows], ens[rows], half[0.9][rows])
        out[f"n_test{suffix}"] = float(rows.sum())
    out["mse_logvol_ensemble_prior_probs"] = _mse(y[test], ens_prior[test])
    out["coverage_90_prior_probs"] = _covered(y[test], ens_prior[test], half_prior[0.9][test])
    for c, q in half.items():
        out[f"coverage_{round(c * 100)}"] = _covered(y[test], ens[test], q[test])
        out[f"mean_halfwidth_{round(c * 100)}"] = float(np.mean(q[test]))
    for k, r in enumerate(REGIMES):
        rows = test & (table.regime == k)
        if rows.any():
            out[f"coverage_90_{r.value}"] = _covered(y[rows], ens[rows], half[0.9][rows])
            out[f"mse_logvol_ensemble_{r.value}"] = _mse(y[rows], ens[rows])
    return out


def _covered(y: FloatArray, y_hat: FloatArray, q: FloatArray) -> float:
    return ve.coverage_rate(y, y_hat - q, y_hat + q)


def psi_reference(table: Table, cfg: TrainConfig) -> dict[str, dict[str, list[float]]]:
    """Decile histograms of the live inputs over the training span (``models.drift``)."""
    tr = table.span == 0
    values = ve.psi_inputs(table.history[tr, -1], table.ewma_var[tr], table.garch_served_var[tr])
    return {k: reference_histogram(v).to_dict() for k, v in values.items()}


# ---------------------------------------------------------------------------------------
# Pipeline


@dataclass
class RunResult:
    """Everything ``export.nbeats`` needs."""

    config: TrainConfig
    outcome: TrainOutcome
    evaluation: Evaluation
    table: Table

    def summary(self) -> dict[str, Any]:
        """JSON-friendly record of the run."""
        o = self.outcome
        return {
            "config": asdict(self.config),
            "training": {
                "seconds": round(o.seconds, 1), "epochs": o.epochs, "best_epoch": o.best_epoch,
                "best_val_loss": o.best_val_loss, "n_train": o.n_train, "n_val": o.n_val,
                "parameters": int(sum(p.numel() for p in o.model.parameters())),
                "series": self.table.names,
            },
            "metrics": self.evaluation.metrics,
            "extra": self.evaluation.extra,
        }  # fmt: skip


def calibrate_and_evaluate(table: Table, model: Any, cfg: TrainConfig) -> Evaluation:
    """:func:`evaluate` the forecasts calibrated on the validation span (as exported)."""
    raw = predict_logvol(NBeatsExport(model), table.history)
    val = table.span == 1
    calibration = QlikeCalibration.fit(table.history[val], raw[val], table.y[val], cfg.h)
    evaluation = evaluate(table, calibration.apply(table.history, raw), cfg)
    evaluation.extra["qlike_calibration"] = asdict(calibration) | {
        "note": "forecast = level + gain * (N-BEATS forecast - level) + offset, level = mean of"
        " the history window; fitted for QLIKE on the validation span (vol_nbeats."
        "QlikeCalibration); part of the ONNX graph"
    }
    return evaluation


def served_module(model: Any, summary: dict[str, Any]) -> NBeatsExport:
    """The export wrapper with the run's calibration (identity when it has none)."""
    raw = summary["extra"].get("qlike_calibration", {})
    return NBeatsExport(model, QlikeCalibration(raw.get("gain", 1.0), raw.get("offset", 0.0)))


def run(cfg: TrainConfig) -> RunResult:
    """Load data, train, calibrate, evaluate."""
    table = build_table(load_series(cfg), cfg)
    outcome = train(table, cfg)
    evaluation = calibrate_and_evaluate(table, outcome.model, cfg)
    evaluation.metrics["train_seconds"] = round(outcome.seconds, 1)
    return RunResult(cfg, outcome, evaluation, table)


def reevaluate(out: Path) -> RunResult:
    """Rebuild the data, calibrate and evaluate the saved model again (no training)."""
    model, summary = load_checkpoint(out)
    raw = summary["config"]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    cfg = TrainConfig(**fields)
    t = summary["training"]
    outcome = TrainOutcome(
        model, t["seconds"], t["epochs"], t["best_epoch"], t["best_val_loss"], t["n_train"],
        t["n_val"],
    )  # fmt: skip
    table = build_table(load_series(cfg), cfg)
    evaluation = calibrate_and_evaluate(table, model, cfg)
    evaluation.metrics["train_seconds"] = round(outcome.seconds, 1)
    return RunResult(cfg, outcome, evaluation, table)


def save(result: RunResult, out: Path) -> None:
    """Write ``model.ckpt`` (weights and hyper-parameters) and ``result.json``."""
    out.mkdir(parents=True, exist_ok=True)
    model = result.outcome.model
    torch.save({"hparams": dict(model.hparams), "state_dict": model.state_dict()},
               out / "model.ckpt")  # fmt: skip
    (out / "result.json").write_text(json.dumps(result.summary(), indent=2) + "\n")


def load_checkpoint(out: Path) -> tuple[Any, dict[str, Any]]:
    """The trained ``CenteredNBeats`` (eval mode) and the run summary written by :func:`save`."""
    raw = torch.load(out / "model.ckpt", weights_only=False)
    model = CenteredNBeats(**raw["hparams"])
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return model, json.loads((out / "result.json").read_text())


def iter_metrics(summary: dict[str, Any]) -> Iterator[str]:
    """Readable lines of the headline metrics."""
    m, t = summary["metrics"], summary["training"]
    yield f"trained {t['epochs']} epochs (best {t['best_epoch']}) in {t['seconds']} s"
    for suffix in ("", "_sim", "_real", "_timesplit"):
        names = ["nbeats", "ewma", "garch", "garch_served", "ensemble"]
        mses = "  ".join(f"{n}={m[f'mse_logvol_{n}{suffix}']:.4f}" for n in names)
        cover = m[f"coverage_90{suffix}"]
        yield f"test{suffix or '_all'} mse_logvol: {mses}  coverage_90={cover:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Train and save; ``--quick`` for the seconds-long test configuration."""
    parser = argparse.ArgumentParser(prog="python -m models.vol_nbeats", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny data and network")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}[_quick]")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument(
        "--reevaluate", action="store_true", help="evaluate the saved run in --out again"
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else TrainConfig()
    if args.max_epochs is not None:
        cfg = replace(cfg, max_epochs=args.max_epochs)
    out = args.out or Path(f"{DEFAULT_OUT}{'_quick' if args.quick else ''}")
    result = reevaluate(out) if args.reevaluate else run(cfg)
    save(result, out)
    for line in iter_metrics(result.summary()):
        print(line)
    print(f"wrote {out}/model.ckpt and {out}/result.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
