from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from models.drift import (
    PsiMonitor,
    ReferenceHistogram,
    psi,
    psi_level,
    reference_histogram,
)


@pytest.fixture(scope="module")
def train_values() -> np.ndarray:
    return np.random.default_rng(0).normal(-4.5, 0.5, 50_000)


@pytest.fixture(scope="module")
def reference(train_values: np.ndarray) -> ReferenceHistogram:
    return reference_histogram(train_values)


def test_reference_histogram_when_continuous_has_deciles_of_ten_percent(
    reference: ReferenceHistogram,
) -> None:
    assert reference.n_bins == 10
    assert np.allclose(reference.expected, 0.1, atol=1e-3)
    assert sum(reference.expected) == pytest.approx(1.0)


def test_psi_when_same_values_as_training_is_zero(
    train_values: np.ndarray, reference: ReferenceHistogram
) -> None:
    assert reference.psi(train_values) == pytest.approx(0.0, abs=1e-12)


def test_psi_when_fresh_draws_of_same_distribution_is_near_zero(
    reference: ReferenceHistogram,
) -> None:
    live = np.random.default_rng(1).normal(-4.5, 0.5, 20_000)
    value = reference.psi(live)
    assert value < 0.01
    assert psi_level(value) == "stable"


def test_psi_when_shifted_by_one_sd_is_significant(reference: ReferenceHistogram) -> None:
    live = np.random.default_rng(2).normal(-4.0, 0.5, 20_000)
    value = reference.psi(live)
    assert value > 0.25
    assert psi_level(value) == "significant"


def test_psi_two_bins_matches_closed_form() -> None:
    ref = ReferenceHistogram(edges=(0.0,), expected=(0.5, 0.5))
    live = np.r_[np.full(80, -1.0), np.full(20, 1.0)]
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert ref.psi(live) == pytest.approx(expected, rel=1e-12)
    assert psi([0.5, 0.5], [80, 20]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.4158883, rel=1e-6)


def test_psi_when_live_bin_empty_is_large_and_finite() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value) and value > 3.0


@pytest.mark.parametrize(
    ("value", "level"),
    [(0.0, "stable"), (0.0999, "stable"), (0.1, "moderate"), (0.25, "moderate"),
     (0.2501, "significant"), (math.nan, "unknown")],
)  # fmt: skip
def test_psi_level_reads_standard_thresholds(value: float, level: str) -> None:
    assert psi_level(value) == level


def test_reference_histogram_when_ties_collapses_repeated_edges() -> None:
    values = np.r_[np.zeros(900), np.arange(1, 101, dtype=float)]
    ref = reference_histogram(values)
    assert len(ref.edges) < 9
    assert sum(ref.expected) == pytest.approx(1.0)
    assert ref.psi(values) == pytest.approx(0.0, abs=1e-12)


def test_bins_are_left_closed() -> None:
    ref = ReferenceHistogram(edges=(0.0, 1.0), expected=(0.2, 0.5, 0.3))
    assert ref.bin_of([-0.1, 0.0, 0.99, 1.0, 5.0]).tolist() == [0, 1, 1, 2, 2]


def test_monitor_when_updated_one_by_one_equals_batch_psi(
    reference: ReferenceHistogram,
) -> None:
    live = np.random.default_rng(3).normal(-4.2, 0.6, 3000)
    monitor = PsiMonitor({"x": reference})
    assert math.isnan(monitor.psi()["x"])
    for v in live:
        monitor.update({"x": float(v), "unknown": 1.0})
    assert monitor.psi()["x"] == pytest.approx(reference.psi(live), rel=1e-12)
    assert monitor.n() == {"x": 3000.0}


def test_monitor_with_decay_forgets_old_values(reference: ReferenceHistogram) -> None:
    rng = np.random.default_rng(4)
    monitor = PsiMonitor({"x": reference}, decay=0.99)
    for v in rng.normal(-3.0, 0.5, 2000):
        monitor.update({"x": float(v)})
    assert monitor.levels()["x"] == "significant"
    for v in rng.normal(-4.5, 0.5, 3000):
        monitor.update({"x": float(v)})
    assert monitor.psi()["x"] < 0.1
    assert monitor.n()["x"] == pytest.approx(100.0, rel=0.01)


def test_monitor_pickles_and_snapshots(reference: ReferenceHistogram) -> None:
    monitor = PsiMonitor({"x": reference}).update({"x": np.array([-4.0, -5.0, -4.4])})
    for copy in (pickle.loads(pickle.dumps(monitor)), monitor.snapshot()):
        assert copy.psi() == monitor.psi()
        copy.update({"x": -1.0})
        assert copy.psi() != monitor.psi()


def test_monitor_from_extra_and_export_to_gauge(reference: ReferenceHistogram) -> None:
    monitor = PsiMonitor.from_extra({"psi_reference": {"x": reference.to_dict()}})
    monitor.update({"x": [-4.5, -4.4, -4.6]})
    registry = CollectorRegistry()
    gauge = Gauge("model_input_psi", "PSI", ["model", "feature"], registry=registry)
    monitor.export(gauge, "vol_nbeats")
    got = registry.get_sample_value("model_input_psi", {"model": "vol_nbeats", "feature": "x"})
    assert got == pytest.approx(monitor.psi()["x"])


def test_reference_histogram_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shares"):
        ReferenceHistogram(edges=(0.0,), expected=(1.0,))
    with pytest.raises(ValueError, match="increase"):
        ReferenceHistogram(edges=(1.0, 0.0), expected=(0.3, 0.3, 0.4))
    with pytest.raises(ValueError, match="finite"):
        reference_histogram([math.nan])
