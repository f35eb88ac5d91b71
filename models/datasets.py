"""Real market data that ships inside PyPI packages (``arch``), usable offline.

:func:`load_daily` returns tidy daily OHLCV frames; :func:`daily_to_records` turns one
into an Instrument record and MarketTick records at the real dates, so the same flow
that reads the simulator can read real history. No network, no files besides the ones
packaged with ``arch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

Record = dict[str, Any]

OHLCV = ("open", "high", "low", "close", "volume")

# Tick times inside a day (UTC): open, first extreme, second extreme, close. The US cash
# session is 14:30-21:00 UTC in winter (an hour earlier in summer time); only the order
# matters to a consumer.
_NS_PER_HOUR = 3_600_000_000_000
SESSION_OFFSETS_NS: tuple[int, int, int, int] = (
    _NS_PER_HOUR * 29 // 2,  # 14:30
    _NS_PER_HOUR * 33 // 2,  # 16:30
    _NS_PER_HOUR * 37 // 2,  # 18:30
    _NS_PER_HOUR * 21,  # 21:00
)
ADV_WINDOW = 20
"""Days at the start of a frame whose median volume becomes the Instrument's ADV."""


def _sp500() -> pd.DataFrame:
    import arch.data.sp500

    return arch.data.sp500.load()


def _nasdaq() -> pd.DataFrame:
    import arch.data.nasdaq

    return arch.data.nasdaq.load()


def _vix() -> pd.DataFrame:
    import arch.data.vix

    return arch.data.vix.load()


def _wti() -> pd.DataFrame:
    import arch.data.wti

    return arch.data.wti.load()


def _default() -> pd.DataFrame:
    import arch.data.default

    return arch.data.default.load()


# name -> (loader, close column when the source has no OHLCV, description)
_DAILY: dict[str, tuple[Callable[[], pd.DataFrame], str | None, str]] = {
    "sp500": (_sp500, None, "S&P 500 index daily OHLCV, 1999-2018"),
    "nasdaq": (_nasdaq, None, "NASDAQ Composite daily OHLCV, 1999-2018"),
    "vix": (_vix, "vix", "CBOE VIX daily close, 2014-2019"),
    "wti": (_wti, "DCOILWTICO", "WTI crude oil spot daily close, 1986-2019"),
}

DAILY_DATASETS: tuple[str, ...] = tuple(_DAILY)
"""Names :func:`load_daily` accepts."""


def describe_daily() -> dict[str, str]:
    """One-line description of every daily dataset, by name."""
    return {name: spec[2] for name, spec in _DAILY.items()}


def load_daily(name: str) -> pd.DataFrame:
    """Daily data set ``name`` as columns open/high/low/close/volume (float).

    Index: UTC midnight of each trading date, named ``date``, sorted and unique. Series
    with only a close (``vix``, ``wti``) repeat it as open/high/low and have NaN volume;
    days without a value are dropped.
    """
    spec = _DAILY.get(name)
    if spec is None:
        raise ValueError(
            f"unknown daily dataset {name!r}; valid names: {', '.join(DAILY_DATASETS)}"
        )
    loader, close_column, _ = spec
    raw = loader()
    frame = _tidy_ohlcv(raw) if close_column is None else _tidy_close(raw, close_column)
    return _with_utc_index(frame)


def load_corporate_yields() -> pd.DataFrame:
    """Moody's AAA and BAA corporate yields, monthly 1919-2018 (``arch.data.default``).

    Columns ``aaa``, ``baa`` and ``spread`` (BAA - AAA) as decimals (0.05 = 5 %); index
    UTC month start named ``date``. No daily credit series ships offline; this one
    anchors the level and range of the simulator's credit spread.
    """
    raw = _default()
    frame = pd.DataFrame(
        {"aaa": raw["AAA"].astype(float) / 100.0, "baa": raw["BAA"].astype(float) / 100.0}
    )
    frame["spread"] = frame["baa"] - frame["aaa"]
    return _with_utc_index(frame.dropna())


def _tidy_ohlcv(raw: pd.DataFrame) -> pd.DataFrame:
    """Lower-case OHLCV columns as floats (the adjusted close is dropped)."""
    columns = {c: c.lower() for c in raw.columns if c.lower() in OHLCV}
    return raw.rename(columns=columns)[list(OHLCV)].astype(float).dropna(subset=["close"])


def _tidy_close(raw: pd.DataFrame, column: str) -> pd.DataFrame:
    """A close-only series as flat OHLC bars with unknown (NaN) volume."""
    close = raw[column].astype(float).dropna()
    return pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": np.nan}
    )


