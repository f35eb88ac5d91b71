"""MarketLogic: market bars, batched regime and vol inference, event-time determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastavro.validation import validate
from prometheus_client import REGISTRY

from export.manifest import ARTIFACTS
from models.market_features import compute_features, feature_windows
from models.regime_runtime import (
    ENCODER_LENGTH,
    INPUT_CHANNELS,
    labeler_from_extra,
    predict_proba,
)
from models.regimes import REGIMES
from models.runtime import LoadedModel, load_model
from models.simulator import MarketSimulator
from models.vol_ensemble import VolEnsemble
from operators.market import (
    INVALID_BAR,
    MISSING_INPUT,
    OK,
    UNAVAILABLE,
    WARMING_UP,
    MarketConfig,
    MarketLogic,
    MarketState,
    RegimeOut,
    RegimeUpdate,
    VolForecast,
)
from operators.records import Mark
from schemas.codec import load_schema

N_BARS = 130
"""Bars of the simulated path: the regime warms up at bar 92, the vol model at bar 76."""
WARM_BAR = 60 + ENCODER_LENGTH - 1
IDX, UST, IG = "SIM-IDX", "SIM-UST-10Y", "SIM-IG-7Y"

Marks = dict[str, list[Mark]]


# --- factories -------------------------------------------------------------------------------


def expected_proba(features: np.ndarray, ends: Any) -> np.ndarray:
    """What the shipped regime model gives for the windows ending at ``ends``: batch
    features and the batch labeler's labels (the market step computes both bar by bar)."""
    model = load_model("regime_tft")
    windows = feature_windows(features, ENCODER_LENGTH, ends)
    labeler = labeler_from_extra(model.entry.extra)
    if labeler is None:
        return predict_proba(model, windows)
    result = labeler.label(features)
    codes = np.stack([result.labels, result.pending], axis=-1)
    ends = np.asarray(ends)
    labels = codes[ends[:, None] + np.arange(-ENCODER_LENGTH + 1, 1)[None, :]]
    return predict_proba(model, windows, labels)


def marks_from_path(path: pd.DataFrame, ids: Iterable[str]) -> Marks:
    """Bar-close marks as the instrument step makes them, from a simulator path."""
    ends = path.index.asi8.tolist()
    out: Marks = {}
    for iid in ids:
        price = path[f"{iid}.price"].to_numpy(dtype=float)
        spread = path[f"{iid}.spread_bps"].to_numpy(dtype=float)
        volume = path[f"{iid}.volume"].to_numpy(dtype=float)
        col = f"{iid}.yield"
        yld = path[col].to_numpy(dtype=float) if col in path else np.full(len(path), np.nan)
        ret = np.r_[np.nan, np.diff(np.log(price))]
        var, marks = math.nan, []
        for t, ts in enumerate(ends):
            if t == 1:
                var = ret[1] ** 2
            elif t > 1:
                var = 0.94 * var + 0.06 * ret[t] ** 2
            marks.append(
                Mark(
                    iid,
                    ts,
                    float(price[t]),
                    0.0,
                    spread_bps=float(spread[t]),
                    volume=float(volume[t]),
                    bar_yield=float(yld[t]),
                    log_return=float(ret[t]),
                    ewma_var=var if t >= 10 else math.nan,
                )
            )
        out[iid] = marks
    return out


@pytest.fixture(scope="module")
def sim_path() -> tuple[pd.DataFrame, tuple[str, ...]]:
    sim = MarketSimulator(seed=11)
    return sim.path(N_BARS), sim.instrument_ids


@pytest.fixture(scope="module")
def marks(sim_path: tuple[pd.DataFrame, tuple[str, ...]]) -> Marks:
    path, ids = sim_path
    return marks_from_path(path, ids)


