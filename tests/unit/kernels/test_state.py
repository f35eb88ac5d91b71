"""Every state class survives pickle and snapshot(), then continues exactly like the original."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import date
from typing import Any

import pandas as pd
import pytest

from operators.kernels import (
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    Amihud,
    AverageDailyVolume,
    BarBuilder,
    Bollinger,
    BondSpec,
    EwmaVariance,
    EwmaVol,
    FeatureConfig,
    GarmanKlassVol,
    HistoricalVaR,
    InstrumentFeatures,
    KernelState,
    ParametricVaR,
    ParkinsonVol,
    RealizedVol,
    RollingMoments,
    VolumeZScore,
    YieldCurve,
)

from ._helpers import same_values

S = 1_000_000_000
Row = tuple[int, float, float, float, float, float]  # ts, open, high, low, close, volume
Step = Callable[[Any, Row], object]


def close(s: Any, r: Row) -> object:
    return s.update(r[4]).get()


def ret(s: Any, r: Row) -> object:
    return s.update(r[4] / r[1] - 1.0).get()


def ohlc(s: Any, r: Row) -> object:
    return s.update(r[1], r[2], r[3], r[4]).get()


def tick4(s: Any, r: Row) -> object:
    """Feed the row as two ticks (open, close) of one event-time minute."""
    out = []
    for k, p in ((0, r[1]), (1, r[4])):
        res = s.add(r[0] + k * 20 * S, p, r[5] / 1e6, p - 0.01, p + 0.01)
        out.append(res)
    return out


def engine(s: Any, r: Row) -> object:
    s.on_tick(r[0], r[4] - 0.01, r[4] + 0.01, r[4], r[5] / 1e6, 0.05 + r[4] * 1e-6)
    return tuple(s.features().items())


BOND = BondSpec(0.05, date(2034, 1, 15), date(2024, 1, 15))
CURVE = YieldCurve((1.0, 10.0), (0.04, 0.05))

CASES: dict[str, tuple[Callable[[], KernelState], Step]] = {
    "RollingMoments": (lambda: RollingMoments(20, 4), lambda s, r: s.update(r[4]).moments(1)),
    "SMA": (lambda: SMA(10), close),
    "EMA": (lambda: EMA(10), close),
    "RSI": (lambda: RSI(14), close),
    "MACD": (lambda: MACD(12, 26, 9), close),
    "Bollinger": (lambda: Bollinger(20), close),
    "ATR": (lambda: ATR(14), lambda s, r: s.update(r[2], r[3], r[4]).get()),
    "EwmaVariance": (lambda: EwmaVariance(0.94), ret),
    "EwmaVariance_seeded": (lambda: EwmaVariance(0.94, backcast=1e-4), ret),
    "EwmaVol": (lambda: EwmaVol(0.97), ret),
    "RealizedVol": (lambda: RealizedVol(20), ret),
    "ParkinsonVol": (lambda: ParkinsonVol(20), ohlc),
    "GarmanKlassVol": (lambda: GarmanKlassVol(20), ohlc),
    "HistoricalVaR": (lambda: HistoricalVaR(50, 0.95, 10), ret),
    "ParametricVaR": (lambda: ParametricVaR(50, 0.99), ret),
    "CornishFisherVaR": (lambda: ParametricVaR(50, 0.95, 1, "cornish_fisher"), ret),
    "Amihud": (lambda: Amihud(20), lambda s, r: s.update(r[4] / r[1] - 1, r[4] * r[5]).get()),
    "VolumeZScore": (lambda: VolumeZScore(20), lambda s, r: s.update(r[5]).get()),
    "AverageDailyVolume": (lambda: AverageDailyVolume(5), lambda s, r: s.update(r[0], r[5]).get()),
    "BarBuilder": (lambda: BarBuilder(60 * S, 30 * S), tick4),
    "InstrumentFeatures": (
        lambda: InstrumentFeatures(
            FeatureConfig(bar_interval_ns=120 * S, lateness_ns=60 * S, bond=BOND, curve=CURVE)
        ),
        engine,
    ),
}


@pytest.fixture(scope="module")
def rows(sp500: pd.DataFrame) -> list[Row]:
    """S&P 500 OHLCV rows stamped every 6 hours of event time (4 rows per UTC day)."""
    cols = sp500[["Open", "High", "Low", "Close", "Volume"]].to_numpy()[:400]
    t0 = 1_700_006_400 * S  # a UTC midnight
    return [(t0 + k * 6 * 3600 * S, *map(float, c)) for k, c in enumerate(cols)]


def outputs(state: Any, step: Step, rows: list[Row]) -> list[object]:
    return [step(state, r) for r in rows]


def comparable(values: list[object]) -> tuple[object, ...]:
    return tuple(tuple(v) if isinstance(v, list | tuple) else (v,) for v in values)


@pytest.mark.parametrize("name", list(CASES))
def test_state_when_pickled_mid_stream_continues_exactly_like_the_original(name, rows):
    make, step = CASES[name]
    original = make()
    outputs(original, step, rows[:200])
    restored = pickle.loads(pickle.dumps(original))
    assert type(restored) is type(original)
    a = comparable(outputs(original, step, rows[200:]))
    b = comparable(outputs(restored, step, rows[200:]))
    assert same_values(a, b)


@pytest.mark.parametrize("name", list(CASES))
def test_snapshot_when_original_keeps_updating_stays_frozen(name, rows):
    make, step = CASES[name]
    original = make()
    outputs(original, step, rows[:200])
    snap = original.snapshot()
    frozen = pickle.dumps(snap)
    outputs(original, step, rows[200:260])
    assert pickle.dumps(snap) == frozen
    a = comparable(outputs(snap, step, rows[200:]))
    b = comparable(outputs(make_replayed(make, step, rows[:200]), step, rows[200:]))
    assert same_values(a, b)


def make_replayed(make: Callable[[], KernelState], step: Step, rows: list[Row]) -> KernelState:
    s = make()
    outputs(s, step, rows)
    return s
