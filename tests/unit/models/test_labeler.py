from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from models.labeler import (
    PRIORITY,
    RULES,
    UNLABELLED,
    Condition,
    RegimeLabeler,
    StreamingLabeler,
    _rule_row,
    confusion_matrix,
    rule_matrix,
)
from models.market_features import (
    FEATURE_INDEX,
    MARKET_FEATURES,
    compute_features,
    market_bars_from_real,
    market_bars_from_sim,
)
from models.regimes import REGIMES, Regime
from models.simulator import MarketSimulator

# Seeds the thresholds were NOT tuned on (tuning used seeds 1-3).
EVAL_SEEDS = (21, 22, 23, 24)
N_BARS = 3000


@pytest.fixture(scope="module")
def sim_runs() -> list[tuple[np.ndarray, np.ndarray]]:
    runs = []
    for seed in EVAL_SEEDS:
        path = MarketSimulator(seed=seed).path(N_BARS)
        runs.append((compute_features(market_bars_from_sim(path)), path["regime_code"].to_numpy()))
    return runs


def test_labeler_when_run_on_simulated_paths_recovers_the_true_regimes(sim_runs) -> None:
    cm = np.zeros((len(REGIMES), len(REGIMES)), dtype=np.int64)
    for features, truth in sim_runs:
        labels = RegimeLabeler().label(features).labels
        cm += confusion_matrix(truth, labels)
    accuracy = np.trace(cm) / cm.sum()
    majority = cm.sum(axis=1).max() / cm.sum()
    recall = np.diag(cm) / cm.sum(axis=1)
    names = [r.value[:8] for r in REGIMES]
    print(
        f"\nlabeler vs truth, seeds {EVAL_SEEDS}: accuracy {accuracy:.3f}, majority {majority:.3f}"
    )
    print(pd.DataFrame(cm, index=names, columns=names).to_string())
    # measured: accuracy 0.754 against a majority baseline of 0.481
    assert accuracy >= 0.70
    assert accuracy >= majority + 0.2
    assert recall.min() >= 0.55, dict(zip(names, recall.round(2), strict=True))


def test_labeler_when_labelling_assigns_every_warm_bar_and_uses_the_fill(sim_runs) -> None:
    features, _ = sim_runs[0]
    result = RegimeLabeler().label(features)
    warm = np.isfinite(features).all(axis=1)
    assert (result.labels[warm] >= 0).all()
    assert (result.labels[~warm] == UNLABELLED).all()
    assert 0.2 < result.filled[warm].mean() < 0.7
    assert not (result.filled & result.confident).any()


def test_labeler_when_switching_keeps_every_regime_for_the_minimum_dwell(sim_runs) -> None:
    features, _ = sim_runs[1]
    for dwell in (1, 3, 6):
        labels = RegimeLabeler(min_dwell=dwell).label(features).labels
        labels = labels[labels >= 0]
        change = np.flatnonzero(np.diff(labels)) + 1
        runs = np.diff(np.r_[0, change, len(labels)])
        assert runs[:-1].min() >= dwell


def _neutral(n: int) -> np.ndarray:
    x = np.zeros((n, len(MARKET_FEATURES)))
    x[:, FEATURE_INDEX["vol_10"]] = 0.005
    x[:, FEATURE_INDEX["vol_60"]] = 0.005
    x[:, FEATURE_INDEX["rsi_14"]] = 50.0
    return x


def test_labeler_when_volatility_falls_between_thresholds_stays_in_risk_off() -> None:
    # calm, then vol above the entering threshold, then between leave (0.012) and enter
    # (0.016), then calm again: hysteresis holds VOL_RISK_OFF through the middle part.
    vol = np.r_[np.full(12, 0.005), np.full(12, 0.020), np.full(12, 0.013), np.full(12, 0.005)]
    x = _neutral(len(vol))
    x[:, FEATURE_INDEX["vol_10"]] = vol
    labels = RegimeLabeler(min_dwell=3, min_class_bars=5).label(x).labels
    calm, risk_off = Regime.CALM.code, Regime.VOL_RISK_OFF.code
    assert (labels[:12] == calm).all()
    assert (labels[12:36] == risk_off).all()
    assert (labels[36:] == calm).all()


def test_labeler_when_a_rule_fires_for_one_bar_does_not_switch_before_dwell() -> None:
    x = _neutral(30)
    x[10, FEATURE_INDEX["vol_10"]] = 0.02  # one spike right after a switch would be ignored
    x[1, FEATURE_INDEX["vol_10"]] = 0.02  # bar 1: still inside CALM's minimum dwell
    labels = RegimeLabeler(min_dwell=3, min_class_bars=1).label(x).labels
    assert labels[1] == Regime.CALM.code
    assert labels[10] == Regime.VOL_RISK_OFF.code  # after the dwell a rule switches at once