def in_order(marks: Marks) -> list[Mark]:
    """Bar by bar, instruments in simulator order."""
    rank = {iid: i for i, iid in enumerate(marks)}
    return sorted(
        (m for seq in marks.values() for m in seq),
        key=lambda m: (m.ts_event, rank[m.instrument_id]),
    )


def shuffled(marks: Marks, seed: int, lag: dict[str, int] | None = None) -> list[Mark]:
    """A random interleaving that keeps each instrument's order; ``lag`` delays instruments."""
    rng = random.Random(seed)
    keyed = []
    for iid, seq in marks.items():
        slip, key = 0.0, -math.inf
        for t, mark in enumerate(seq):
            slip = max(0.0, slip + rng.uniform(-1.5, 1.5))
            key = max(key + 1e-6, t + slip + (lag or {}).get(iid, 0))  # increasing: in order
            keyed.append((key, iid, t, mark))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def batches(items: list[Mark], seed: int | None) -> list[list[Mark]]:
    """One mark per batch (seed None) or random batch sizes of 1-40."""
    if seed is None:
        return [[m] for m in items]
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(items):
        k = rng.randint(1, 40)
        out.append(items[i : i + k])
        i += k
    return out


def run(logic: MarketLogic, groups: list[list[Mark]]) -> list[Any]:
    out: list[Any] = []
    for group in groups:
        items, _ = logic.on_batch(group)
        out.extend(items)
    return out


def logic(**config: Any) -> MarketLogic:
    return MarketLogic(MarketConfig(**config), None)


def comparable(outputs: list[Any]) -> list[str]:
    """Outputs as sorted text, wall-clock ``ts_decided`` dropped, floats exact (repr)."""
    rows = []
    for o in outputs:
        if isinstance(o, RegimeOut):
            rec = {k: v for k, v in o.record.items() if k != "ts_decided"}
            rows.append(f"event {json.dumps(rec, sort_keys=True)}")
        else:
            rows.append(f"{type(o).__name__} {dataclasses.astuple(o)!r}")
    return sorted(rows)


def of(kind: type, outputs: list[Any]) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def forecasts(outputs: list[Any]) -> list[VolForecast]:
    """Real volatility forecasts (not the NaN "none at this bar" markers)."""
    return [o for o in of(VolForecast, outputs) if o.version]


