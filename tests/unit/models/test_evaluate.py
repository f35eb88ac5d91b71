"""models.evaluate: metric functions against hand-computed values, the quick report, the
manifest update (artifact untouched), and the CLI entry."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.manifest import ARTIFACTS, MANIFEST, load_manifest, sha256_file
from models import evaluate as ev
from models import vol_ensemble as ve
from models.runtime import ArtifactError, load_model

# -- classification metrics -------------------------------------------------------------


def test_macro_f1_when_given_a_small_confusion_table_matches_hand_computation() -> None:
    # rows: true class, columns: predicted
    conf = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    # class 0: TP 5, FP 2, FN 1 -> 10/13; class 1: TP 3, FP 1, FN 3 -> 6/10;
    # class 2: TP 4, FP 1, FN 0 -> 8/9
    expected = (10 / 13 + 6 / 10 + 8 / 9) / 3
    assert ev.per_class_f1(conf) == pytest.approx([10 / 13, 0.6, 8 / 9])
    assert ev.macro_f1(conf) == pytest.approx(expected)
    assert ev.accuracy_of(conf) == pytest.approx(12 / 16)


def test_macro_f1_when_a_class_is_absent_or_only_predicted_follows_sklearn() -> None:
    from sklearn.metrics import f1_score

    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 3, 2, 2, 0])  # class 3 predicted, never true; 4 unused
    conf = ev.confusion_matrix(truth, pred, n=5)
    f1 = ev.per_class_f1(conf)
    assert f1[3] == 0.0  # predicted but never true: counts, as 0
    assert math.isnan(f1[4])  # neither true nor predicted: left out of the mean
    assert ev.macro_f1(conf) == pytest.approx(f1_score(truth, pred, average="macro"))


def test_confusion_matrix_when_classes_are_out_of_range_raises() -> None:
    with pytest.raises(ValueError):
        ev.confusion_matrix([0, 7], [0, 1])


def test_ece_when_each_bin_holds_one_row_is_the_mean_gap() -> None:
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45], [0.3, 0.7]])
    target = np.array([0, 1, 0, 1])  # right, wrong, right, right
    # bins 9, 8, 5, 7, one row each: |1-.9|, |0-.8|, |1-.55|, |1-.7|
    assert ev.expected_calibration_error(proba, target) == pytest.approx(1.65 / 4)


def test_ece_when_a_bin_is_calibrated_is_zero_and_weights_bins_by_count() -> None:
    calibrated = np.tile([0.75, 0.25], (4, 1))
    assert ev.expected_calibration_error(calibrated, np.array([0, 0, 0, 1])) == pytest.approx(0)
    # bin 6: conf .62 (right) and .68 (wrong): |0.5 - 0.65| on 2 of 3 rows; bin 9: 1.0, right
    proba = np.array([[0.62, 0.38], [0.68, 0.32], [1.0, 0.0]])
    got = ev.expected_calibration_error(proba, np.array([0, 1, 0]))
    assert got == pytest.approx(2 / 3 * 0.15)


def test_transition_accuracy_counts_only_windows_where_the_regime_changes() -> None:
    current = np.array([0, 0, 1, 1, 2])
    target = np.array([0, 1, 1, 2, 2])  # changes at 1 (0->1) and 3 (1->2)
    pred = np.array([0, 1, 0, 1, 2])  # right at 1, wrong at 3
    assert ev.transition_mask(current, target).tolist() == [False, True, False, True, False]
    assert ev.transition_accuracy(pred, current, target) == pytest.approx(0.5)
    assert ev.transition_accuracy(current, current, target) == 0.0  # persistence
    assert math.isnan(ev.transition_accuracy(pred, target, target))


def test_classifier_scores_when_predictions_are_forced_use_them() -> None:
    proba = np.array([[0.6, 0.4], [0.6, 0.4]])
    scores = ev.ClassifierScores.of(proba, np.array([1, 1]), np.array([1, 0]), np.array([1, 1]))
    assert scores.accuracy == 1.0
    assert scores.transition_accuracy == 1.0
    assert scores.n_transitions == 1


# -- volatility metrics -----------------------------------------------------------------


def test_qlike_when_forecast_equals_truth_is_zero_and_closed_form_otherwise() -> None:
    v = np.array([1e-4, 4e-4, 2.5e-5])
    assert ev.qlike(v, v) == 0.0
    assert ev.qlike_terms(v, v) == pytest.approx(np.zeros(3))
    # s = 2: 2 - ln 2 - 1; s = 1/2: 1/2 + ln 2 - 1 (under-forecasts cost more)
    assert ev.qlike([2.0], [1.0]) == pytest.approx(1.0 - math.log(2.0))
    assert ev.qlike([1.0], [2.0]) == pytest.approx(math.log(2.0) - 0.5)
    assert ev.qlike([2.0], [1.0]) > ev.qlike([1.0], [2.0])


def test_variance_from_logvol_inverts_the_baselines_log_vol_forecast() -> None:
    var = np.array([1e-6, 1e-4, 9e-4])
    back = ev.variance_from_logvol(ve.logvol_from_var(var, 5), 5)
    assert back == pytest.approx(var + ve.VOL_FLOOR**2, rel=1e-12)
    y = np.log(np.array([0.01, 0.02]))
    assert ev.realized_variance(y) == pytest.approx([1e-4, 4e-4])


def test_mse_is_the_mean_squared_difference() -> None:
    assert ev.mse([1.0, 2.0], [0.0, 4.0]) == pytest.approx(2.5)


# -- fingerprints -----------------------------------------------------------------------


def test_fingerprint_is_order_free_and_changes_with_the_data() -> None:
    a = {"seeds": [1, 2], "rows": {"train": 10, "test": 3}}
    b = {"rows": {"test": 3, "train": 10}, "seeds": [1, 2]}
    assert ev.fingerprint(a) == ev.fingerprint(b)
    assert ev.fingerprint(a) != ev.fingerprint({**a, "rows": {"train": 11, "test": 3}})
    assert len(ev.fingerprint(a)) == 64


def test_arch_data_files_hashes_the_shipped_csv() -> None:
    files = ev.arch_data_files(["sp500"])
    assert list(files) == ["arch.data.sp500/sp500.csv.gz"]
    assert len(files["arch.data.sp500/sp500.csv.gz"]) == 64


# -- manifest update --------------------------------------------------------------------


@pytest.fixture
def artifact_copy(tmp_path: Path) -> Path:
    for name in ("manifest.json", "regime_tft.onnx", "vol_nbeats.onnx"):
        shutil.copy(ARTIFACTS / name, tmp_path / name)
    return tmp_path


def test_update_manifest_when_recorded_keeps_the_artifact_and_loads(artifact_copy: Path) -> None:
    manifest = artifact_copy / "manifest.json"
    before = load_manifest(manifest)["regime_tft"]
    desc = {"model": "regime_tft", "rows": 3}
    old_eval = {k: v for k, v in before.metrics.items() if k.startswith(ev.EVAL_PREFIX)}
    ev.update_manifest(
        {"regime_tft": (before.sha256, {"eval_macro_f1": 0.5}, desc)}, manifest, artifact_copy
    )
    after = load_manifest(manifest)["regime_tft"]
    assert (after.sha256, after.file, after.version) == (before.sha256, before.file, before.version)
    assert sha256_file(artifact_copy / after.file) == after.sha256
    assert after.metrics["eval_macro_f1"] == 0.5
    assert set(after.metrics) - {"eval_macro_f1"} == set(before.metrics) - set(old_eval)
    assert after.extra["training_data_fingerprint"] == ev.fingerprint(desc)
    assert after.extra["training_data"] == desc
    assert after.extra["scaling"] == before.extra["scaling"]
    model = load_model("regime_tft", manifest=manifest, artifacts=artifact_copy)
    assert model.entry.metrics["eval_macro_f1"] == 0.5


def test_update_manifest_when_the_artifact_changed_refuses(artifact_copy: Path) -> None:
    manifest = artifact_copy / "manifest.json"
    raw = manifest.read_text()
    with pytest.raises(ArtifactError):
        ev.update_manifest({"vol_nbeats": ("0" * 64, {}, {})}, manifest, artifact_copy)
    assert manifest.read_text() == raw


# -- the quick report -------------------------------------------------------------------


def test_quick_run_writes_every_table_and_leaves_the_manifest_alone(tmp_path: Path) -> None:
    manifest_before = MANIFEST.read_bytes()
    out, scores = tmp_path / "MODELS.md", tmp_path / "scores.json"
    assert ev.main(["--quick", "--out", str(out), "--json", str(scores)]) == 0
    assert MANIFEST.read_bytes() == manifest_before
    text = out.read_text()
    for heading in (
        "## Targets",
        "## regime_tft: next-bar market regime",
        "### Every held-out window",
        "### S&P 500, later time span",
        "### Held-out simulator worlds",
        "### TFT confusion matrix, every held-out window",
        "### Per-class F1, every held-out window",
        "## vol_nbeats:",
        "### Later time span",
        "### Held-out simulator worlds (every origin)",
        "### Real series, later time span",
        "### All test origins",
        "## Regenerating",
    ):
        assert heading in text, heading
    for label in (
        "TFT (ONNX, shipped)",
        "Persistence",
        "Markov-switching",
        "EWMA(0.94)",
        "GARCH(1,1), per-series fit (arch)",
        "N-BEATS (ONNX, shipped)",
        "Ensemble, TFT regime probabilities (as served)",
    ):
        assert label in text, label
    for header in (
        "| forecaster | accuracy | macro-F1 | ECE | log-loss | transition acc. |",
        "| forecaster | n | MSE log-vol | QLIKE | coverage 80/90/95 |",
    ):
        assert header in text
    payload = json.loads(scores.read_text())
    tft = payload["regime_tft"]["scores"]["all"]["tft"]
    assert 0.0 <= tft["macro_f1"] <= 1.0 and 0.0 <= tft["ece"] <= 1.0
    assert sum(map(sum, tft["confusion"])) == tft["n"] > 0
    later = payload["vol_nbeats"]["scores"]["later_span"]
    assert later["ensemble"]["coverage"]["90"] > 0.5
    assert all(math.isfinite(s["qlike"]) and s["qlike"] >= 0 for s in later.values())


def test_quick_report_is_deterministic(tmp_path: Path) -> None:
    first = ev.render(*_small_evaluations(), quick=True)
    second = ev.render(*_small_evaluations(), quick=True)
    assert first == second


def _small_evaluations() -> tuple[ev.RegimeEvaluation, ev.VolEvaluation]:
    proba = np.array([[0.7, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0], [0.1, 0.6, 0.1, 0.1, 0.1, 0, 0]])
    target, current = np.array([0, 0]), np.array([0, 1])
    scores = ev.ClassifierScores.of(proba, target, current)
    regime = ev.RegimeEvaluation(
        scores={"all": {k: scores for k, _ in ev.REGIME_FORECASTERS}},
        spans={},
        description={
            "simulator": {
                "train_seeds": [1],
                "val_seeds": [2],
                "test_seeds": [3],
                "train_bars": 10,
                "eval_bars": 10,
            }
        },
        persistence_argmax_is_current=True,
        sha256="a" * 64,
        version="1.0.0",
    )
    vs = ev.VolScores(n=2, mse=0.1, qlike=0.2, coverage={"80": 0.8, "90": 0.9, "95": 0.95})
    vol = ev.VolEvaluation(
        scores={scope: {k: vs for k, _ in ev.VOL_FORECASTERS} for scope, _ in ev.VOL_SCOPES},
        description={
            "history": 64,
            "splits": [0.6, 0.75, 0.85],
            "real": {"series": ["sp500"]},
            "simulator": {
                "time_split_seeds": [1],
                "time_split_bars": 10,
                "val_seeds": [],
                "cal_seeds": [],
                "test_seeds": [9],
                "heldout_bars": 10,
            },
        },
        regime_source={"tft": 2, "prior": 0},
        sha256="b" * 64,
        version="1.0.0",
        h=5,
    )
    return regime, vol


# -- CLI --------------------------------------------------------------------------------


def test_model_cli_when_evaluate_is_given_routes_to_models_evaluate() -> None:
    from dataflows.model_cli import PIPELINES, add_model_parsers

    parser = argparse.ArgumentParser()
    add_model_parsers(parser.add_subparsers(dest="command"))
    bare = parser.parse_args(["evaluate"])
    assert PIPELINES[(bare.command, bare.model)] == "models.evaluate"
    assert bare.rest == []
    quick = parser.parse_args(["evaluate", "all", "--quick"])
    assert quick.rest == ["--quick"]
    assert parser.parse_args(["train", "regime", "--quick"]).model == "regime"
    with pytest.raises(SystemExit):
        parser.parse_args(["train"])


# -- persistence: observed label (the target) and latent truth (oracle reference) --------


def test_persistence_baseline_when_observed_reads_the_labeler_label_and_oracle_the_truth() -> None:
    from types import SimpleNamespace

    truth = np.array([0, 0, 1, 1, 1, 2, 2, 0, 0, 0])
    seen = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 0])  # the labeler lags one bar
    ends = np.arange(0, 9)
    train = [SimpleNamespace(name="a", source="sim", labels=truth, observed=seen, ends=ends)]
    test = [SimpleNamespace(name="b", source="sim", labels=truth, observed=seen, ends=ends)]
    observed = ev.persistence_baseline(train, test)["b"]
    oracle = ev.persistence_baseline(train, test, observed=False)["b"]
    np.testing.assert_allclose(observed, ev.transition_probabilities(train)[seen[ends]])
    np.testing.assert_allclose(oracle, ev.transition_probabilities(train, False)[truth[ends]])
    np.testing.assert_allclose(observed.sum(axis=1), 1.0)
    assert not np.allclose(observed, oracle)


def test_regime_targets_when_the_oracle_is_best_compare_with_observed_persistence() -> None:
    regime, _ = _small_evaluations()
    by_model = dict(regime.scores["all"])
    good = ev.ClassifierScores.of(np.eye(7)[[0, 0]], np.array([0, 0]), np.array([0, 0]))
    weak = ev.ClassifierScores.of(np.eye(7)[[1, 0]], np.array([0, 0]), np.array([0, 0]))
    by_model.update(tft=good, persistence=weak, markov=weak, oracle=good)
    regime.scores["all"] = by_model
    ((scope, met, text),) = ev.regime_targets(regime)
    assert scope == "all" and met
    assert "persistence 0.333" in text
    assert "Oracle reference" in ev.render(*_small_evaluations(), quick=True)
