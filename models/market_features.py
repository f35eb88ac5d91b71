"""Market-level features of the regime model: one definition for training and serving.

A **market bar** is one mapping per bar (about one trading day) with the keys of
:data:`MARKET_BAR_KEYS`:

============== ================================================================
index_close    close of the equity index (> 0)
rate           10-year government yield, decimal (0.04 = 4 %)
credit_spread  corporate minus government yield, decimal
spread_bps     mean quoted bid/ask spread of the equities, bps (> 0)
volume         total equity volume of the bar (> 0)
============== ================================================================

:class:`MarketFeatures` turns bars into the feature vector of :data:`MARKET_FEATURES`,
one bar at a time, with constant work per bar; training runs the very same class over
historical bars (:func:`compute_features`), so the model sees in production exactly
what it saw in training. Features (``r`` = log return of ``index_close``; windows
count bars and include the current one; std is the population std, ddof 0):

============== ================================================================
ret_1          r
ret_5          ln(close / close 5 bars ago)
mom_20         ln(close / close 20 bars ago): momentum
vol_10         sqrt(mean(r^2)) over 10 bars: short realized volatility
vol_60         sqrt(mean(r^2)) over 60 bars: long realized volatility
vol_ratio      ln(vol_10 / vol_60): volatility level against its recent past
vol_chg_5      ln(vol_10 / vol_10 five bars ago): volatility change
drawdown       ln(close / highest close of the last 250 bars) (<= 0)
credit_chg_5   credit_spread change over 5 bars, bps
credit_chg_20  credit_spread change over 20 bars, bps
rate_chg_5     rate change over 5 bars, bps
rate_chg_20    rate change over 20 bars, bps
spread_z       (mean of ln spread_bps over 5 bars - mean over 120) / std over 120
volume_z       the same for ln volume
rsi_14         Wilder RSI of the closes, 0..100 (TA-Lib seeding: mean of the first 14
               changes); 50 when there was no change at all
============== ================================================================

The 120-bar baselines of ``spread_z``/``volume_z`` use what is there once 60 bars are
(a partial window up to 120), and a std below 1e-9 gives z = 0. The vector is
NaN-free from bar :data:`WARMUP_BARS` - 1 on (index 60: the first bar with 60 returns);
:meth:`MarketFeatures.update` returns ``None`` before that.

Adapters: :func:`market_bars_from_sim` (simulator paths) and
:func:`market_bars_from_real` (S&P 500 daily from ``arch``; see its docstring for what
is proxied or derived, since no daily rates or credit spreads ship offline).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd

from operators.errors import RiskstreamError

MARKET_BAR_KEYS: tuple[str, ...] = ("index_close", "rate", "credit_spread", "spread_bps", "volume")
"""Keys of one market bar."""

MARKET_FEATURES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "mom_20",
    "vol_10",
    "vol_60",
    "vol_ratio",
    "vol_chg_5",
    "drawdown",
    "credit_chg_5",
    "credit_chg_20",
    "rate_chg_5",
    "rate_chg_20",
    "spread_z",
    "volume_z",
    "rsi_14",
)
"""Feature names, in the order of the vector :meth:`MarketFeatures.update` returns."""

FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(MARKET_FEATURES)}

VOL_SHORT, VOL_LONG, VOL_CHG = 10, 60, 5
MOM_SHORT, MOM_LONG = 5, 20
PEAK_WINDOW = 250
CHG_SHORT, CHG_LONG = 5, 20
Z_SHORT, Z_LONG, Z_MIN = 5, 120, 60
RSI_PERIOD = 14
WARMUP_BARS = VOL_LONG + 1
"""Bars seen before the first feature vector (the 61st bar gives the first one)."""

_BPS = 1e4
_MIN_STD = 1e-9

FloatArray = npt.NDArray[np.float64]


class MarketFeatureError(RiskstreamError):
    """A market bar lacks a key or carries a value the features cannot use."""


# ---------------------------------------------------------------------------------------
# Running statistics


class RollingMeanStd:
    """Mean and population std of the last ``window`` values, O(1) per update.

    Sums are kept about a shift (the first value seen) and recomputed exactly from the
    window every ``window`` updates, so rounding cannot build up over long runs.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"RollingMeanStd window must be >= 1, got {window}")
        self.window = window
        self._values: deque[float] = deque(maxlen=window)
        self._shift = 0.0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._since_exact = 0

    @property
    def name(self) -> str:
        return f"rolling_mean_std_{self.window}"

    def __len__(self) -> int:
        return len(self._values)

    def update(self, x: float) -> RollingMeanStd:
        """Add ``x``, dropping the oldest value once the window is full."""
        if not self._values:
            self._shift = x
        if len(self._values) == self.window:
            old = self._values[0] - self._shift
            self._sum -= old
            self._sum_sq -= old * old
        self._values.append(x)
        d = x - self._shift
        self._sum += d
        self._sum_sq += d * d
        self._since_exact += 1
        if self._since_exact >= self.window:
            self._recompute()
        return self

    def _recompute(self) -> None:
        self._shift = self._values[0]
        deltas = [v - self._shift for v in self._values]
        self._sum = math.fsum(deltas)
        self._sum_sq = math.fsum(d * d for d in deltas)
        self._since_exact = 0

    def mean(self) -> float:
        """Mean of the window (NaN when empty)."""
        n = len(self._values)
        return self._shift + self._sum / n if n else math.nan

    def std(self) -> float:
        """Population std of the window (NaN when empty)."""
        n = len(self._values)
        if not n:
            return math.nan
        m = self._sum / n
        return math.sqrt(max(self._sum_sq / n - m * m, 0.0))