class CountingSession:
    """Wraps an ONNX Runtime session; records the shape of every call's input."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def run(self, names: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.shapes.append(next(iter(inputs.values())).shape)
        return self.inner.run(names, inputs)


def counting(model: LoadedModel | None) -> tuple[LoadedModel, CountingSession]:
    assert model is not None
    session = CountingSession(model.session)
    return LoadedModel(model.entry, session), session


def index_bars(marks: Marks) -> pd.DataFrame:
    """The market bars the step must build (all instruments mark every bar)."""
    return pd.DataFrame(
        {
            "index_close": [m.price for m in marks[IDX]],
            "rate": [m.bar_yield for m in marks[UST]],
            "credit_spread": [
                c.bar_yield - r.bar_yield for c, r in zip(marks[IG], marks[UST], strict=True)
            ],
            "spread_bps": [m.spread_bps for m in marks[IDX]],
            "volume": [m.volume for m in marks[IDX]],
        }
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- determinism -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(marks: Marks) -> list[Any]:
    return run(logic(), batches(in_order(marks), None))


def test_outputs_in_order_cover_every_bar_with_events_and_forecasts(
    marks: Marks, reference: list[Any]
) -> None:
    updates = of(RegimeUpdate, reference)
    assert [u.ts_event for u in updates] == [m.ts_event for m in marks[IDX]]
    events = of(RegimeOut, reference)
    assert len(events) == N_BARS - WARM_BAR
    assert all(u.probabilities == () and u.status == WARMING_UP for u in updates[:WARM_BAR])
    assert all(len(u.probabilities) == len(REGIMES) for u in updates[WARM_BAR:])
    every = of(VolForecast, reference)
    real = forecasts(reference)
    assert {f.instrument_id for f in real} == set(marks)
    assert all(0 < f.lo < f.vol < f.hi for f in real)
    # every instrument at every bar it reached: a forecast or a NaN "none at this bar"
    assert all(math.isnan(f.sigma) and not f.version for f in every if f not in real)
    reached = {(f.instrument_id, f.ts_event) for f in every}
    assert len(reached) == len(every)
    assert {ts for iid, ts in reached if iid == IDX} == {m.ts_event for m in marks[IDX]}


@pytest.mark.parametrize(
    ("seed", "lag"),
    [
        (1, None),
        (2, None),
        (3, {IG: 40}),  # the credit bond far behind: bars complete in bursts
        (4, {"SIM-EQ03": 90, UST: 7}),  # an equity 90 bars behind the market
    ],
)
def test_outputs_when_marks_interleave_differently_are_identical(
    marks: Marks, reference: list[Any], seed: int, lag: dict[str, int] | None
) -> None:
    out = run(logic(), batches(shuffled(marks, seed, lag), seed))

    assert comparable(out) == comparable(reference)


def test_state_pickled_mid_stream_when_resumed_gives_same_outputs(
    marks: Marks, reference: list[Any]
) -> None:
    groups = batches(shuffled(marks, 5, {IG: 12}), 5)
    first = logic()
    out = run(first, groups[: len(groups) // 2])
    snap = first.snapshot()
    assert isinstance(pickle.loads(snap), MarketState)

    resumed = MarketLogic(MarketConfig(), snap)
    out += run(resumed, groups[len(groups) // 2 :])

    assert comparable(out) == comparable(reference)
    assert resumed.state.model_status == {"regime_tft": OK, "vol_nbeats": OK}


def test_labeler_state_when_snapshotted_mid_stream_is_restored_with_the_window(
    marks: Marks,
) -> None:
    lg = logic()
    upto = marks[IDX][WARM_BAR + 10].ts_event
    run(lg, [[m] for m in in_order(marks) if m.ts_event <= upto])
    labeler = lg.state.window.labeler
    assert labeler is not None and labeler.current >= 0 and labeler.dwell >= 1

    resumed = MarketLogic(MarketConfig(), lg.snapshot())

    restored = resumed.state.window.labeler
    assert restored is not None
    assert (restored.current, restored.dwell) == (labeler.current, labeler.dwell)
    assert list(resumed.state.window._labels) == list(lg.state.window._labels)


def test_snapshot_from_before_labels_when_resumed_refills_the_labels_then_infers(
    marks: Marks,
) -> None:
    from models.market_features import FeatureWindow

    old = MarketState(window=FeatureWindow(ENCODER_LENGTH))  # type: ignore[arg-type]
    lg = MarketLogic(MarketConfig(), pickle.dumps(old))
    out = run(lg, batches(in_order(marks), None))
    updates = of(RegimeUpdate, out)
    assert all(len(u.probabilities) == len(REGIMES) for u in updates[WARM_BAR:])


# --- batching --------------------------------------------------------------------------------


def test_batch_of_k_ready_bars_makes_one_regime_call_and_one_vol_call(marks: Marks) -> None:
    k = 6
    lg = logic()
    held = marks[IG][-k:]
    run(
        lg, [[m] for m in in_order(marks) if m.instrument_id != IG or m.ts_event < held[0].ts_event]
    )
    lg.regime, regime_calls = counting(lg.regime)
    lg.vol, vol_calls = counting(lg.vol)

    out, _ = lg.on_batch(held)

    out = list(out)
    assert regime_calls.shapes == [(k, ENCODER_LENGTH, len(INPUT_CHANNELS))]
    assert vol_calls.shapes == [(k * len(marks), 64)]
    assert len(of(RegimeOut, out)) == k
    assert len(forecasts(out)) == k * len(marks)


def test_regime_probabilities_when_warm_sum_to_one_and_match_predict_proba(
    marks: Marks, reference: list[Any]
) -> None:
    features = compute_features(index_bars(marks))
    expected = expected_proba(features, np.arange(WARM_BAR, N_BARS))

    updates = [u for u in of(RegimeUpdate, reference) if u.probabilities]
    got = np.array([u.probabilities for u in updates])

    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    events = [o.record for o in of(RegimeOut, reference)]
    assert len(events) == len(updates)
    for event in events:
        total = math.fsum(p["probability"] for p in event["probabilities"])
        assert abs(total - 1.0) <= 1e-6
        assert len(event["probabilities"]) == len(REGIMES)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    assert [u.most_likely for u in updates] == [REGIMES[i].value for i in expected.argmax(1)]


@pytest.mark.parametrize("t", [80, 100])  # before the regime is warm (prior), and after
def test_vol_forecast_uses_the_instrument_history_up_to_its_bar_only(
    marks: Marks, reference: list[Any], t: int
) -> None:
    iid = "SIM-EQ02"
    ens = VolEnsemble.load()
    history, garch = ens.history_state(), ens.garch_state()
    for m in marks[iid][: t + 1]:
        history.update(m.log_return)
        garch.update(m.log_return)
    x = history.get()
    assert x is not None
    nbeats = load_model("vol_nbeats").run({"history": x[None, :]})["forecast"][:, 0]
    update = next(u for u in of(RegimeUpdate, reference) if u.ts_event == marks[iid][t].ts_event)
    prior = load_model("vol_nbeats").entry.extra["ensemble"]["prior"]
    probs = update.probabilities or [prior[r.value] for r in REGIMES]
    assert bool(update.probabilities) == (t >= WARM_BAR)
    vol, lo, hi = ens.forecast_batch(
        nbeats, [marks[iid][t].ewma_var], [garch.mean_var(ens.h)], np.array(probs)
    )

    got = next(
        f
        for f in forecasts(reference)
        if f.instrument_id == iid and f.ts_event == marks[iid][t].ts_event
    )

    assert (got.vol, got.lo, got.hi) == pytest.approx((vol[0], lo[0], hi[0]), rel=1e-12)


# --- market bars -----------------------------------------------------------------------------


def without(marks: Marks, iid: str, t: int) -> Marks:
    return {k: [m for i, m in enumerate(v) if not (k == iid and i == t)] for k, v in marks.items()}


def test_bar_when_rate_bond_skipped_it_carries_the_last_yield_once_a_later_mark_arrives(
    marks: Marks,
) -> None:
    t = WARM_BAR + 5
    lg = logic()
    gapped = without(marks, UST, t)
    out = run(lg, [[m] for m in in_order(gapped) if m.ts_event <= marks[IDX][t].ts_event])
    assert of(RegimeUpdate, out)[-1].ts_event == marks[IDX][t - 1].ts_event  # E not proven over

    out += run(lg, [[marks[UST][t + 1]]])

    assert of(RegimeUpdate, out)[-1].ts_event == marks[IDX][t].ts_event
    bars = index_bars(marks)
    bars.loc[t, "rate"] = bars.loc[t - 1, "rate"]
    bars.loc[t, "credit_spread"] = marks[IG][t].bar_yield - marks[UST][t - 1].bar_yield
    expected = expected_proba(compute_features(bars.iloc[: t + 1]), [t])[0]
    np.testing.assert_allclose(of(RegimeUpdate, out)[-1].probabilities, expected, atol=1e-12)


def test_bar_when_invalid_is_skipped_and_counted_and_the_flow_goes_on(marks: Marks) -> None:
    t = WARM_BAR + 3
    bad = dict(marks)
    bad[IDX] = list(marks[IDX])
    bad[IDX][t] = dataclasses.replace(marks[IDX][t], spread_bps=math.nan)
    lg = logic()

    out = run(lg, batches(in_order(bad), 7))

    updates = {u.ts_event: u for u in of(RegimeUpdate, out)}
    assert updates[marks[IDX][t].ts_event].status == INVALID_BAR
    assert updates[marks[IDX][t].ts_event].probabilities == ()
    assert updates[marks[IDX][-1].ts_event].status == OK
    assert lg.state.counts == {INVALID_BAR: 1}


def test_bars_when_credit_bond_never_marks_are_forced_after_max_pending_as_missing(
    marks: Marks,
) -> None:
    lg = logic(max_pending_bars=10)
    no_credit = [m for m in in_order(marks) if m.instrument_id != IG]

    out = run(lg, batches(no_credit, 3))

    updates = of(RegimeUpdate, out)
    assert len(updates) == N_BARS - 10
    assert {u.status for u in updates} == {MISSING_INPUT}
    assert lg.state.counts["forced_bars"] == N_BARS - 10
    assert lg.state.counts[MISSING_INPUT] == N_BARS - 10
    assert len(lg.state.pending) == 10


def test_breadth_ids_when_given_take_spread_and_volume_from_the_equities(
    sim_path: tuple[pd.DataFrame, tuple[str, ...]], marks: Marks
) -> None:
    path, ids = sim_path
    equities = tuple(i for i in ids if i.startswith("SIM-EQ"))
    lg = logic(breadth_ids=equities)

    out = run(lg, batches(shuffled(marks, 9), 9))

    bars = index_bars(marks)
    bars["spread_bps"] = path["spread_bps"].to_numpy()  # equity mean, as in training
    bars["volume"] = path["volume"].to_numpy()  # equity total
    expected = expected_proba(compute_features(bars), [N_BARS - 1])[0]
    last = max(of(RegimeUpdate, out), key=lambda u: u.ts_event)
    np.testing.assert_allclose(last.probabilities, expected, rtol=1e-9)


# --- records ---------------------------------------------------------------------------------


def test_regime_events_validate_against_the_avro_schema(reference: list[Any]) -> None:
    schema = load_schema("RegimeEvent")
    events = of(RegimeOut, reference)

    assert events
    for event in events:
        assert validate(event.record, schema, raise_errors=True)
        assert event.record["scope"] == "GLOBAL"
        assert event.record["ts_decided"] > 0
        assert 0.0 <= event.record["entropy"] <= math.log(len(REGIMES)) + 1e-9


# --- failures --------------------------------------------------------------------------------


def broken_artifacts(tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    for name in ("manifest.json", "regime_tft.onnx", "vol_nbeats.onnx"):
        shutil.copy(ARTIFACTS / name, tmp_path / name)
    damage(tmp_path)
    return tmp_path


def flip_bytes(d: Path) -> None:
    for name in ("regime_tft.onnx", "vol_nbeats.onnx"):
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / name).write_bytes(bytes(data))


def test_wrong_hash_artifacts_when_loaded_fail_safe_with_empty_updates(
    tmp_path: Path, marks: Marks
) -> None:
    artifacts = broken_artifacts(tmp_path, flip_bytes)
    before = {
        m: metric("riskstream_model_load_failures_total", model=m)
        for m in ("regime_tft", "vol_nbeats")
    }

    lg = logic(artifacts=artifacts)
    out = run(lg, batches(in_order(marks), 4))

    assert lg.state.model_status == {"regime_tft": UNAVAILABLE, "vol_nbeats": UNAVAILABLE}
    assert "refusing" in lg.state.model_errors["regime_tft"]
    for m, n in before.items():
        assert metric("riskstream_model_load_failures_total", model=m) == n + 1
    updates = of(RegimeUpdate, out)
    assert len(updates) == N_BARS
    assert all(u.probabilities == () and u.most_likely == "" for u in updates)
    assert {u.status for u in updates[WARM_BAR:]} == {UNAVAILABLE}
    assert not of(RegimeOut, out) and not forecasts(out)


def test_missing_vol_artifact_when_loaded_keeps_regime_and_drops_forecasts(
    tmp_path: Path, marks: Marks
) -> None:
    artifacts = broken_artifacts(tmp_path, lambda d: (d / "vol_nbeats.onnx").unlink())

    lg = logic(artifacts=artifacts)
    out = run(lg, batches(in_order(marks), 6))

    assert lg.state.model_status == {"regime_tft": OK, "vol_nbeats": UNAVAILABLE}
    assert len(of(RegimeOut, out)) == N_BARS - WARM_BAR
    assert not forecasts(out)


class Failing:
    def run(self, names: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("onnxruntime: boom")


def test_inference_error_when_model_raises_is_counted_and_later_bars_recover(
    marks: Marks,
) -> None:
    seq = in_order(marks)
    cut = (WARM_BAR + 5) * len(marks)
    lg = logic()
    run(lg, [[m] for m in seq[: cut - len(marks)]])
    good_regime, good_vol = lg.regime, lg.vol
    assert good_regime is not None and good_vol is not None
    lg.regime = LoadedModel(good_regime.entry, Failing())
    lg.vol = LoadedModel(good_vol.entry, Failing())
    before = metric("riskstream_model_load_failures_total", model="regime_tft")

    failed = run(lg, [seq[cut - len(marks) : cut]])

    assert [u.status for u in of(RegimeUpdate, failed)] == ["inference_failed"]
    assert not of(RegimeOut, failed) and not forecasts(failed)
    assert lg.state.model_status["regime_tft"] == "inference_failed"
    assert metric("riskstream_model_load_failures_total", model="regime_tft") == before + 1

    lg.regime, lg.vol = good_regime, good_vol
    recovered = run(lg, [seq[cut:]])
    assert {u.status for u in of(RegimeUpdate, recovered)} == {OK}
    assert forecasts(recovered)
    assert lg.state.model_status["regime_tft"] == OK


def test_instrument_behind_more_than_bar_retention_loses_those_forecasts_and_counts_them(
    marks: Marks, reference: list[Any]
) -> None:
    lg = logic(bar_retention=5)

    bar = marks[IDX][1].ts_event - marks[IDX][0].ts_event
    late = in_order(marks)
    late.sort(key=lambda m: m.ts_event + (20 * bar if m.instrument_id == "SIM-EQ03" else 0))

    out = run(lg, batches(late, 6))

    assert lg.state.counts["vol_bars_lost"] >= 1
    got = {f.ts_event for f in forecasts(out) if f.instrument_id == "SIM-EQ03"}
    full = {f.ts_event for f in forecasts(reference) if f.instrument_id == "SIM-EQ03"}
    assert got < full
    others = [o for o in out if not (isinstance(o, VolForecast) and o.instrument_id == "SIM-EQ03")]
    expected = [
        o for o in reference if not (isinstance(o, VolForecast) and o.instrument_id == "SIM-EQ03")
    ]
    assert comparable(others) == comparable(expected)


def test_regime_artifact_missing_when_vol_model_loads_forecasts_use_the_prior(
    tmp_path: Path, marks: Marks, reference: list[Any]
) -> None:
    artifacts = broken_artifacts(tmp_path, lambda d: (d / "regime_tft.onnx").unlink())

    lg = logic(artifacts=artifacts)
    out = run(lg, batches(in_order(marks), 8))

    assert lg.state.model_status == {"regime_tft": UNAVAILABLE, "vol_nbeats": OK}
    assert not of(RegimeOut, out)
    assert len(forecasts(out)) == len(forecasts(reference))
    warm = marks[IDX][WARM_BAR].ts_event
    before = [f for f in forecasts(reference) if f.ts_event < warm]
    assert comparable([f for f in forecasts(out) if f.ts_event < warm]) == comparable(before)
