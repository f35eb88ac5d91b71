"""Per-instrument features at bar closes (last price, log return, EWMA volatility)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class BarFeatures:
    """Event-time bars of one instrument and the features updated at each bar close.

    A bar is ``[k * interval, (k + 1) * interval)`` in event time; it closes when the
    first tick of a later bar arrives.
    """

    interval_ns: int
    ewma_lambda: float = 0.94
    day_bars: float | None = None
    """Bars in one trading day; None: 6.5 hours of bars (at least 1)."""
    bar_index: int | None = None
    open: float = math.nan
    high: float = math.nan
    low: float = math.nan
    close: float = math.nan
    volume: float = 0.0
    prev_close: float = math.nan
    ewma_var: float = math.nan
    bars: int = 0
    values: dict[str, float] = field(default_factory=dict)

    @property
    def bars_per_day(self) -> float:
        """Bars in one trading day (daily volatility = bar volatility x sqrt of this)."""
        if self.day_bars is not None:
            return self.day_bars
        return max(1.0, 6.5 * 3600e9 / self.interval_ns)

    def on_tick(self, ts: int, last: float, size: float) -> dict[str, float] | None:
        """Add a tick; return the features at the bar close it caused, if any."""
        index = ts // self.interval_ns
        closed = None
        if self.bar_index is not None and index > self.bar_index:
            closed = self._close_bar()
        if self.bar_index is None or index > self.bar_index:
            self.bar_index = index
            self.open = self.high = self.low = last
            self.volume = 0.0
        self.high = max(self.high, last)
        self.low = min(self.low, last)
        self.close = last
        self.volume += size
        return closed

    def _close_bar(self) -> dict[str, float]:
        ret = math.log(self.close / self.prev_close) if self.prev_close > 0 else math.nan
        if not math.isnan(ret):
            lam = self.ewma_lambda
            self.ewma_var = (
                ret * ret
                if math.isnan(self.ewma_var)
                else (lam * self.ewma_var + (1.0 - lam) * ret * ret)
            )
        self.prev_close = self.close
        self.bars += 1
        assert self.bar_index is not None
        self.values = {
            "bar_close_ts": float((self.bar_index + 1) * self.interval_ns),
            "bar_open": self.open,
            "bar_high": self.high,
            "bar_low": self.low,
            "bar_close": self.close,
            "bar_volume": self.volume,
            "log_return": ret,
            "ewma_vol": math.sqrt(self.ewma_var),
            "daily_vol": math.sqrt(self.ewma_var * self.bars_per_day),
            "bars": float(self.bars),
        }
        return self.values
