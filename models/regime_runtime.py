"""Serving side of the regime model: NumPy and ONNX Runtime only (no torch import).

The dataflow keeps one :class:`~models.market_features.FeatureWindow` per market, and
for every batch of bar closes calls::

    model = load_model(MODEL_NAME)            # models.runtime: sha256-verified session
    proba = predict_proba(model, windows)     # windows: (B, ENCODER_LENGTH, F) raw features

``proba[i]`` holds the probabilities of the 7 regimes (model order of
:data:`~models.regimes.REGIMES`) for the bar after window ``i``'s last bar;
:func:`regime_summary` adds the entropy, the most likely regime and the coarse view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from models.market_features import MARKET_FEATURES
from models.regimes import REGIMES, Coarse, Regime, coarse_view

if TYPE_CHECKING:
    from models.runtime import LoadedModel

FloatArray = npt.NDArray[np.float64]

MODEL_NAME = "regime_tft"
"""Manifest name of the regime model."""
ENCODER_LENGTH = 32
"""Bars per input window."""
N_CLASSES = len(REGIMES)


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


def predict_proba(model: LoadedModel, windows: npt.ArrayLike) -> FloatArray:
    """Regime probabilities (B, 7), model order, of raw feature windows (B, T, F).

    ``windows`` are raw MARKET_FEATURES vectors, oldest first (what
    :class:`~models.market_features.FeatureWindow` returns); the manifest's scaling is
    applied here. One ONNX Runtime call for the whole batch.
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
    scaled = Scaling.from_dict(extra["scaling"]).apply(arr)
    probs = model.run({entry.inputs[0].name: scaled})[entry.outputs[0].name]
    return np.asarray(probs, dtype=np.float64)


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