def test_condition_when_entering_is_looser_than_leaving_is_rejected() -> None:
    with pytest.raises(ValueError, match="stricter"):
        Condition("vol_10", ">=", 0.01, 0.02)
    with pytest.raises(ValueError, match="unknown feature"):
        Condition("nope", ">=", 1.0, 0.0)


def test_rules_when_listed_cover_every_regime_in_one_priority() -> None:
    assert set(RULES) == set(REGIMES)
    assert sorted(PRIORITY, key=lambda r: r.code) == list(REGIMES)
    x = _neutral(2)
    assert rule_matrix(x, entering=True)[:, Regime.CALM.code].all()


def test_confusion_matrix_when_labels_are_unknown_skips_them() -> None:
    cm = confusion_matrix([0, 1, 2, -1], [0, 2, 2, 3])
    assert cm.sum() == 3 and cm[1, 2] == 1 and cm[0, 0] == 1


def test_labeler_when_run_on_real_sp500_marks_2008_as_stress_and_2017_as_calm() -> None:
    bars = market_bars_from_real(start="2006-01-01", end="2017-12-31")
    labels = RegimeLabeler().label(compute_features(bars)).labels
    series = pd.Series(labels, index=bars.index)
    stress = {Regime.VOL_RISK_OFF.code, Regime.LIQUIDITY_CRISIS.code, Regime.CREDIT_SELLOFF.code}
    assert series["2008-10"].isin(stress).mean() > 0.9
    assert (series["2017"] == Regime.CALM.code).mean() > 0.6


# -- the streaming (serving) form -------------------------------------------------------


def test_streaming_labeler_when_fed_a_long_series_bar_by_bar_equals_the_batch_labels() -> None:
    features = compute_features(market_bars_from_sim(MarketSimulator(seed=31).path(6000)))
    labeler = RegimeLabeler().fit(features[:3000])  # fitted on the first half only
    batch = labeler.label(features)
    stream = labeler.streaming()
    got, pending = [], []
    for t, vector in enumerate(features):
        if t in (1500, 4321):  # the state survives a snapshot (pickle) mid-stream
            stream = pickle.loads(pickle.dumps(stream))
        label = stream.update(vector)
        got.append(label)
        pending.append(stream.pending if label != UNLABELLED else UNLABELLED)
    np.testing.assert_array_equal(np.array(got), batch.labels)
    np.testing.assert_array_equal(np.array(pending), batch.pending)
    # the pending label is the next bar's label whenever the switch is already due
    due = (batch.pending != batch.labels) & (batch.labels >= 0)
    assert due.sum() > 50
    assert np.mean(batch.labels[1:][due[:-1]] == batch.pending[:-1][due[:-1]]) > 0.5
    # the series exercises every part: warm-up, fill, rules in conflict, many switches
    assert (batch.labels == UNLABELLED).sum() > 0
    assert batch.filled.sum() > 100 and (batch.rule >= 0).sum() > 100
    assert (np.diff(batch.labels[batch.labels >= 0]) != 0).sum() > 200
    assert set(batch.labels[batch.labels >= 0].tolist()) == set(range(len(REGIMES)))


def test_streaming_labeler_when_a_vector_holds_nan_returns_unlabelled_and_keeps_state() -> None:
    features = compute_features(market_bars_from_sim(MarketSimulator(seed=32).path(400)))
    warm = features[np.isfinite(features).all(axis=1)]
    stream = RegimeLabeler().fit(warm).streaming()
    for vector in warm[:50]:
        stream.update(vector)
    before = (stream.current, stream.dwell)
    assert stream.update(np.full(len(MARKET_FEATURES), np.nan)) == UNLABELLED
    assert (stream.current, stream.dwell) == before


def test_labeler_when_saved_to_json_and_read_back_labels_the_same() -> None:
    import json

    features = compute_features(market_bars_from_real())
    labeler = RegimeLabeler().fit(features[:3000])
    back = RegimeLabeler.from_dict(json.loads(json.dumps(labeler.to_dict())))
    np.testing.assert_array_equal(back.label(features).labels, labeler.label(features).labels)
    assert isinstance(back.streaming(), StreamingLabeler)


def test_rule_row_when_compared_with_rule_matrix_agrees_on_every_bar(sim_runs) -> None:
    features, _ = sim_runs[1]
    warm = features[np.isfinite(features).all(axis=1)][:800]
    for entering in (True, False):
        matrix = rule_matrix(warm, entering)
        rows = np.array([_rule_row(v.tolist(), entering) for v in warm])
        np.testing.assert_array_equal(rows, matrix)