class RollingMax:
    """Largest of the last ``window`` values (monotonic deque: amortised O(1))."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"RollingMax window must be >= 1, got {window}")
        self.window = window
        self._count = 0
        self._candidates: deque[tuple[int, float]] = deque()

    @property
    def name(self) -> str:
        return f"rolling_max_{self.window}"

    def update(self, x: float) -> RollingMax:
        """Add ``x``."""
        while self._candidates and self._candidates[-1][1] <= x:
            self._candidates.pop()
        self._candidates.append((self._count, x))
        if self._candidates[0][0] <= self._count - self.window:
            self._candidates.popleft()
        self._count += 1
        return self

    def get(self) -> float:
        """Current maximum (NaN before the first value)."""
        return self._candidates[0][1] if self._candidates else math.nan


class WilderRSI:
    """Wilder RSI, seeded like TA-Lib: the mean gain and loss of the first ``period`` changes."""

    def __init__(self, period: int = RSI_PERIOD) -> None:
        self.period = period
        self._prev: float | None = None
        self._changes = 0
        self._gain = 0.0
        self._loss = 0.0

    @property
    def name(self) -> str:
        return f"rsi_{self.period}"

    def update(self, close: float) -> WilderRSI:
        """Add one close."""
        if self._prev is not None:
            change = close - self._prev
            gain, loss = max(change, 0.0), max(-change, 0.0)
            self._changes += 1
            if self._changes <= self.period:
                self._gain += gain / self.period
                self._loss += loss / self.period
            else:
                n = self.period
                self._gain = (self._gain * (n - 1) + gain) / n
                self._loss = (self._loss * (n - 1) + loss) / n
        self._prev = close
        return self

    def get(self) -> float:
        """RSI in 0..100 once ``period`` changes were seen, else NaN; 50 when flat."""
        if self._changes < self.period:
            return math.nan
        total = self._gain + self._loss
        return 50.0 if total <= 0.0 else 100.0 * self._gain / total


# ---------------------------------------------------------------------------------------
# The feature state


class MarketFeatures:
    """Incremental market features: ``update(bar)`` gives the vector of MARKET_FEATURES.

    Plain Python state (deques and floats): it pickles, and :meth:`snapshot` is a deep
    copy, so it can live in Bytewax keyed state.
    """

    def __init__(self) -> None:
        self.bars = 0
        self._closes: deque[float] = deque(maxlen=MOM_LONG + 1)
        self._rates: deque[float] = deque(maxlen=CHG_LONG + 1)
        self._credit: deque[float] = deque(maxlen=CHG_LONG + 1)
        self._sq_short = RollingMeanStd(VOL_SHORT)
        self._sq_long = RollingMeanStd(VOL_LONG)
        self._vol_short_hist: deque[float] = deque(maxlen=VOL_CHG + 1)
        self._peak = RollingMax(PEAK_WINDOW)
        self._spread_short = RollingMeanStd(Z_SHORT)
        self._spread_long = RollingMeanStd(Z_LONG)
        self._volume_short = RollingMeanStd(Z_SHORT)
        self._volume_long = RollingMeanStd(Z_LONG)
        self._rsi = WilderRSI(RSI_PERIOD)

    @property
    def warm(self) -> bool:
        """True once :meth:`update` returns vectors."""
        return self.bars >= WARMUP_BARS

    def snapshot(self) -> MarketFeatures:
        """Deep copy of the state."""
        return copy.deepcopy(self)

    def update(self, bar: Mapping[str, float]) -> FloatArray | None:
        """Add one market bar; the feature vector, or ``None`` while warming up."""
        close, rate, credit, spread, volume = _check_bar(bar, self.bars)
        if self._closes:
            r = math.log(close / self._closes[-1])
            self._sq_short.update(r * r)
            self._sq_long.update(r * r)
            self._vol_short_hist.append(math.sqrt(self._sq_short.mean()))
        self._closes.append(close)
        self._rates.append(rate)
        self._credit.append(credit)
        self._peak.update(close)
        log_spread, log_volume = math.log(spread), math.log(volume)
        self._spread_short.update(log_spread)
        self._spread_long.update(log_spread)
        self._volume_short.update(log_volume)
        self._volume_long.update(log_volume)
        self._rsi.update(close)
        self.bars += 1
        return self._vector() if self.warm else None

    def _vector(self) -> FloatArray:
        closes = self._closes
        vol_s = math.sqrt(self._sq_short.mean())
        vol_l = math.sqrt(self._sq_long.mean())
        hist = self._vol_short_hist
        values = (
            math.log(closes[-1] / closes[-2]),
            math.log(closes[-1] / closes[-1 - MOM_SHORT]),
            math.log(closes[-1] / closes[-1 - MOM_LONG]),
            vol_s,
            vol_l,
            _log_ratio(vol_s, vol_l),
            _log_ratio(hist[-1], hist[-1 - VOL_CHG]),
            math.log(closes[-1] / self._peak.get()),
            _BPS * (self._credit[-1] - self._credit[-1 - CHG_SHORT]),
            _BPS * (self._credit[-1] - self._credit[-1 - CHG_LONG]),
            _BPS * (self._rates[-1] - self._rates[-1 - CHG_SHORT]),
            _BPS * (self._rates[-1] - self._rates[-1 - CHG_LONG]),
            _zscore(self._spread_short, self._spread_long),
            _zscore(self._volume_short, self._volume_long),
            self._rsi.get(),
        )
        return np.array(values, dtype=np.float64)


class FeatureWindow:
    """The last ``length`` feature vectors of one market: the regime model's input window.

    ``update(bar)`` runs :class:`MarketFeatures` and returns the window (length, F),
    oldest first, once ``length`` warm vectors exist (bar WARMUP_BARS + length - 1 on),
    else ``None``. Picklable, like its parts.
    """

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"FeatureWindow length must be >= 1, got {length}")
        self.length = length
        self.features = MarketFeatures()
        self._vectors: deque[FloatArray] = deque(maxlen=length)

    def snapshot(self) -> FeatureWindow:
        """Deep copy of the state."""
        return copy.deepcopy(self)

    def update(self, bar: Mapping[str, float]) -> FloatArray | None:
        """Add one market bar; the window, or ``None`` while fewer than ``length`` vectors."""
        vector = self.features.update(bar)
        if vector is None:
            return None
        self._vectors.append(vector)
        if len(self._vectors) < self.length:
            return None
        return np.stack(self._vectors)


def _log_ratio(a: float, b: float) -> float:
    """ln(a / b), 0 when either is 0 (no movement at all)."""
    return math.log(a / b) if a > 0.0 and b > 0.0 else 0.0


def _zscore(short: RollingMeanStd, long: RollingMeanStd) -> float:
    std = long.std()
    return (short.mean() - long.mean()) / std if std > _MIN_STD else 0.0


def _check_bar(bar: Mapping[str, float], position: int) -> tuple[float, ...]:
    """The bar's values in MARKET_BAR_KEYS order, or MarketFeatureError naming the culprit."""
    values = []
    for key in MARKET_BAR_KEYS:
        if key not in bar:
            raise MarketFeatureError(f"market features: bar {position} has no {key!r}")
        value = float(bar[key])
        positive = key in ("index_close", "spread_bps", "volume")
        if not math.isfinite(value) or (positive and value <= 0.0):
            need = "finite and > 0" if positive else "finite"
            raise MarketFeatureError(
                f"market features: bar {position} has {key}={value!r}; it must be {need}"
            )
        values.append(value)
    return tuple(values)