def _with_utc_index(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame indexed by UTC dates named ``date``, sorted, duplicates dropped."""
    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    out = frame.set_axis(index.as_unit("ns").normalize().rename("date"), axis=0)
    out = out.sort_index()
    return out[~out.index.duplicated(keep="last")]


def daily_to_records(
    df: pd.DataFrame,
    instrument_id: str,
    *,
    symbol: str | None = None,
    asset_class: str = "INDEX",
    half_spread_bps: float = 1.0,
    default_size: float = 1.0,
    sector: str | None = None,
    currency: str = "USD",
    lot_size: float = 1.0,
) -> tuple[Record, Iterator[Record]]:
    """Instrument record and MarketTick records (4 per day) from daily OHLC(V).

    Each day ticks at the open (14:30 UTC), two extremes (16:30, 18:30) and the close
    (21:00): low before high on an up day (close >= open), high before low otherwise,
    the usual OHLC path assumption. ``last`` is the OHLC price; bid/ask sit
    ``half_spread_bps`` (synthetic: no quotes ship with the data) either side. ``size``
    is a quarter of the day's volume, or ``default_size`` when volume is unknown or 0.
    The Instrument is valid from the first date (00:00 UTC); its ADV is the median
    volume of the first ``ADV_WINDOW`` days (0.0 = unknown).
    """
    if half_spread_bps <= 0:
        raise ValueError(f"half_spread_bps must be > 0, got {half_spread_bps}")
    if default_size <= 0:
        raise ValueError(f"default_size must be > 0, got {default_size}")
    missing = [c for c in OHLCV[:4] if c not in df.columns]
    if missing:
        raise ValueError(f"daily_to_records needs columns {list(OHLCV[:4])}; missing {missing}")
    if df.empty:
        raise ValueError("daily_to_records got an empty frame")
    frame = _with_utc_index(df)
    prices = frame[list(OHLCV[:4])].to_numpy(dtype=float)
    if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
        raise ValueError(f"{instrument_id}: OHLC prices must be finite and > 0")
    volume = (
        frame["volume"].to_numpy(dtype=float) if "volume" in frame else np.full(len(frame), np.nan)
    )
    days_ns = frame.index.as_unit("ns").asi8
    instrument = _instrument_record(
        instrument_id, symbol or instrument_id, asset_class, currency, sector, lot_size,
        adv=_adv(volume), ts_event=int(days_ns[0]),
    )  # fmt: skip
    ticks = _ticks(instrument_id, days_ns, prices, volume, half_spread_bps, default_size)
    return instrument, ticks


def _adv(volume: np.ndarray) -> float:
    """Median positive volume over the first ``ADV_WINDOW`` days, or 0.0 if none."""
    head = volume[:ADV_WINDOW]
    known = head[np.isfinite(head) & (head > 0)]
    return float(np.median(known)) if len(known) else 0.0


def _instrument_record(
    instrument_id: str,
    symbol: str,
    asset_class: str,
    currency: str,
    sector: str | None,
    lot_size: float,
    *,
    adv: float,
    ts_event: int,
) -> Record:
    """Instrument record for a real daily series (no bond fields)."""
    return {
        "instrument_id": instrument_id, "symbol": symbol, "asset_class": asset_class,
        "currency": currency, "sector": sector, "issuer": None, "rating": None,
        "coupon": None, "coupon_frequency": None, "day_count": None, "maturity": None,
        "face_value": 1.0, "lot_size": float(lot_size), "adv": adv, "ts_event": ts_event,
    }  # fmt: skip


def _ticks(
    instrument_id: str,
    days_ns: np.ndarray,
    ohlc: np.ndarray,
    volume: np.ndarray,
    half_spread_bps: float,
    default_size: float,
) -> Iterator[Record]:
    """Four ticks per day in event-time order."""
    o, h, lo, c = ohlc.T
    up = c >= o
    path = np.column_stack([o, np.where(up, lo, h), np.where(up, h, lo), c]).ravel()
    ts = (days_ns[:, None] + np.array(SESSION_OFFSETS_NS, dtype=np.int64)).ravel()
    quarter = volume / 4.0
    size = np.repeat(np.where(np.isfinite(quarter) & (quarter > 0), quarter, default_size), 4)
    half = half_spread_bps * 1e-4
    bid, ask = path * (1.0 - half), path * (1.0 + half)
    for t, b, a, last, s in zip(
        ts.tolist(), bid.tolist(), ask.tolist(), path.tolist(), size.tolist(), strict=True
    ):
        yield {
            "instrument_id": instrument_id, "ts_event": t, "bid": b, "ask": a, "last": last,
            "size": s, "yield": None, "venue": None,
        }  # fmt: skip
