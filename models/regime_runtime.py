"""Serving side of the regime model: NumPy and ONNX Runtime only (no torch import).

The dataflow keeps one :class:`RegimeWindow` per market (the market features of the last
:data:`ENCODER_LENGTH` bars and the causal labels the rule-based labeler gave them, its
centroids read from the manifest: :func:`labeler_from_extra`), and for every batch of
bar closes calls::

    model = load_model(MODEL_NAME)                  # sha256-verified session
    proba = predict_proba(model, windows, labels)   # (B, T, F) features, (B, T, 2) codes

``proba[i]`` holds the probabilities of the 7 regimes (model order of
:data:`~models.regimes.REGIMES`) for the bar after window ``i``'s last bar;
:func:`regime_summary` adds the entropy, the most likely regime and the coarse view.

The ONNX input is ``encoder_cont [B, T, F + 7]``: the scaled features
(:class:`Scaling`) followed by 7 label channels per bar (:func:`encoder_input`): 1 on the
bar's label, plus 2 on its *pending* label (the label the labeler's hysteresis would give
the next bar if that bar looked like this one;
:attr:`~models.labeler.LabelResult.pending`), so 3 where no switch is pending. The
model's persistence prior reads the last bar's pending label (channels >= 2).
An artifact whose manifest has no ``label_channels`` (before labels were inputs) takes
the features alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from models.labeler import UNLABELLED, RegimeLabeler, StreamingLabeler
from models.market_features import MARKET_FEATURES, FeatureWindow, MarketFeatures
from models.regimes import REGIMES, Coarse, Regime, coarse_view

if TYPE_CHECKING:
    from models.runtime import LoadedModel

FloatArray = npt.NDArray[np.float64]

MODEL_NAME = "regime_tft"
"""Manifest name of the regime model."""
ENCODER_LENGTH = 32
"""Bars per input window."""
N_CLASSES = len(REGIMES)
LABEL_CHANNELS: tuple[str, ...] = tuple(f"label_{r.value.lower()}" for r in REGIMES)
"""One-hot channels of the labeler's label of each bar, after the features (model order)."""
INPUT_CHANNELS: tuple[str, ...] = (*MARKET_FEATURES, *LABEL_CHANNELS)
"""The last axis of the ONNX input ``encoder_cont``."""


@dataclass(frozen=True)
class Scaling:
    """Per-feature standardisation fitted on the training windows: (x - mean) / std, clipped."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float = 8.0

    @classmethod
    def fit(cls, features: FloatArray) -> Scaling:
        """Mean and std (floored at 1e-12) of the rows of ``features`` (n, F)."""
        std = np.maximum(features.std(axis=0), 1e-12)
        return cls(tuple(features.mean(axis=0).tolist()), tuple(std.tolist()))

    def apply(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Standardised float32 copy of ``x`` (last axis = features)."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape[-1] != len(self.mean):
            raise ValueError(
                f"scaling expects {len(self.mean)} features on the last axis, got {arr.shape}"
            )
        z = (arr - np.asarray(self.mean)) / np.asarray(self.std)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the manifest's ``extra["scaling"]``)."""
        return {"mean": list(self.mean), "std": list(self.std), "clip": self.clip}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scaling:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(raw["mean"]), tuple(raw["std"]), float(raw["clip"]))


PENDING_WEIGHT = 2.0
"""Value a bar's pending label adds to its channel (the bar's own label adds 1)."""


