"""Held-out evaluation of the shipped models, written to ``docs/MODELS.md``.

``python -m models.evaluate [--quick]`` (or ``riskstream evaluate [all --quick]``) rebuilds the
held-out spans exactly as the training modules split them (their own data builders,
configurations and seeds), runs the **committed ONNX artifacts** through
:func:`models.runtime.load_model` (sha256-verified, so the figures are those of what
ships) and scores them beside their baselines:

regime_tft (next-bar regime, 7 classes)
    accuracy, macro-F1, confusion matrix, expected calibration error (10 equal-width bins
    of the top-label probability), log-loss and transition accuracy (accuracy on the
    windows whose target regime differs from the regime of the window's last bar), for
    the TFT, persistence (next = the *observed* label at ``t``, the causal labeler's label
    that serving computes too; its probabilities are the training row P(target of t+1 |
    observed label at t)), the latent-truth persistence as an oracle reference (the
    simulator's true regime at ``t``, never observed when serving), a causal statsmodels
    ``MarkovRegression`` (3 states, switching variance, fitted on the training returns,
    *filtered* probabilities mapped to the regimes by the training co-occurrence, as
    :func:`models.regime_tft.markov_baseline` does, but with a seeded start search),
    the labeler's own label at ``t`` (calibrated the same way) and the majority class.
vol_nbeats (log realized vol of the next 5 bars)
    MSE of log-vol and QLIKE for raw N-BEATS, the regime-weighted ensemble (blended with
    the TFT's probabilities as served, and with the true / prior regime for reference),
    EWMA(0.94), GARCH(1,1) fitted per series with ``arch`` on the training span, and
    the served pooled GARCH; split-conformal coverage of the ensemble's intervals.

QLIKE is ``mean(s - log s - 1)`` with ``s = sigma2_true / sigma2_f``: ``sigma2_true`` is
the realized per-bar variance of the next ``h`` bars (``exp(2 y)``, ``y`` the log-vol
target) and ``sigma2_f`` the variance a forecast implies. Every member forecasts the
log-vol target, so ``sigma2_f = exp(2 (y_hat - b))`` with ``b`` the Gaussian bias of a
log realized vol (:func:`models.vol_ensemble.gaussian_log_bias`); for EWMA and GARCH
this gives back exactly their variance forecast (plus the 1e-5 vol floor squared).

A full run also records, through :func:`export.manifest.register` with the artifacts'
unchanged file, version and sha256, the held-out metrics (``eval_*``) and a
``training_data_fingerprint`` (sha256 of a canonical JSON description of the data:
data sets and the sha256 of their files, simulator seeds and bars, spans, row counts)
in each manifest entry. ``--quick`` uses small spans (tests) and writes
``build/MODELS_quick.md`` unless ``--out`` says otherwise; it never touches the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, load_manifest, register, sha256_file
from models import vol_ensemble as ve
from models.regimes import REGIMES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

N_CLASSES = len(REGIMES)
ECE_BINS = 10
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "MODELS.md"
QUICK_OUT = REPO / "build" / "MODELS_quick.md"
REGIME_MODEL, VOL_MODEL = "regime_tft", "vol_nbeats"
EVAL_PREFIX = "eval_"
_PROB_EPS = 1e-7
_STALE_DAYS = 7
"""A real market regime older than this (calendar days) is not used for a vol origin."""

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Metric functions (pure NumPy)


def confusion_matrix(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, n: int = N_CLASSES
) -> IntArray:
    """``(n, n)`` counts: row = true class, column = predicted class."""
    t = np.asarray(truth, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: shapes differ {t.shape} vs {p.shape}")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n or p.max() >= n):
        raise ValueError(f"confusion_matrix: classes must be in 0..{n - 1}")
    counts = np.bincount(t * n + p, minlength=n * n)
    return np.asarray(counts.reshape(n, n), dtype=np.int64)


def per_class_f1(confusion: npt.ArrayLike) -> FloatArray:
    """F1 of each class; NaN for a class that is neither in the truth nor predicted.

    ``F1 = 2 TP / (2 TP + FP + FN)`` (0 when the class occurs or is predicted but never
    both at once).
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    fp = c.sum(axis=0) - tp
    fn = c.sum(axis=1) - tp
    denom = 2.0 * tp + fp + fn
    out = np.full(c.shape[0], np.nan)
    used = denom > 0
    out[used] = 2.0 * tp[used] / denom[used]
    return out


def macro_f1(confusion: npt.ArrayLike) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions.

    The classes scikit-learn's ``f1_score(average="macro")`` averages over by default.
    """
    f1 = per_class_f1(confusion)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def accuracy_of(confusion: npt.ArrayLike) -> float:
    """Share of the diagonal."""
    c = np.asarray(confusion, dtype=np.float64)
    total = c.sum()
    return float(np.trace(c) / total) if total else float("nan")


def expected_calibration_error(
    proba: npt.ArrayLike, target: npt.ArrayLike, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE: ``sum_b n_b / N * |accuracy_b - mean confidence_b|``.

    Confidence is the largest probability of a row, correct when its class is the
    target; bins are ``n_bins`` equal-width intervals ``[k/n, (k+1)/n)`` of [0, 1]
    (a confidence of 1 falls in the last bin); empty bins count 0.
    """
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(target, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected_calibration_error: shapes {p.shape} and {y.shape}")
    if not len(y):
        return float("nan")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip((confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        rows = bins == b
        if rows.any():
            total += rows.sum() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / len(y))


def log_loss(proba: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean negative log probability of the target (probabilities clipped at 1e-7)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(target, dtype=np.int64)
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _PROB_EPS, 1.0))))


def transition_mask(current: npt.ArrayLike, target: npt.ArrayLike) -> BoolArray:
    """Windows whose target regime differs from the regime of their last bar."""
    return np.asarray(np.asarray(current) != np.asarray(target), dtype=np.bool_)


def transition_accuracy(
    predicted: npt.ArrayLike, current: npt.ArrayLike, target: npt.ArrayLike
) -> float:
    """Accuracy on the windows where the true regime changes (NaN when there are none)."""
    rows = transition_mask(current, target)
    if not rows.any():
        return float("nan")
    return float(np.mean(np.asarray(predicted)[rows] == np.asarray(target)[rows]))


def qlike_terms(true_var: npt.ArrayLike, forecast_var: npt.ArrayLike) -> FloatArray:
    """Per-row QLIKE loss ``s - log s - 1``, ``s = true_var / forecast_var`` (0 iff equal)."""
    s = np.asarray(true_var, dtype=np.float64) / np.asarray(forecast_var, dtype=np.float64)
    return np.asarray(s - np.log(s) - 1.0, dtype=np.float64)


def qlike(true_var: npt.ArrayLike, forecast_var: npt.ArrayLike) -> float:
    """Mean QLIKE loss (see :func:`qlike_terms`)."""
    terms = qlike_terms(true_var, forecast_var)
    return float(terms.mean()) if terms.size else float("nan")


def mse(y: npt.ArrayLike, y_hat: npt.ArrayLike) -> float:
    """Mean squared error."""
    d = np.asarray(y, dtype=np.float64) - np.asarray(y_hat, dtype=np.float64)
    return float(np.mean(d * d)) if d.size else float("nan")


