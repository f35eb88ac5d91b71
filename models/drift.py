"""Population stability index (PSI) of live model inputs against their training distribution.

Bins are fixed once, from the training data: the deciles are the inner edges (repeated
deciles collapse, so a feature with ties has fewer bins), the outer bins are open. The
reference histogram is the share of training values per bin, stored with the model
(``extra.psi_reference`` of the manifest entry). Live values are counted into the same
bins and

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e_i``, ``a_i`` the expected (training) and actual (live) shares, each floored at
``EPS`` so that an empty bin gives a large, finite term. Standard reading: < 0.1 stable,
0.1-0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

EPS = 1e-4
"""Floor on bin shares inside the PSI sum."""
STABLE, MODERATE = 0.1, 0.25
"""PSI thresholds of the standard reading."""


def psi_level(value: float) -> str:
    """``stable`` (< 0.1), ``moderate`` (0.1-0.25), ``significant`` (> 0.25) or ``unknown``."""
    if not math.isfinite(value):
        return "unknown"
    if value < STABLE:
        return "stable"
    return "moderate" if value <= MODERATE else "significant"


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, eps: float = EPS) -> float:
    """PSI of two share (or count) vectors over the same bins; each is normalised first."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError(f"psi: need two non-empty count vectors of one shape: {e}, {a}")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class ReferenceHistogram:
    """Inner bin edges and the training share per bin (``len(edges) + 1`` bins)."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]

    def __post_init__(self) -> None:
        """Check that shapes agree and edges increase."""
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"edges must increase: {self.edges}")

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return len(self.expected)

    def bin_of(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Bin index of each value: bin ``i`` is ``[edges[i-1], edges[i])``."""
        idx = np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=np.float64), "right")
        return np.asarray(idx, dtype=np.int64)

    def counts(self, values: npt.ArrayLike) -> FloatArray:
        """Counts per bin of the finite ``values``."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        return np.bincount(self.bin_of(v), minlength=self.n_bins).astype(np.float64)

    def psi(self, values: npt.ArrayLike) -> float:
        """PSI of ``values`` against this reference (NaN when there are none)."""
        counts = self.counts(values)
        return psi(self.expected, counts) if counts.sum() > 0 else math.nan

    def to_dict(self) -> dict[str, list[float]]:
        """JSON form (manifest ``extra``)."""
        return {"edges": list(self.edges), "expected": list(self.expected)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ReferenceHistogram:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(x) for x in raw["edges"]), tuple(float(x) for x in raw["expected"]))


def reference_histogram(values: npt.ArrayLike, n_bins: int = 10) -> ReferenceHistogram:
    """Quantile bins of the finite training ``values`` (deciles by default) and their shares."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("reference_histogram: no finite values")
    inner = np.quantile(v, np.arange(1, n_bins) / n_bins)
    edges = tuple(float(x) for x in np.unique(inner))
    counts = np.bincount(np.searchsorted(edges, v, "right"), minlength=len(edges) + 1)
    return ReferenceHistogram(edges, tuple(float(c) for c in counts / v.size))


class PsiMonitor:
    """Running PSI of several live inputs; ``update(...) -> self``, ``psi()`` per feature.

    Counts are cumulative, or exponentially forgotten with ``decay``: every new value
    multiplies the old counts of its feature by ``decay``, an effective window of about
    ``1 / (1 - decay)`` values. The window counts values, not bars: for B instruments per
    bar and a window of W bars use ``decay = 1 - 1 / (B * W)``. Windows much shorter than
    a few hundred bars read regime swings (autocorrelated inputs) as drift.
    """

    __slots__ = ("counts", "decay", "references")

    def __init__(
        self, references: Mapping[str, ReferenceHistogram], decay: float | None = None
    ) -> None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"PsiMonitor: decay must be in (0, 1), got {decay}")
        self.references = dict(references)
        self.decay = decay
        self.counts = {k: np.zeros(r.n_bins) for k, r in self.references.items()}

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], decay: float | None = None) -> PsiMonitor:
        """From a manifest entry's ``extra["psi_reference"]``."""
        refs = {k: ReferenceHistogram.from_dict(v) for k, v in extra["psi_reference"].items()}
        return cls(refs, decay)

    def update(self, values: Mapping[str, float | npt.ArrayLike]) -> Self:
        """Count live values by feature name (scalars or arrays; NaN and unknown names skipped)."""
        for name, value in values.items():
            ref = self.references.get(name)
            if ref is None:
                continue
            new = ref.counts(value)
            if self.decay is not None:
                self.counts[name] *= self.decay ** new.sum()
            self.counts[name] += new
        return self

    def n(self) -> dict[str, float]:
        """(Effective) number of values counted per feature."""
        return {k: float(c.sum()) for k, c in self.counts.items()}

    def psi(self) -> dict[str, float]:
        """PSI per feature; NaN for a feature with no values yet."""
        return {
            k: psi(self.references[k].expected, c) if c.sum() > 0 else math.nan
            for k, c in self.counts.items()
        }

    def levels(self) -> dict[str, str]:
        """:func:`psi_level` per feature."""
        return {k: psi_level(v) for k, v in self.psi().items()}

    def export(self, gauge: Any, model: str) -> None:
        """Set a prometheus ``Gauge`` labelled ``(model, feature)`` to each PSI value."""
        for feature, value in self.psi().items():
            gauge.labels(model=model, feature=feature).set(value)

    def snapshot(self) -> PsiMonitor:
        """A deep copy (Bytewax state snapshot)."""
        out = PsiMonitor(self.references, self.decay)
        out.counts = {k: c.copy() for k, c in self.counts.items()}
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"references": self.references, "decay": self.decay, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.references = state["references"]
        self.decay = state["decay"]
        self.counts = state["counts"]