def label_channels(labels: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Label channels float32 (..., 7) of codes (..., 2): the bar's label, its pending label.

    Channel ``r`` is ``[label == r] + 2 [pending == r]``: 1 on the label, 2 on the pending
    label, 3 when they coincide. Codes must all be in 0..6.
    """
    codes = np.asarray(labels)
    if codes.ndim < 1 or codes.shape[-1] != 2:
        raise ValueError(f"labels must have a last axis of 2 (label, pending), got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= N_CLASSES):
        raise ValueError(f"labels must be regime codes 0..{N_CLASSES - 1} (none unlabelled)")
    eye = np.eye(N_CLASSES, dtype=np.float32)
    idx = codes.astype(np.int64)
    return np.asarray(eye[idx[..., 0]] + np.float32(PENDING_WEIGHT) * eye[idx[..., 1]])


def encoder_input(
    scaling: Scaling, windows: npt.ArrayLike, labels: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """The model input ``(B, T, F + 7)``: scaled features, then the label channels.

    ``labels`` (B, T, 2): each bar's label and pending label (:func:`label_channels`).
    """
    scaled = scaling.apply(windows)
    channels = label_channels(labels)
    if channels.shape[:-1] != scaled.shape[:-1]:
        raise ValueError(
            f"labels of shape {np.shape(labels)} do not match windows of shape {scaled.shape}"
        )
    return np.concatenate([scaled, channels], axis=-1)


def labeler_from_extra(extra: dict[str, Any]) -> RegimeLabeler | None:
    """The labeler whose labels the artifact reads (``extra["labeler"]``), None if it reads none."""
    raw = extra.get("labeler")
    return RegimeLabeler.from_dict(raw) if raw is not None else None


def reads_labels(model: LoadedModel) -> bool:
    """Does the artifact take the labeler's labels as inputs."""
    return bool(model.entry.extra.get("label_channels"))


def predict_proba(
    model: LoadedModel, windows: npt.ArrayLike, labels: npt.ArrayLike | None = None
) -> FloatArray:
    """Regime probabilities (B, 7), model order, of raw feature windows (B, T, F).

    ``windows`` are raw MARKET_FEATURES vectors, oldest first, and ``labels`` (B, T, 2)
    the labeler's causal label and pending label of each of those bars (what
    :class:`RegimeWindow` returns); the manifest's scaling is applied here. One ONNX
    Runtime call for the whole batch. ``labels`` is required by artifacts that read
    them, ignored otherwise.
    """
    entry = model.entry
    extra = entry.extra
    arr = np.asarray(windows, dtype=np.float64)
    length, names = int(extra["encoder_length"]), tuple(extra["features"])
    if arr.ndim != 3 or arr.shape[1:] != (length, len(names)):
        raise ValueError(
            f"{entry.name}: windows must have shape (batch, {length}, {len(names)}),"
            f" got {arr.shape}"
        )
    if names != MARKET_FEATURES:
        raise ValueError(f"{entry.name}: artifact features {names} differ from this code's")
    if not np.isfinite(arr).all():
        raise ValueError(f"{entry.name}: windows contain NaN or infinite values")
    scaling = Scaling.from_dict(extra["scaling"])
    if reads_labels(model):
        if tuple(extra["label_channels"]) != LABEL_CHANNELS:
            raise ValueError(f"{entry.name}: artifact label channels differ from this code's")
        if labels is None:
            raise ValueError(f"{entry.name}: this artifact needs the labels of the windows' bars")
        lab = np.asarray(labels)
        if lab.shape != (*arr.shape[:2], 2):
            raise ValueError(
                f"{entry.name}: labels must have shape {(*arr.shape[:2], 2)}, got {lab.shape}"
            )
        x = encoder_input(scaling, arr, lab)
    else:
        x = scaling.apply(arr)
    probs = model.run({entry.inputs[0].name: x})[entry.outputs[0].name]
    return np.asarray(probs, dtype=np.float64)


class RegimeWindow:
    """The regime model's inputs for one market, bar by bar: features and causal labels.

    ``update(bar)`` runs :class:`~models.market_features.MarketFeatures`, labels the new
    vector with the :class:`~models.labeler.StreamingLabeler` (same labels as the batch
    labeler used in training), and returns ``(features (T, F), labels (T, 2))`` (each
    bar's label and pending label), oldest first, once the last ``length`` bars all have
    both, else ``None``. Without a labeler (no model, or one that reads no labels) bars
    are labelled ``UNLABELLED`` and the features alone decide readiness (``need_labels``
    False). Picklable.
    """

    def __init__(self, length: int, labeler: StreamingLabeler | None = None) -> None:
        if length < 1:
            raise ValueError(f"RegimeWindow length must be >= 1, got {length}")
        self.length = length
        self.features = MarketFeatures()
        self.labeler = labeler
        self.need_labels = labeler is not None
        self._vectors: deque[FloatArray] = deque(maxlen=length)
        self._labels: deque[tuple[int, int]] = deque(maxlen=length)

    @classmethod
    def from_feature_window(cls, old: FeatureWindow) -> RegimeWindow:
        """The window of an older snapshot: its features kept, labels unknown until refilled."""
        new = cls(old.length)
        new.features = old.features
        new._vectors.extend(old._vectors)
        new._labels.extend([(UNLABELLED, UNLABELLED)] * len(old._vectors))
        return new

    def use_labeler(self, labeler: RegimeLabeler | None) -> None:
        """Label with ``labeler``'s centroids from now on (hysteresis state kept if any)."""
        if labeler is None:
            self.need_labels = False
            return
        fresh = labeler.streaming()
        if self.labeler is not None:
            fresh.current, fresh.dwell = self.labeler.current, self.labeler.dwell
            fresh.pending = self.labeler.pending
        self.labeler = fresh
        self.need_labels = True

    def update(self, bar: Mapping[str, float]) -> tuple[FloatArray, npt.NDArray[np.int64]] | None:
        """Add one market bar; the window and its labels, or ``None`` while not complete."""
        vector = self.features.update(bar)
        if vector is None:
            return None
        if self.labeler is not None:
            label = self.labeler.update(vector)
            self._labels.append((label, self.labeler.pending if label >= 0 else UNLABELLED))
        else:
            self._labels.append((UNLABELLED, UNLABELLED))
        self._vectors.append(vector)
        if len(self._vectors) < self.length:
            return None
        labels = np.array(self._labels, dtype=np.int64)
        if self.need_labels and labels.min() < 0:
            return None
        return np.stack(self._vectors), labels


@dataclass(frozen=True)
class RegimeSummary:
    """One window's regime view: probabilities, entropy, top regime, coarse view."""

    probabilities: tuple[float, ...]
    entropy: float
    """Shannon entropy in nats (0 = certain, ln 7 = uniform)."""
    regime: Regime
    coarse: Coarse


def regime_summary(probabilities: npt.ArrayLike) -> RegimeSummary:
    """Summary of one probability vector (7 values, model order)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (N_CLASSES,):
        raise ValueError(f"regime_summary needs {N_CLASSES} probabilities, got shape {p.shape}")
    entropy = -sum(float(v) * math.log(float(v)) for v in p if v > 0.0)
    return RegimeSummary(
        tuple(p.tolist()), entropy, REGIMES[int(np.argmax(p))], coarse_view(p.tolist())
    )