def variance_from_logvol(logvol: npt.ArrayLike, h: int = ve.DEFAULT_H) -> FloatArray:
    """Per-bar variance a log-vol forecast implies: ``exp(2 (y_hat - gaussian_log_bias(h)))``.

    The inverse of :func:`models.vol_ensemble.logvol_from_var` (up to the vol floor).
    """
    y = np.asarray(logvol, dtype=np.float64)
    return np.asarray(np.exp(2.0 * (y - ve.gaussian_log_bias(h))), dtype=np.float64)


def realized_variance(y: npt.ArrayLike) -> FloatArray:
    """Realized per-bar variance of the target's bars: ``exp(2 y)``."""
    return np.asarray(np.exp(2.0 * np.asarray(y, dtype=np.float64)), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Fingerprints


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: the bytes a fingerprint hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(description: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``description``."""
    return hashlib.sha256(canonical_json(description).encode()).hexdigest()


def arch_data_files(names: Iterable[str]) -> dict[str, str]:
    """sha256 of the data files shipped in ``arch.data.<name>`` (what the loaders read)."""
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        root = importlib.resources.files(f"arch.data.{name}")
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if entry.name.endswith((".csv", ".csv.gz")):
                digest = hashlib.sha256(entry.read_bytes()).hexdigest()
                out[f"arch.data.{name}/{entry.name}"] = digest
    return out


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------
# Classifier scores


@dataclass(frozen=True)
class ClassifierScores:
    """Metrics of one regime forecaster on one scope."""

    n: int
    accuracy: float
    macro_f1: float
    ece: float
    log_loss: float
    transition_accuracy: float
    n_transitions: int
    confusion: list[list[int]]
    f1: list[float]

    @classmethod
    def of(
        cls,
        proba: FloatArray,
        target: IntArray,
        current: IntArray,
        predicted: IntArray | None = None,
    ) -> ClassifierScores:
        """Scores of probabilities ``proba``; ``predicted`` defaults to their argmax."""
        pred = proba.argmax(axis=1) if predicted is None else predicted
        conf = confusion_matrix(target, pred)
        return cls(
            n=len(target),
            accuracy=accuracy_of(conf),
            macro_f1=macro_f1(conf),
            ece=expected_calibration_error(proba, target),
            log_loss=log_loss(proba, target),
            transition_accuracy=transition_accuracy(pred, current, target),
            n_transitions=int(transition_mask(current, target).sum()),
            confusion=conf.tolist(),
            f1=per_class_f1(conf).tolist(),
        )


# ---------------------------------------------------------------------------------------
# Regime model


REGIME_FORECASTERS: tuple[tuple[str, str], ...] = (
    ("tft", "TFT (ONNX, shipped)"),
    ("persistence", "Persistence (next = observed label at t)"),
    ("markov", "Markov-switching (MarkovRegression, filtered)"),
    ("labeler", "Labeler at t (causal, calibrated)"),
    ("majority", "Majority class (training prior)"),
    ("pending", "Labeler's pending label at t (causal; the TFT's prior index)"),
    ("oracle", "Oracle reference: latent true regime at t (not observable, not a target)"),
)


@dataclass
class RegimeEvaluation:
    """Per scope and forecaster, the scores; plus what the report and manifest need."""

    scores: dict[str, dict[str, ClassifierScores]]
    """``scores[scope][forecaster]``; scopes ``all``, ``real``, ``sim``."""
    spans: dict[str, Any]
    description: dict[str, Any]
    persistence_argmax_is_current: bool
    sha256: str
    version: str
    reads_labels: bool = True
    """The artifact takes the observed labels as inputs."""
    correction_scale: float = 1.0
    """The artifact's shrinkage of the TFT's correction (``persistence_prior`` extra)."""


def _calibrate(states: FloatArray, target: IntArray) -> FloatArray:
    """P(target | state) from soft memberships (n, k), Laplace-smoothed (as regime_tft)."""
    from models.regime_tft import _calibrate as calibrate

    return calibrate(states, target)


def _current(s: Any, observed: bool | str) -> IntArray:
    """Each window's last-bar label.

    Observed (the causal labeler's, ``True``), its pending label (``"pending"``) or the
    latent truth (``False``).
    """
    if observed == "pending":
        return np.asarray(s.pending[s.ends], dtype=np.int64)
    return np.asarray(s.observed[s.ends] if observed else s.labels[s.ends], dtype=np.int64)


def transition_probabilities(series: Sequence[Any], observed: bool | str = True) -> FloatArray:
    """``(7, 7)`` P(target of t+1 | label of t) over the training windows (+0.5 smoothing).

    The label of ``t`` is the observed one (``observed``) or the latent true one.
    """
    one_hot = np.eye(N_CLASSES)
    current = np.concatenate([one_hot[_current(s, observed)] for s in series])
    target = np.concatenate([s.labels[s.ends + 1] for s in series])
    return _calibrate(current, target)


def persistence_baseline(
    train: Sequence[Any], test: Sequence[Any], observed: bool | str = True
) -> dict[str, FloatArray]:
    """Per test series, the training transition-matrix row of each window's last label.

    ``observed``: the label serving observes (the causal labeler's label at ``t``: the
    persistence baseline); otherwise the latent true regime (the oracle reference).
    """
    out: dict[str, FloatArray] = {}
    for source in sorted({s.source for s in test}):
        fit = [s for s in train if s.source == source]
        if not fit:
            continue
        matrix = transition_probabilities(fit, observed)
        for s in (t for t in test if t.source == source):
            out[s.name] = matrix[_current(s, observed)]
    return out


def markov_baseline(
    train: Sequence[Any], test: Sequence[Any], k: int, search_reps: int, seed: int
) -> dict[str, FloatArray]:
    """The training report's Markov-switching baseline, with a seeded start search.

    statsmodels draws its random start parameters from fresh entropy unless seeded;
    seeding makes the baseline (and ``docs/MODELS.md``) reproducible.
    """
    from models.regime_tft import markov_baseline as baseline

    return baseline(train, test, k, search_reps, seed)


def _stack(per_series: Mapping[str, FloatArray], names: Sequence[str]) -> FloatArray:
    return np.concatenate([per_series[n] for n in names])


def regime_config(quick: bool) -> Any:
    """The training configuration of the regime TFT (the quick one, with real data)."""
    from models.regime_tft import TrainConfig

    if quick:
        return replace(TrainConfig.quick_config(), use_real=True)
    return TrainConfig()


def _check_regime_config(config: Any, entry: ArtifactEntry) -> None:
    """The manifest's record of the training must match the configuration rebuilt here."""
    recorded = entry.extra.get("training", {})
    for key in ("sim_train_seeds", "sim_test_seeds", "real_train_end", "real_val_end", "use_real"):
        have = getattr(config, key)
        want = recorded.get(key)
        if want is not None and (list(have) if isinstance(have, tuple) else have) != want:
            raise ValueError(f"{REGIME_MODEL}: training {key}={want} in the manifest, {have} here")


def _series_span(s: Any, dates: pd.DatetimeIndex | None) -> dict[str, Any]:
    """Windows of one series: count and the bars they predict."""
    first, last = int(s.ends[0]) + 1, int(s.ends[-1]) + 1
    span: dict[str, Any] = {"series": s.name, "windows": len(s.ends)}
    if s.source == "real" and dates is not None:
        span["targets"] = [str(dates[first].date()), str(dates[last].date())]
    else:
        span["targets"] = [first, last]
        span["bars"] = len(s.features)
    return span


def regime_description(config: Any, splits: Any, dates: pd.DatetimeIndex | None) -> dict[str, Any]:
    """Canonical description of the TFT's data (what its fingerprint hashes)."""
    from models.market_features import MARKET_FEATURES
    from models.regime_runtime import ENCODER_LENGTH, LABEL_CHANNELS

    desc: dict[str, Any] = {
        "model": REGIME_MODEL,
        "features": list(MARKET_FEATURES),
        "label_channels": list(LABEL_CHANNELS),
        "observed_labels": "models.labeler.RegimeLabeler (causal) fitted on the real training"
        " span (simulator training series without real data), over each whole series",
        "encoder_length": ENCODER_LENGTH,
        "simulator": {
            "generator": "models.simulator.MarketSimulator(seed).path(bars)",
            "train_seeds": list(config.sim_train_seeds),
            "val_seeds": list(config.sim_val_seeds),
            "test_seeds": list(config.sim_test_seeds),
            "train_bars": config.sim_bars,
            "eval_bars": config.sim_eval_bars,
            "labels": "true simulator regimes",
        },
        "splits": {
            name: [_series_span(s, dates) for s in getattr(splits, name)]
            for name in ("train", "val", "test")
        },
    }
    if config.use_real:
        desc["real"] = {
            "bars": "models.market_features.market_bars_from_real (S&P 500, VIX, Moody's AAA/BAA)",
            "files": arch_data_files(("sp500", "vix", "default")),
            "arch": _package_version("arch"),
            "train_end": config.real_train_end,
            "val_end": config.real_val_end,
            "rows": len(dates) if dates is not None else 0,
            "labels": "models.labeler.RegimeLabeler fitted on the real training span",
        }
    return desc


def evaluate_regime(quick: bool = False, batch: int = 512) -> RegimeEvaluation:
    """Score the shipped TFT and its baselines on the training code's test split."""
    from models.market_features import market_bars_from_real
    from models.regime_runtime import MODEL_NAME, labeler_from_extra, predict_proba, reads_labels
    from models.regime_tft import build_splits, labeler_baseline
    from models.runtime import load_model

    config = regime_config(quick)
    model = load_model(MODEL_NAME)
    if not quick:
        _check_regime_config(config, model.entry)
    splits = build_splits(config)
    shipped = labeler_from_extra(model.entry.extra)
    if shipped is not None:
        # the observed labels are those of the labeler the artifact ships with
        results = [shipped.label(s.features) for s in splits.test]
        test = [
            replace(s, observed=r.labels, pending=r.pending)
            for s, r in zip(splits.test, results, strict=True)
        ]
        if not quick and not all(
            np.array_equal(np.asarray(a.observed), np.asarray(b.observed))
            and np.array_equal(np.asarray(a.pending), np.asarray(b.pending))
            for a, b in zip(test, splits.test, strict=True)
        ):
            raise ValueError(f"{REGIME_MODEL}: the shipped labeler differs from the training one")
        splits = replace(splits, test=test)
    dates = market_bars_from_real().index if config.use_real else None
    names = [s.name for s in splits.test]
    windows = np.concatenate([s.windows()[0] for s in splits.test])
    labels = np.concatenate([s.label_windows() for s in splits.test])
    target = np.concatenate([s.labels[s.ends + 1] for s in splits.test])
    truth_now = np.concatenate([s.labels[s.ends] for s in splits.test])
    observed_now = labels[:, -1, 0]
    pending_now = labels[:, -1, 1]
    source = np.concatenate([np.full(len(s.ends), s.source) for s in splits.test])
    proba = np.concatenate(
        [
            predict_proba(model, windows[lo : lo + batch], labels[lo : lo + batch])
            for lo in range(0, len(windows), batch)
        ]
    )
    train_targets = np.concatenate([s.labels[s.ends + 1] for s in splits.train])
    prior = np.bincount(train_targets, minlength=N_CLASSES) / len(train_targets)
    persistence = _stack(persistence_baseline(splits.train, splits.test), names)
    oracle = _stack(persistence_baseline(splits.train, splits.test, observed=False), names)
    forecasts: dict[str, tuple[FloatArray, IntArray | None]] = {
        "tft": (proba, None),
        # persistence predicts the observed label at t; its probabilities are the training
        # row P(target | observed label) (its argmax need not be that label in the
        # simulator, where the targets are the latent true regimes)
        "persistence": (persistence, observed_now),
        "markov": (
            _stack(
                markov_baseline(
                    splits.train,
                    splits.test,
                    config.markov_regimes,
                    config.markov_search_reps,
                    config.seed,
                ),
                names,
            ),
            None,
        ),
        "labeler": (
            _stack(labeler_baseline(splits.train, splits.test, splits.real_labeler), names),
            None,
        ),
        "majority": (np.tile(prior, (len(target), 1)), None),
        # the labeler's pending label at t (causal; the index of the TFT's prior)
        "pending": (
            _stack(persistence_baseline(splits.train, splits.test, observed="pending"), names),
            pending_now,
        ),
        # the latent true regime at t (simulator): a reference no forecaster can observe
        "oracle": (oracle, truth_now),
    }
    scopes = {"all": np.ones(len(target), dtype=bool)}
    for src in ("real", "sim"):
        if (source == src).any():
            scopes[src] = source == src
    scores = {
        scope: {
            name: ClassifierScores.of(
                p[rows], target[rows], truth_now[rows], None if pred is None else pred[rows]
            )
            for name, (p, pred) in forecasts.items()
        }
        for scope, rows in scopes.items()
    }
    spans = {
        scope: [_series_span(s, dates) for s in splits.test if scope in ("all", s.source)]
        for scope in scopes
    }
    return RegimeEvaluation(
        scores=scores,
        spans=spans,
        description=regime_description(config, splits, dates),
        persistence_argmax_is_current=bool(np.all(persistence.argmax(axis=1) == observed_now)),
        sha256=model.entry.sha256,
        version=model.entry.version,
        reads_labels=reads_labels(model),
        correction_scale=float(
            model.entry.extra.get("persistence_prior", {}).get("correction_scale", 1.0)
        ),
    )


# ---------------------------------------------------------------------------------------
# Volatility model


VOL_FORECASTERS: tuple[tuple[str, str], ...] = (
    ("nbeats", "N-BEATS (ONNX, shipped)"),
    ("ensemble", "Ensemble, TFT regime probabilities (as served)"),
    ("ensemble_true_regime", "Ensemble, true regime (reference)"),
    ("ensemble_prior", "Ensemble, training regime prior"),
    ("ewma", "EWMA(0.94)"),
    ("garch", "GARCH(1,1), per-series fit (arch)"),
    ("garch_served", "GARCH(1,1), pooled and variance-targeted (served member)"),
)
ENSEMBLES: tuple[str, ...] = ("ensemble", "ensemble_true_regime", "ensemble_prior")
VOL_SCOPES: tuple[tuple[str, str], ...] = (
    ("later_span", "later time span (last 15 % of every training series)"),
    ("later_span_garch", "later time span, series with a usable per-series GARCH fit"),
    ("heldout_worlds", "held-out simulator worlds (every origin)"),
    ("real", "real series, later time span"),
    ("all", "all test origins"),
)


@dataclass(frozen=True)
class VolScores:
    """Metrics of one volatility forecaster on one scope."""

    n: int
    mse: float
    qlike: float
    coverage: dict[str, float] = field(default_factory=dict)
    halfwidth: dict[str, float] = field(default_factory=dict)


@dataclass
class VolEvaluation:
    """``scores[scope][forecaster]`` and what the report and manifest need."""

    scores: dict[str, dict[str, VolScores]]
    description: dict[str, Any]
    regime_source: dict[str, int]
    """Test origins by where their ensemble regime probabilities came from."""
    sha256: str
    version: str
    h: int
    calibration: dict[str, float] = field(default_factory=dict)
    """The artifact's QLIKE calibration (``qlike_calibration`` extra; empty: none)."""


def vol_config(entry: ArtifactEntry, quick: bool) -> Any:
    """The N-BEATS training configuration: from the manifest, or the quick one."""
    from models import vol_nbeats as vn

    if quick:
        return replace(vn.QUICK, test_seeds=(209,), heldout_bars=500)
    raw: dict[str, Any] = entry.extra["config"]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return vn.TrainConfig(**fields)


def vol_description(cfg: Any, table: Any) -> dict[str, Any]:
    """Canonical description of the N-BEATS data (what its fingerprint hashes)."""
    spans = {}
    for k, span in enumerate(("train", "val", "cal", "test")):
        rows = table.span == k
        spans[span] = {
            "rows_sim": int(np.sum(rows & (table.regime >= 0))),
            "rows_real": int(np.sum(rows & (table.regime < 0))),
            "series": len(np.unique(table.series[rows])),
        }
    return {
        "model": VOL_MODEL,
        "target": f"log realized vol of the next {cfg.h} bar log returns",
        "history": cfg.length,
        "simulator": {
            "generator": "models.simulator.MarketSimulator(seed).path(bars), every instrument",
            "time_split_seeds": list(cfg.sim_seeds),
            "time_split_bars": cfg.sim_bars,
            "val_seeds": list(cfg.val_seeds),
            "cal_seeds": list(cfg.cal_seeds),
            "test_seeds": list(cfg.test_seeds),
            "heldout_bars": cfg.heldout_bars,
        },
        "real": {
            "series": list(cfg.real),
            "files": arch_data_files(cfg.real),
            "arch": _package_version("arch"),
        },
        "splits": list(cfg.splits),
        "rows": spans,
        "series_count": len(table.names),
        "instruments": sorted({n.split(":")[-1] for n in table.names}),
    }


def _sim_market_probs(
    model: Any, seed: int, n_bars: int, origins: IntArray, batch: int
) -> tuple[FloatArray, BoolArray]:
    """TFT probabilities at vol origins ``t`` of a simulator world (window ends at bar t+1)."""
    from models.market_features import compute_features, feature_windows, market_bars_from_sim
    from models.regime_runtime import ENCODER_LENGTH, predict_proba
    from models.simulator import MarketSimulator

    features = compute_features(market_bars_from_sim(MarketSimulator(seed=seed).path(n_bars)))
    return _window_probs(
        model, features, origins + 1, ENCODER_LENGTH, batch, predict_proba, feature_windows
    )


def observed_labels(model: Any, features: FloatArray) -> IntArray:
    """The causal labels and pending labels (n, 2) of ``features`` by the shipped labeler.

    All 0 for an artifact that reads no labels (they are then ignored).
    """
    from models.regime_runtime import labeler_from_extra

    labeler = labeler_from_extra(model.entry.extra)
    if labeler is None:
        return np.zeros((len(features), 2), dtype=np.int64)
    result = labeler.label(features)
    return np.stack([result.labels, result.pending], axis=-1)


def _window_probs(
    model: Any,
    features: FloatArray,
    ends: IntArray,
    length: int,
    batch: int,
    predict: Any,
    windows_of: Any,
) -> tuple[FloatArray, BoolArray]:
    """Probabilities of the windows ending at ``ends``; ``ok`` marks complete windows.

    The windows' labels are those of :func:`observed_labels` over all of ``features``
    (causal: a bar's label depends on the bars up to it only).
    """
    finite = np.isfinite(features).all(axis=1)
    # a window is usable when its ``length`` rows are all finite
    run = np.concatenate([[0], np.cumsum(~finite)])
    ok = (ends >= length - 1) & (ends < len(features))
    safe = np.where(ok, ends, length - 1)
    ok &= (run[safe + 1] - run[safe + 1 - length]) == 0
    out = np.full((len(ends), N_CLASSES), np.nan)
    unique = np.unique(ends[ok])
    if unique.size:
        x = windows_of(features, length, unique)
        codes = observed_labels(model, features)
        lab = codes[unique[:, None] + np.arange(-length + 1, 1)[None, :]]
        p = np.concatenate(
            [
                predict(model, x[lo : lo + batch], lab[lo : lo + batch])
                for lo in range(0, len(x), batch)
            ]
        )
        out[ok] = p[np.searchsorted(unique, ends[ok])]
    return out, ok


def tft_probs_for_vol(
    table: Any, series: Sequence[Any], cfg: Any, model: Any, rows: BoolArray, batch: int = 512
) -> tuple[FloatArray, BoolArray]:
    """The TFT's probabilities the dataflow would blend with at each vol origin in ``rows``.

    Simulator instruments: the TFT on that world's market bars, window ending at the
    origin's bar. Real series: the TFT on the S&P 500 market bars, window ending at the
    latest S&P 500 bar on or before the origin's date (at most a week old). Returns
    probabilities ``(n, 7)`` (NaN where there is no window yet) and where they exist.
    """
    from models import datasets
    from models.market_features import compute_features, feature_windows, market_bars_from_real
    from models.regime_runtime import ENCODER_LENGTH, predict_proba

    out = np.full((len(table.t), N_CLASSES), np.nan)
    have = np.zeros(len(table.t), dtype=bool)
    worlds: dict[int, int] = {}
    for s in series:
        if s.source == "sim":
            seed = int(s.name.split(":")[0].removeprefix("sim"))
            worlds[seed] = len(s.returns) + 1
    for seed, n_bars in sorted(worlds.items()):
        idx = [i for i, s in enumerate(series) if s.name.startswith(f"sim{seed}:")]
        sel = rows & np.isin(table.series, idx)
        if not sel.any():
            continue
        p, ok = _sim_market_probs(model, seed, n_bars, table.t[sel], batch)
        out[sel], have[sel] = p, ok
    real_idx = [i for i, s in enumerate(series) if s.source == "real"]
    if real_idx and (rows & np.isin(table.series, real_idx)).any():
        bars = market_bars_from_real()
        features = compute_features(bars)
        bar_dates = bars.index
        for i in real_idx:
            sel = rows & (table.series == i)
            if not sel.any():
                continue
            dates = datasets.load_daily(series[i].name).index
            origin_dates = dates[table.t[sel] + 1]
            pos = bar_dates.searchsorted(origin_dates, side="right") - 1
            fresh = (pos >= 0) & (
                (origin_dates - bar_dates[np.clip(pos, 0, None)]) <= pd.Timedelta(days=_STALE_DAYS)
            )
            p, ok = _window_probs(
                model,
                features,
                np.where(fresh, pos, -1),
                ENCODER_LENGTH,
                batch,
                predict_proba,
                feature_windows,
            )
            out[sel], have[sel] = p, ok & fresh
    return out, have


def _vol_scores(
    y: FloatArray,
    forecast: FloatArray,
    h: int,
    halfwidth: Mapping[float, FloatArray] | None = None,
) -> VolScores:
    coverage, widths = {}, {}
    for c, q in (halfwidth or {}).items():
        key = str(round(c * 100))
        coverage[key] = ve.coverage_rate(y, forecast - q, forecast + q)
        widths[key] = float(np.mean(q)) if q.size else float("nan")
    return VolScores(
        n=len(y),
        mse=mse(y, forecast),
        qlike=qlike(realized_variance(y), variance_from_logvol(forecast, h)),
        coverage=coverage,
        halfwidth=widths,
    )


def evaluate_vol(quick: bool = False, batch: int = 4096) -> VolEvaluation:
    """Score the shipped N-BEATS, the ensemble and the baselines on the test span."""
    from models import vol_nbeats as vn
    from models.regime_runtime import MODEL_NAME as REGIME_NAME
    from models.runtime import load_model

    model = load_model(VOL_MODEL)
    regime_model = load_model(REGIME_NAME)
    cfg = vol_config(model.entry, quick)
    ens = ve.VolEnsemble.from_extra(model.entry.extra)
    if (ens.length, ens.h) != (cfg.length, cfg.h):
        raise ValueError(f"{VOL_MODEL}: artifact L/h {ens.length}/{ens.h} vs data {cfg}")
    series = vn.load_series(cfg)
    table = vn.build_table(series, cfg)
    test = table.span == 3
    t = table.rows(test)
    y = t.y
    name = model.entry.inputs[0].name
    out_name = model.entry.outputs[0].name
    nbeats = np.concatenate(
        [
            np.asarray(model.run({name: t.history[lo : lo + batch]})[out_name][:, 0], np.float64)
            for lo in range(0, len(y), batch)
        ]
    )
    ewma = ve.logvol_from_var(t.ewma_var, cfg.h)
    garch = ve.logvol_from_var(t.garch_var, cfg.h)
    served = ve.logvol_from_var(t.garch_served_var, cfg.h)
    members = ens.members(nbeats, t.ewma_var, t.garch_served_var)
    prior = np.array(
        [model.entry.extra["ensemble"]["prior"][r.value] for r in REGIMES], dtype=np.float64
    )
    prior_rows = np.tile(prior, (len(y), 1))
    true_rows = prior_rows.copy()
    sim = t.regime >= 0
    true_rows[sim] = np.eye(N_CLASSES)[t.regime[sim]]
    tft_all, tft_ok = tft_probs_for_vol(table, series, cfg, regime_model, test)
    tft_rows = np.where(tft_ok[test][:, None], tft_all[test], prior_rows)
    forecasts: dict[str, FloatArray] = {
        "nbeats": nbeats,
        "ewma": ewma,
        "garch": garch,
        "garch_served": served,
    }
    halfwidths: dict[str, dict[float, FloatArray]] = {}
    for key, probs in (
        ("ensemble", tft_rows),
        ("ensemble_true_regime", true_rows),
        ("ensemble_prior", prior_rows),
    ):
        w, b = ve.blend(ens.weights, ens.bias, probs)
        forecasts[key] = np.sum(members * w, axis=1) + b
        halfwidths[key] = {c: ens.quantile(c, probs) for c in COVERAGES}
    fitted = np.isfinite(garch)
    heldout = np.array([series[i].whole_span is not None for i in t.series], dtype=bool)
    scopes = {
        "later_span": ~heldout,
        "later_span_garch": ~heldout & fitted,
        "heldout_worlds": heldout,
        "real": ~sim,
        "all": np.ones(len(y), dtype=bool),
    }
    scores: dict[str, dict[str, VolScores]] = {}
    for scope, rows in scopes.items():
        scores[scope] = {}
        for key, _ in VOL_FORECASTERS:
            # every forecaster of a scope is scored on the same rows: the per-series GARCH
            # only where it has a forecast for all of them
            if key == "garch" and not (rows.any() and fitted[rows].all()):
                continue
            hw = {c: q[rows] for c, q in halfwidths.get(key, {}).items()}
            scores[scope][key] = _vol_scores(y[rows], forecasts[key][rows], cfg.h, hw)
    regime_source = {"tft": int(np.sum(tft_ok[test])), "prior": int(np.sum(~tft_ok[test]))}
    return VolEvaluation(
        scores=scores,
        description=vol_description(cfg, table),
        regime_source=regime_source,
        sha256=model.entry.sha256,
        version=model.entry.version,
        h=cfg.h,
        calibration={
            k: float(v)
            for k, v in model.entry.extra.get("qlike_calibration", {}).items()
            if k in ("gain", "offset")
        },
    )


# ---------------------------------------------------------------------------------------
# Manifest metrics


def regime_metrics(ev: RegimeEvaluation) -> dict[str, float]:
    """``eval_*`` metrics of the regime entry."""
    out: dict[str, float] = {}
    for scope, by_model in ev.scores.items():
        suffix = "" if scope == "all" else f"_{scope}"
        for model in ("tft", "persistence", "markov", "oracle"):
            s = by_model[model]
            prefix = EVAL_PREFIX if model == "tft" else f"{EVAL_PREFIX}{model}_"
            for key in ("accuracy", "macro_f1", "ece", "log_loss", "transition_accuracy"):
                out[f"{prefix}{key}{suffix}"] = float(getattr(s, key))
        out[f"{EVAL_PREFIX}n{suffix}"] = float(by_model["tft"].n)
        out[f"{EVAL_PREFIX}n_transitions{suffix}"] = float(by_model["tft"].n_transitions)
    return out


def vol_metrics(ev: VolEvaluation) -> dict[str, float]:
    """``eval_*`` metrics of the volatility entry."""
    out: dict[str, float] = {}
    for scope, by_model in ev.scores.items():
        suffix = "" if scope == "all" else f"_{scope}"
        for model, s in by_model.items():
            out[f"{EVAL_PREFIX}mse_logvol_{model}{suffix}"] = s.mse
            out[f"{EVAL_PREFIX}qlike_{model}{suffix}"] = s.qlike
            if model == "ensemble":
                for c, v in s.coverage.items():
                    out[f"{EVAL_PREFIX}coverage_{c}{suffix}"] = v
        out[f"{EVAL_PREFIX}n{suffix}"] = float(by_model["nbeats"].n)
    return out


def update_manifest(
    updates: Mapping[str, tuple[str, dict[str, float], dict[str, Any]]],
    manifest: Path = MANIFEST,
    artifacts: Path = ARTIFACTS,
) -> None:
    """Record metrics and the data fingerprint in each entry, artifact untouched.

    ``updates[name] = (sha256 evaluated, eval metrics, data description)``. Refuses when
    the entry or its file no longer has the sha256 that was evaluated (a concurrent
    export); older ``eval_*`` metrics are replaced, every other field is kept.
    """
    from models.runtime import ArtifactError

    for name, (sha, metrics, description) in sorted(updates.items()):
        entry = load_manifest(manifest)[name]
        if entry.sha256 != sha or sha256_file(artifacts / entry.file) != sha:
            raise ArtifactError(f"{name}: artifact changed since it was evaluated; not recording")
        kept = {k: v for k, v in entry.metrics.items() if not k.startswith(EVAL_PREFIX)}
        extra = dict(entry.extra)
        extra["training_data_fingerprint"] = fingerprint(description)
        extra["training_data"] = description
        extra["evaluation"] = {
            "command": "python -m models.evaluate",
            "report": "docs/MODELS.md",
            "metrics": f"metrics[{EVAL_PREFIX}*], on the held-out spans",
        }
        register(replace(entry, metrics=kept | metrics, extra=extra), manifest)


# ---------------------------------------------------------------------------------------
# Report


def _f(value: float, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    spec = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(marks[a] for a in spec) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _target_line(met: bool, text: str) -> str:
    return f"- **{'met' if met else 'not met'}**: {text}"


def regime_targets(ev: RegimeEvaluation) -> list[tuple[str, bool, str]]:
    """(scope, met, sentence) for "TFT macro-F1 above both baselines"."""
    out = []
    for scope, by_model in ev.scores.items():
        tft, per, mkv = (by_model[k].macro_f1 for k in ("tft", "persistence", "markov"))
        met = tft > per and tft > mkv
        out.append(
            (
                scope,
                met,
                f"TFT macro-F1 {_f(tft)} vs persistence {_f(per)}, "
                f"Markov-switching {_f(mkv)} ({_SCOPE_NAMES[scope]})",
            )
        )
    return out


def vol_targets(ev: VolEvaluation) -> list[tuple[str, bool, str]]:
    """(scope, met, sentence) for "N-BEATS QLIKE no worse than EWMA(0.94)"."""
    out = []
    for scope, _ in VOL_SCOPES:
        by_model = ev.scores[scope]
        if by_model["nbeats"].n == 0:
            continue
        nb, ew = by_model["nbeats"].qlike, by_model["ewma"].qlike
        en = by_model["ensemble"].qlike
        out.append(
            (
                scope,
                nb <= ew,
                f"N-BEATS QLIKE {_f(nb, 4)} vs EWMA(0.94) {_f(ew, 4)}; "
                f"ensemble {_f(en, 4)} ({_VOL_SCOPE_NAMES[scope]})",
            )
        )
    return out


def regime_notes(ev: RegimeEvaluation) -> list[str]:
    """Plain statements the regime figures support, with the numbers."""
    every = ev.scores["all"]
    tft, per, orc = every["tft"], every["persistence"], every["oracle"]
    out = [
        f"- Regimes are sticky: {tft.n_transitions} of {tft.n} held-out windows"
        f" ({_f(100 * tft.n_transitions / max(tft.n, 1), 1)} %) change regime. The TFT"
        " reads the observed label of every bar of its window and starts from persistence"
        " (its logits add the log training transition row of the last bar's pending label),"
        " so what it learns is a correction to persistence: macro-F1"
        f" {_f(tft.macro_f1)} against {_f(per.macro_f1)}, accuracy {_f(tft.accuracy)} against"
        f" {_f(per.accuracy)}, log-loss {_f(tft.log_loss)} against {_f(per.log_loss)}.",
        "- *Persistence* is the observed label at t, i.e. what serving can compute: the"
        " causal labeler's label of the window's last bar (the same labels the TFT reads)."
        " *Oracle reference* is persistence of the latent true regime at t (simulator) or"
        " the labeler's label (real bars, where the targets are the labeler's own labels),"
        " which serving never observes in the simulator: it is shown for scale, not as a"
        f" target (macro-F1 {_f(orc.macro_f1)} overall).",
    ]
    if "sim" in ev.scores:
        sim = ev.scores["sim"]
        out.append(
            "- Held-out simulator worlds: the targets are the true regimes, which the labeler"
            f" matches on {_f(100 * sim['persistence'].accuracy, 1)} % of the next bars; the"
            f" TFT reaches {_f(100 * sim['tft'].accuracy, 1)} % (macro-F1"
            f" {_f(sim['tft'].macro_f1)} vs persistence {_f(sim['persistence'].macro_f1)},"
            f" oracle {_f(sim['oracle'].macro_f1)}; transition accuracy"
            f" {_f(sim['tft'].transition_accuracy)})."
        )
    if "real" in ev.scores:
        real = ev.scores["real"]
        tft_r, per_r, pen_r = real["tft"], real["persistence"], real["pending"]
        out.append(
            "- On the S&P 500 the targets are the labeler's own labels, so persistence is the"
            " labeler's label at t (and equals the oracle row): TFT macro-F1"
            f" {_f(tft_r.macro_f1)} vs {_f(per_r.macro_f1)}, accuracy {_f(tft_r.accuracy)} vs"
            f" {_f(per_r.accuracy)}, log-loss {_f(tft_r.log_loss)} vs {_f(per_r.log_loss)},"
            f" transitions {_f(tft_r.transition_accuracy)} vs 0 (the TFT "
            + (
                f"never predicts {_missed_classes(tft_r)} there)."
                if _missed_classes(tft_r) != "every class it should"
                else "predicts every class that occurs)."
            )
            + f" The labeler's pending label alone scores macro-F1 {_f(pen_r.macro_f1)} there:"
            + (
                " the TFT's corrections, learned mostly where the simulator's latent regimes"
                f" differ from the labels, still cost it there (shrunk by"
                f" {_f(ev.correction_scale, 2)})."
                if tft_r.macro_f1 < pen_r.macro_f1
                else " the TFT adds to it."
            )
        )
        pairs, names = _per_class_gap(tft_r, per_r)
        if pairs:
            out.append(
                "- S&P 500 per-class F1, TFT vs persistence: "
                + "; ".join(
                    f"{r} {_f(a)} vs {_f(b)}" for r, (a, b) in zip(names, pairs, strict=True)
                )
                + "."
            )
    out.append(
        f"- The Markov-switching baseline is far behind (macro-F1 {_f(every['markov'].macro_f1)});"
        f" the calibrated labeler at t scores {_f(every['labeler'].macro_f1)}, the labeler's"
        f" pending label alone (the prior's index) {_f(every['pending'].macro_f1)}."
    )
    return out


def _per_class_gap(
    tft: ClassifierScores, base: ClassifierScores
) -> tuple[list[tuple[float, float]], list[str]]:
    """(TFT F1, baseline F1) and the regime name of every class that occurs."""
    pairs, names = [], []
    for k, r in enumerate(REGIMES):
        a, b = tft.f1[k], base.f1[k]
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            pairs.append((a, b))
            names.append(r.value)
    return pairs, names


def _missed_classes(s: ClassifierScores) -> str:
    missed = [
        REGIMES[k].value
        for k in range(N_CLASSES)
        if sum(s.confusion[k]) > 0 and sum(row[k] for row in s.confusion) == 0
    ]
    return ", ".join(missed) if missed else "every class it should"


def vol_notes(ev: VolEvaluation) -> list[str]:
    """Plain statements the volatility figures support, with the numbers."""
    out = []
    for scope, label in VOL_SCOPES:
        by_model = ev.scores[scope]
        if by_model["nbeats"].n == 0:
            continue
        servable = [k for k in by_model if k != "ensemble_true_regime"]
        best_mse = min(servable, key=lambda k: by_model[k].mse)
        best_q = min(servable, key=lambda k: by_model[k].qlike)
        out.append(
            f"- {_cap(label)}: lowest MSE {_VOL_NAMES[best_mse]} ({_f(by_model[best_mse].mse, 4)}),"
            f" lowest QLIKE {_VOL_NAMES[best_q]} ({_f(by_model[best_q].qlike, 4)})."
        )
    cal = ev.calibration
    fitted = (
        "N-BEATS is fitted for squared error in log-vol, then its served forecast is"
        " recalibrated for QLIKE on the validation span (level + gain (forecast - level) +"
        f" offset, gain {_f(cal['gain'])}, offset {_f(cal['offset'])}), which costs it some"
        " MSE; the ensemble is fitted for squared error"
        if cal
        else "N-BEATS and the ensemble are fitted for squared error"
    )
    out.append(
        f"- {fitted} in log-vol; QLIKE weighs"
        " under-forecast variance heavily, so the two losses can rank the forecasters"
        " differently. The ensemble's true-regime rows are a reference only (left out of the"
        " comparisons above): when serving it blends by the TFT's probabilities."
    )
    return out


_VOL_NAMES = {
    "nbeats": "N-BEATS",
    "ensemble": "the ensemble as served",
    "ensemble_true_regime": "the ensemble with the true regime",
    "ensemble_prior": "the ensemble with the prior",
    "ewma": "EWMA(0.94)",
    "garch": "the per-series GARCH(1,1)",
    "garch_served": "the served GARCH(1,1)",
}
_SCOPE_NAMES = {
    "all": "every held-out window",
    "real": "S&P 500, later time span",
    "sim": "held-out simulator worlds",
}
_VOL_SCOPE_NAMES = dict(VOL_SCOPES)


def render(regime: RegimeEvaluation, vol: VolEvaluation, quick: bool) -> str:
    """``docs/MODELS.md``: deterministic markdown of both evaluations."""
    lines: list[str] = [
        "# Models: held-out evaluation",
        "",
        "<!-- generated by `python -m models.evaluate` (riskstream evaluate); do not edit -->",
        "",
    ]
    if quick:
        lines += [
            "> **Quick run** (`--quick`): small spans for tests, not the shipped figures.",
            "",
        ]
    lines += [
        "Figures of the committed ONNX artifacts (loaded through `models.runtime.load_model`,"
        " which verifies their sha256), on data the models were not fitted on, beside their"
        " baselines.",
        "",
        *_table(
            ["model", "version", "sha256", "training data fingerprint"],
            [
                [
                    REGIME_MODEL,
                    regime.version,
                    f"`{regime.sha256[:16]}`",
                    f"`{fingerprint(regime.description)[:16]}`",
                ],
                [
                    VOL_MODEL,
                    vol.version,
                    f"`{vol.sha256[:16]}`",
                    f"`{fingerprint(vol.description)[:16]}`",
                ],
            ],
            "llll",
        ),
        "",
        "## Targets",
        "",
    ]
    for _, met, text in regime_targets(regime):
        lines.append(_target_line(met, text))
    for _, met, text in vol_targets(vol):
        lines.append(_target_line(met, text))
    lines += ["", "Reading the figures:", "", *regime_notes(regime), *vol_notes(vol)]
    lines += ["", *_regime_section(regime), "", *_vol_section(vol), "", *_howto(quick)]
    return "\n".join(lines).rstrip() + "\n"


def _regime_section(ev: RegimeEvaluation) -> list[str]:
    desc = ev.description
    simd = desc["simulator"]
    lines = [
        "## regime_tft: next-bar market regime",
        "",
        "A pytorch-forecasting `TemporalFusionTransformer` (hidden 64, 4 attention heads)"
        " reads a 32-bar window of the 15 market features (`models.market_features`) and of"
        " the rule-based labeler's causal label of each of those bars"
        " (`models.labeler.StreamingLabeler`, the same labels as the batch labeler, fitted on"
        " the real training span), and gives the probabilities of the 7 regimes for the bar"
        " after the window. The labels take 7 channels per bar: 1 on the bar's label plus 2"
        " on its *pending* label, the label the labeler's hysteresis would give the next bar"
        " if it looked like this one (a switch already due, e.g. when the minimum dwell ends"
        " while the stay clause fails; 3 when nothing is pending). Its logits start from"
        " persistence: the log of the training transition-matrix row P(label of t+1 |"
        " pending label of t) of the last bar is added to the TFT's output (trained end to"
        " end through that sum, the loss weighing the simulator and the S&P 500 windows"
        " equally). After training that output, the correction to persistence, is shrunk"
        " toward the prior: multiplied by the scale in [0, 1] with the lowest log-loss on the"
        " real validation span, where the targets are the labeler's own labels as on the"
        f" markets serving reads (`models.regime_tft.fit_correction_scale`;"
        f" {_f(ev.correction_scale, 2)} in this artifact). It serves as ONNX"
        " (`encoder_cont [B, 32, 22] -> probabilities [B, 7]`:"
        " 15 scaled features, then the 7 label channels).",
        "",
        "**Data and splits** (those of `models.regime_tft.build_splits`):"
        f" simulator paths with known regimes, training seeds {_seeds(simd['train_seeds'])}"
        f" ({simd['train_bars']} bars), validation {_seeds(simd['val_seeds'])}, test"
        f" {_seeds(simd['test_seeds'])} ({simd['eval_bars']} bars each: whole worlds the model"
        " never saw).",
    ]
    if "real" in desc:
        real = desc["real"]
        test_real = [s for s in desc["splits"]["test"] if s["series"] == "real-test"]
        span = " to ".join(test_real[0]["targets"]) if test_real else "-"
        lines[-1] += (
            " Real S&P 500 daily bars 1999-2018 labelled by the rule-based labeler (fitted on"
            f" the training span), split by date: training to {real['train_end']}, validation"
            f" to {real['val_end']}, test (the later held-out time span) {span}."
        )
    lines += [
        "",
        "**Baselines.** *Persistence* (the target): the next bar keeps the *observed* label"
        " of the window's last bar, the causal labeler's label at t, which serving computes"
        " from the same bars (on real bars it is the target's own labeler, so this is"
        " the usual persistence; in the simulator the targets are the latent true regimes);"
        " its probabilities for calibration and log-loss are the training row P(target |"
        " observed label) of that label"
        + (
            " (whose most likely entry is that label for every row)."
            if ev.persistence_argmax_is_current
            else " (for some rows the most likely entry is another regime; the prediction is"
            " still the label)."
        )
        + " *Pending label*: the labeler's pending label at t (causal, what the TFT's prior"
        " reads), calibrated the same way; shown to separate what the prior gives from what"
        " the TFT adds. *Oracle reference* (not a target): persistence of the latent true"
        " regime at t"
        " (simulator; on real bars the labeler's label), with the training transition row of"
        " that regime; serving never observes it."
        + " *Markov-switching*: statsmodels `MarkovRegression` (3 states, switching variance) on"
        " the index returns, fitted on the training returns of each source, test series"
        " filtered causally; the *filtered* state probabilities are mapped to the 7 regimes by"
        " the training co-occurrence P(regime of t+1 | state at t), as in training (start"
        " search seeded). *Labeler at t*: the observed label of the last bar, calibrated the"
        " same way (its most likely regime given the label; on real bars it is persistence)."
        " *Majority*: the training class frequencies.",
        "",
        "Metrics: macro-F1 averages the per-class F1 over the classes that occur in the"
        " truth or the predictions; ECE is the top-label expected calibration error over 10"
        " equal-width confidence bins; transition accuracy is the accuracy on windows whose"
        " target regime differs from the true regime of their last bar (the oracle reference"
        " scores 0 there by construction).",
        "",
    ]
    for scope, by_model in ev.scores.items():
        tft = by_model["tft"]
        lines += [
            f"### {_cap(_SCOPE_NAMES[scope])}: {tft.n} windows, {tft.n_transitions} regime changes",
            "",
            *_table(
                ["forecaster", "accuracy", "macro-F1", "ECE", "log-loss", "transition acc."],
                [
                    [
                        label,
                        _f(s.accuracy),
                        _f(s.macro_f1),
                        _f(s.ece),
                        _f(s.log_loss),
                        _f(s.transition_accuracy),
                    ]
                    for key, label in REGIME_FORECASTERS
                    for s in (by_model[key],)
                ],
            ),
            "",
        ]
    for scope, by_model in ev.scores.items():
        lines += [
            f"### TFT confusion matrix, {_SCOPE_NAMES[scope]} (rows: true, columns: predicted)",
            "",
            *_confusion_table(by_model["tft"].confusion),
            "",
        ]
    by_model = ev.scores["all"]
    lines += [
        "### Per-class F1, every held-out window",
        "",
        *_table(
            ["regime", "support", *(label.split(" (")[0] for _, label in REGIME_FORECASTERS)],
            [
                [
                    r.value,
                    str(int(np.sum(by_model["tft"].confusion[k]))),
                    *(_f(by_model[key].f1[k]) for key, _ in REGIME_FORECASTERS),
                ]
                for k, r in enumerate(REGIMES)
            ],
        ),
    ]
    return lines


def _confusion_table(conf: list[list[int]]) -> list[str]:
    short = [r.value.replace("_", " ").title().replace(" ", "")[:10] for r in REGIMES]
    rows = [[short[i], *(str(v) for v in row), str(sum(row))] for i, row in enumerate(conf)]
    totals = [str(sum(conf[i][j] for i in range(len(conf)))) for j in range(len(conf))]
    rows.append(["total", *totals, str(sum(map(sum, conf)))])
    return _table(["true \\ predicted", *short, "total"], rows)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _seeds(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}-{s[-1]}"
    return ", ".join(str(v) for v in s)


def _vol_section(ev: VolEvaluation) -> list[str]:
    desc = ev.description
    simd = desc["simulator"]
    splits = desc["splits"]
    lines = [
        "## vol_nbeats: log realized volatility of the next 5 bars, and the ensemble",
        "",
        "One global pytorch-forecasting `NBeats` (generic stack) reads the last"
        f" {desc['history']} trailing log realized vols of an instrument and forecasts the log"
        f" realized vol of the next {ev.h} bars (ONNX `history [B, {desc['history']}] ->"
        " forecast [B, 1]`"
        + (
            "; the graph includes the QLIKE calibration of `models.vol_nbeats.QlikeCalibration`,"
            " fitted on the validation span, which undoes the low variance bias of a log-vol"
            " forecast fitted for squared error)."
            if ev.calibration
            else ")."
        )
        + " The served ensemble blends it with EWMA(0.94) and the pooled"
        " GARCH(1,1) using per-regime simplex weights, mixed by the TFT's regime"
        " probabilities, and adds split-conformal intervals (per-regime quantiles of"
        " |log-vol residual| on a calibration span, half-width = probabilities @ quantiles).",
        "",
        "**Data and splits** (those of `models.vol_nbeats.build_table`): every instrument of"
        f" simulator worlds {_seeds(simd['time_split_seeds'])} ({simd['time_split_bars']} bars)"
        f" and the real series {', '.join(desc['real']['series'])}, each split in time at"
        f" {', '.join(f'{round(100 * f)} %' for f in splits)} into train / validation /"
        " calibration / test; plus whole held-out worlds (validation"
        f" {_seeds(simd['val_seeds'])}, calibration {_seeds(simd['cal_seeds'])}, test"
        f" {_seeds(simd['test_seeds'])}; {simd['heldout_bars']} bars). Everything below is on"
        " the test origins; within a table every forecaster is scored on the same origins."
        " The per-series GARCH fit needs a training span (and a fit that converges to a"
        " stationary model), so it appears only where it covers every origin.",
        "",
        "QLIKE = mean(s - log s - 1), s = realized variance of the next bars / forecast"
        " variance, where a log-vol forecast y_hat implies the variance exp(2 (y_hat - b)),"
        " b = E[log realized vol] - log sigma for Gaussian returns (so EWMA and GARCH are"
        " scored on their own variance forecasts). The served ensemble's regime probabilities"
        " are the TFT's (ONNX) at the origin's bar: the simulator world's market bars, or the"
        f" S&P 500 bars for the real series ({ev.regime_source['tft']} origins; the other"
        f" {ev.regime_source['prior']}, with no full TFT window yet or no S&P 500 bar within"
        f" {_STALE_DAYS} days, use the training prior). *True regime* blends by the"
        " simulator's regime at the origin (the prior on real series): the reference the"
        " training report used, not available when serving.",
        "",
    ]
    for scope, label in VOL_SCOPES:
        by_model = ev.scores[scope]
        n = by_model["nbeats"].n
        if n == 0:
            continue
        lines += [
            f"### {_cap(label)}: {n} origins",
            "",
            *_table(
                [
                    "forecaster",
                    "n",
                    "MSE log-vol",
                    "QLIKE",
                    "coverage 80/90/95",
                    "mean half-width 90",
                ],
                [
                    [
                        label_,
                        str(s.n),
                        _f(s.mse, 4),
                        _f(s.qlike, 4),
                        " / ".join(_f(s.coverage[c]) for c in ("80", "90", "95"))
                        if s.coverage
                        else "-",
                        _f(s.halfwidth.get("90", float("nan"))),
                    ]
                    for key, label_ in VOL_FORECASTERS
                    if key in by_model
                    for s in (by_model[key],)
                ],
            ),
            "",
        ]
    return lines


def _howto(quick: bool) -> list[str]:
    return [
        "## Regenerating",
        "",
        "```",
        "python -m models.evaluate          # or: riskstream evaluate",
        "python -m models.evaluate --quick  # small spans, for tests",
        "riskstream evaluate all --quick    # the same through the CLI",
        "```",
        "",
        "The command rebuilds the held-out spans with the training modules' own data builders"
        " and seeds, runs the ONNX artifacts from `models/artifacts/`, and rewrites this file;"
        " a full run also records the `eval_*` metrics and the `training_data_fingerprint`"
        " (sha256 of the canonical JSON `training_data` description stored beside it) in"
        " `models/artifacts/manifest.json`, without touching the artifacts or their sha256."
        " The output is deterministic: rerunning on the same artifacts gives the same file.",
    ]


# ---------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.evaluate [--quick] [--out PATH] [--no-manifest]``."""
    parser = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description="Evaluate the shipped ONNX models on held-out spans; write docs/MODELS.md.",
    )
    parser.add_argument("--quick", action="store_true", help="small spans for tests (< 60 s)")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    parser.add_argument(
        "--no-manifest", action="store_true", help="do not record metrics in the manifest"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the scores as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    regime = evaluate_regime(args.quick)
    log.info("regime_tft evaluated in %.1f s", time.perf_counter() - started)
    mark = time.perf_counter()
    vol = evaluate_vol(args.quick)
    log.info("vol_nbeats evaluated in %.1f s", time.perf_counter() - mark)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(regime, vol, args.quick))
    if args.json is not None:
        payload = {"regime_tft": asdict(regime), "vol_nbeats": asdict(vol)}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if not args.quick and not args.no_manifest:
        update_manifest(
            {
                REGIME_MODEL: (regime.sha256, regime_metrics(regime), regime.description),
                VOL_MODEL: (vol.sha256, vol_metrics(vol), vol.description),
            }
        )
        log.info("recorded eval_* metrics and fingerprints in %s", MANIFEST)
    for _, met, text in [*regime_targets(regime), *vol_targets(vol)]:
        print(f"{'met    ' if met else 'NOT MET'}  {text}")
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