def compute_features(bars: pd.DataFrame | Iterable[Mapping[str, float]]) -> FloatArray:
    """Run :class:`MarketFeatures` over ``bars``: shape (n_bars, n_features), NaN rows in warm-up.

    ``bars`` is a frame with the MARKET_BAR_KEYS columns or an iterable of bar mappings.
    """
    rows = _bar_rows(bars)
    state = MarketFeatures()
    out = np.full((len(rows), len(MARKET_FEATURES)), np.nan)
    for i, bar in enumerate(rows):
        vector = state.update(bar)
        if vector is not None:
            out[i] = vector
    return out


def _bar_rows(bars: pd.DataFrame | Iterable[Mapping[str, float]]) -> list[Mapping[str, float]]:
    if isinstance(bars, pd.DataFrame):
        missing = [k for k in MARKET_BAR_KEYS if k not in bars.columns]
        if missing:
            raise MarketFeatureError(f"market features: bar frame lacks columns {missing}")
        columns = [bars[k].to_numpy(dtype=float).tolist() for k in MARKET_BAR_KEYS]
        return [dict(zip(MARKET_BAR_KEYS, row, strict=True)) for row in zip(*columns, strict=True)]
    return list(bars)


def feature_windows(features: FloatArray, length: int, last: npt.ArrayLike) -> FloatArray:
    """Windows of ``length`` bars ending at each position of ``last``: (len(last), length, F).

    This is how serving builds the TFT input too: the last ``length`` feature vectors of
    the market, oldest first.
    """
    ends = np.asarray(last, dtype=np.int64)
    if np.any(ends < length - 1) or np.any(ends >= len(features)):
        raise ValueError(f"windows of {length} bars need ends in [{length - 1}, {len(features)})")
    offsets = np.arange(-length + 1, 1)
    return np.asarray(features[ends[:, None] + offsets[None, :]], dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Adapters


SIM_RATE_COLUMN = "SIM-UST-10Y.yield"
SIM_CORPORATE_COLUMN = "SIM-IG-7Y.yield"


def market_bars_from_sim(path: pd.DataFrame) -> pd.DataFrame:
    """Market bars of a :meth:`MarketSimulator.path` frame (same index).

    ``rate`` is the 10-year government bond's yield and ``credit_spread`` the
    investment-grade bond's yield minus it, i.e. what the dataflow can compute from the
    bond ticks (it includes each bond's own pricing noise); ``spread_bps`` and ``volume``
    are the equity mean spread and total volume of the path.
    """
    return pd.DataFrame(
        {
            "index_close": path["index_level"].to_numpy(dtype=float),
            "rate": path[SIM_RATE_COLUMN].to_numpy(dtype=float),
            "credit_spread": (path[SIM_CORPORATE_COLUMN] - path[SIM_RATE_COLUMN]).to_numpy(
                dtype=float
            ),
            "spread_bps": path["spread_bps"].to_numpy(dtype=float),
            "volume": path["volume"].to_numpy(dtype=float),
        },
        index=path.index,
    )


SPREAD_BPS_PER_VOL_POINT = 0.3
"""Proxy quoted spread (bps) per point of annualised implied volatility (VIX 15 -> 4.5 bps)."""


def market_bars_from_real(start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """Market bars from the real daily data that ships with ``arch`` (1999-2018).

    What is real and what is derived (no daily rates, credit spreads or quotes ship
    offline):

    - ``index_close``, ``volume``: S&P 500 daily close and volume (real).
    - ``rate``: Moody's AAA corporate yield (monthly, real) as the rate level. It is
      placed causally: during month m the value moves linearly from the average of month
      m-2 to that of m-1 (both complete, hence known), so no bar sees a later month.
    - ``credit_spread``: BAA - AAA (the default spread, monthly, real), placed the same
      way. It is corporate-minus-corporate, a stand-in for corporate minus government.
    - ``spread_bps``: a proxy, ``SPREAD_BPS_PER_VOL_POINT`` x an implied-volatility
      level: VIX where it ships (2014-2018), else the S&P 500's 10-day Parkinson
      (high/low) volatility, annualised in points and scaled by the median VIX/Parkinson
      ratio measured where both exist. Quoted spreads widen with volatility, which is
      what the proxy keeps.

    ``start``/``end`` cut the result by date (inclusive, ``YYYY-MM-DD``); the features
    of the first bars after ``start`` are warm-up, so cut the features, not the bars,
    when the history before matters.
    """
    from models import datasets

    spx = datasets.load_daily("sp500")
    vix = datasets.load_daily("vix")["close"].reindex(spx.index)
    corporate = datasets.load_corporate_yields()
    implied = _implied_vol_proxy(spx, vix)
    bars = pd.DataFrame(
        {
            "index_close": spx["close"].to_numpy(dtype=float),
            "rate": _causal_monthly(corporate["aaa"], spx.index),
            "credit_spread": _causal_monthly(corporate["spread"], spx.index),
            "spread_bps": SPREAD_BPS_PER_VOL_POINT * implied,
            "volume": spx["volume"].to_numpy(dtype=float),
        },
        index=spx.index,
    )
    bars = bars[np.isfinite(bars.to_numpy()).all(axis=1) & (bars["volume"] > 0)]
    tz = bars.index.tz
    if start is not None:
        bars = bars[bars.index >= pd.Timestamp(start, tz=tz)]
    if end is not None:
        bars = bars[bars.index <= pd.Timestamp(end, tz=tz)]
    return bars


def _implied_vol_proxy(spx: pd.DataFrame, vix: pd.Series) -> FloatArray:
    """VIX where known, else scaled 10-day Parkinson volatility in annualised points."""
    hl = np.log(spx["high"] / spx["low"]) ** 2 / (4.0 * math.log(2.0))
    parkinson = 100.0 * np.sqrt(252.0 * hl.rolling(10, min_periods=1).mean())
    both = vix.notna() & (parkinson > 0)
    ratio = float(np.median(vix[both] / parkinson[both])) if both.any() else 1.0
    proxy = vix.where(vix.notna(), ratio * parkinson)
    return np.asarray(proxy.to_numpy(dtype=float), dtype=np.float64)


def _causal_monthly(monthly: pd.Series, days: pd.DatetimeIndex) -> FloatArray:
    """Daily values from monthly averages, using only months complete before each day."""
    values = monthly.to_numpy(dtype=float)
    months = pd.DatetimeIndex(monthly.index)
    naive = days.tz_localize(None) if days.tz is not None else days
    month_start = naive.to_period("M").to_timestamp().tz_localize(days.tz)
    # position of the current month in the monthly index
    pos = months.searchsorted(month_start)
    prev1, prev2 = pos - 1, pos - 2
    valid = prev2 >= 0
    out = np.full(len(days), np.nan)
    next_month = month_start + pd.offsets.MonthBegin(1)
    frac = np.asarray((days - month_start) / (next_month - month_start), dtype=float)
    a = values[np.clip(prev2, 0, None)]
    b = values[np.clip(prev1, 0, None)]
    out[valid] = (a + frac * (b - a))[valid]
    return out
