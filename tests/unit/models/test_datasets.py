from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.datasets import (
    DAILY_DATASETS,
    SESSION_OFFSETS_NS,
    daily_to_records,
    describe_daily,
    load_corporate_yields,
    load_daily,
)
from tests.unit.models.avro import assert_valid


@pytest.fixture(scope="module")
def sp500() -> pd.DataFrame:
    return load_daily("sp500")


def _frame(rows: list[tuple[str, float, float, float, float, float]]) -> pd.DataFrame:
    index = pd.DatetimeIndex([r[0] for r in rows])
    cols = ["open", "high", "low", "close", "volume"]
    return pd.DataFrame([r[1:] for r in rows], index=index, columns=cols)


@pytest.mark.parametrize("name", DAILY_DATASETS)
def test_load_daily_when_name_known_returns_tidy_ohlcv(name: str) -> None:
    df = load_daily(name)
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert all(dtype == np.float64 for dtype in df.dtypes)
    assert str(df.index.tz) == "UTC" and df.index.name == "date"
    assert df.index.is_monotonic_increasing and df.index.is_unique
    assert len(df) > 1000
    assert df[["open", "high", "low", "close"]].notna().all().all()
    assert (df["high"] >= df["low"]).all()
    assert name in describe_daily()


def test_load_daily_when_sp500_loaded_spans_1999_to_2018(sp500: pd.DataFrame) -> None:
    assert sp500.index[0] == pd.Timestamp("1999-01-04", tz="UTC")
    assert sp500.index[-1] == pd.Timestamp("2018-12-31", tz="UTC")
    assert (sp500["volume"] > 0).all()


def test_load_daily_when_name_unknown_raises_value_error_naming_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown daily dataset 'ftse'.*sp500, nasdaq, vix, wti"):
        load_daily("ftse")


def test_load_corporate_yields_when_loaded_gives_decimal_yields_and_positive_spread() -> None:
    df = load_corporate_yields()
    assert list(df.columns) == ["aaa", "baa", "spread"]
    assert df["aaa"].between(0.01, 0.2).all()
    assert (df["spread"] > 0).all()
    assert df.index[0] == pd.Timestamp("1919-01-01", tz="UTC")


def test_daily_to_records_when_converting_sp500_gives_valid_sorted_ticks(
    sp500: pd.DataFrame,
) -> None:
    instrument, ticks = daily_to_records(sp500, "SPX", symbol="^GSPC")
    records = list(ticks)
    assert_valid("Instrument", [instrument])
    assert_valid("MarketTick", records[:2000])
    assert len(records) == 4 * len(sp500)
    ts = np.array([t["ts_event"] for t in records])
    assert np.all(np.diff(ts) > 0)
    assert instrument["ts_event"] <= ts[0]
    assert instrument["asset_class"] == "INDEX" and instrument["adv"] > 0
    first_day = pd.Timestamp("1999-01-04", tz="UTC").value
    assert ts[0] == first_day + SESSION_OFFSETS_NS[0]
    assert records[3]["last"] == sp500["close"].iloc[0]
    assert all(t["bid"] < t["last"] < t["ask"] for t in records)


@pytest.mark.parametrize(
    ("row", "path"),
    [
        (("2020-03-02", 10.0, 12.0, 9.0, 11.0, 400.0), [10.0, 9.0, 12.0, 11.0]),  # up: low first
        (("2020-03-02", 10.0, 12.0, 9.0, 9.5, 400.0), [10.0, 12.0, 9.0, 9.5]),  # down: high first
    ],
)
def test_daily_to_records_when_day_direction_known_orders_extremes(
    row: tuple[str, float, float, float, float, float], path: list[float]
) -> None:
    _, ticks = daily_to_records(_frame([row]), "X", half_spread_bps=5.0)
    records = list(ticks)
    assert [t["last"] for t in records] == path
    assert [t["size"] for t in records] == [100.0] * 4
    assert records[0]["ask"] == pytest.approx(10.0 * 1.0005)
    day = pd.Timestamp(row[0], tz="UTC").value
    assert [t["ts_event"] - day for t in records] == list(SESSION_OFFSETS_NS)


def test_daily_to_records_when_volume_unknown_uses_default_size() -> None:
    instrument, ticks = daily_to_records(load_daily("vix"), "VIX", default_size=2.0)
    first = next(ticks)
    assert first["size"] == 2.0
    assert instrument["adv"] == 0.0


@pytest.mark.parametrize(
    ("df", "kwargs", "message"),
    [
        (pd.DataFrame({"close": [1.0]}, index=pd.DatetimeIndex(["2020-01-02"])), {}, "missing"),
        (_frame([("2020-01-02", 1.0, 1.0, -1.0, 1.0, 1.0)]), {}, "finite and > 0"),
        (_frame([("2020-01-02", 1.0, 1.0, 1.0, 1.0, 1.0)]), {"half_spread_bps": 0.0}, "half"),
        (_frame([]), {}, "empty"),
    ],
)
def test_daily_to_records_when_input_invalid_raises_value_error(
    df: pd.DataFrame, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        daily_to_records(df, "X", **kwargs)  # type: ignore[arg-type]
