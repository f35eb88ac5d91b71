"""Liquidity measures: quoted and effective spreads, Amihud illiquidity, volume z-score, ADV.

* ``quoted_spread_bps = 1e4 * (ask - bid) / mid``, ``mid = (bid + ask) / 2``.
* ``effective_spread_bps = 1e4 * 2 * |price - mid| / mid``.
* ``Amihud(n)``: mean of ``|r| / dollar_volume`` over the last ``n`` bars that traded
  (bars with zero dollar volume are skipped).
* ``VolumeZScore(n)``: ``(v - mean) / std(ddof=1)`` of the current volume against the ``n``
  volumes before it (the current bar is not in its own baseline); NaN if that std is zero.
* ``AverageDailyVolume(n)``: mean of the last ``n`` completed days' volume; a day is
  ``[d * 86400 s - offset, (d + 1) * 86400 s - offset)`` in event time (UTC midnight by default);
  days without any update (weekends, holidays) are not counted.
"""

from __future__ import annotations

import math
from typing import Self

import numpy as np

from operators.kernels.rolling import KernelState, RollingMoments, roll_update, state_vector

NS_PER_DAY = 86_400_000_000_000


def quoted_spread_bps(bid: float, ask: float) -> float:
    """Quoted spread in basis points of the mid."""
    mid = 0.5 * (bid + ask)
    return 1e4 * (ask - bid) / mid


def effective_spread_bps(price: float, bid: float, ask: float) -> float:
    """Effective spread ``2 |price - mid| / mid`` in basis points."""
    mid = 0.5 * (bid + ask)
    return 2e4 * abs(price - mid) / mid


class Amihud(KernelState):
    """Amihud illiquidity: rolling mean of ``|return| / dollar volume``."""

    __slots__ = ("_buf", "_st", "_v", "window")

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"Amihud: window must be >= 1, got {window}")
        self.window = window
        self._buf = np.zeros(window)
        self._st = state_vector(1)
        self._v = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``amihud_20``."""
        return f"amihud_{self.window}"

    def update(self, ret: float, dollar_volume: float) -> Self:
        """Add one bar's return and traded value; bars without trades are skipped."""
        if math.isfinite(ret) and math.isfinite(dollar_volume) and dollar_volume > 0.0:
            self._v = roll_update(self._buf, self._st, abs(ret) / dollar_volume, 1, 0.0)[0]
        return self

    def get(self) -> float:
        """Current illiquidity ratio, NaN until ``window`` traded bars."""
        return float(self._v)


class VolumeZScore(KernelState):
    """Z-score of the latest volume against the previous ``window`` volumes (ddof 1)."""

    __slots__ = ("_m", "_z", "window")

    def __init__(self, window: int = 20) -> None:
        if window < 2:
            raise ValueError(f"VolumeZScore: window must be >= 2, got {window}")
        self.window = window
        self._m = RollingMoments(window, npow=2)
        self._z = math.nan

    @property
    def name(self) -> str:
        """Feature name, e.g. ``volume_z_20``."""
        return f"volume_z_{self.window}"

    def update(self, volume: float) -> Self:
        """Score ``volume`` against the baseline, then add it to the baseline."""
        if not (math.isfinite(volume) and volume >= 0.0):
            return self
        if self._m.full:
            sd = self._m.std(1)
            self._z = (volume - self._m.mean()) / sd if sd > 0.0 else math.nan
        self._m.update(volume)
        return self

    def get(self) -> float:
        """Z-score of the latest volume, NaN for the first ``window`` updates."""
        return self._z


class AverageDailyVolume(KernelState):
    """Mean daily volume over the last ``days`` completed days; ``update(ts_ns, volume)``.

    Updates must arrive in event-time order (closed bars do); a day completes when the first
    update of a later day arrives.
    """

    __slots__ = ("_day", "_m", "_vol", "day_offset_ns", "days")

    def __init__(self, days: int = 20, day_offset_ns: int = 0) -> None:
        if days < 1:
            raise ValueError(f"AverageDailyVolume: days must be >= 1, got {days}")
        self.days = days
        self.day_offset_ns = day_offset_ns
        self._m = RollingMoments(days, npow=1)
        self._day: int | None = None
        self._vol = 0.0

    @property
    def name(self) -> str:
        """Feature name, e.g. ``adv_20``."""
        return f"adv_{self.days}"

    def update(self, ts_ns: int, volume: float) -> Self:
        """Add ``volume`` traded at ``ts_ns`` to its day."""
        if not (math.isfinite(volume) and volume >= 0.0):
            return self
        day = (ts_ns + self.day_offset_ns) // NS_PER_DAY
        if self._day is None:
            self._day = day
        elif day > self._day:
            self._m.update(self._vol)
            self._day, self._vol = day, 0.0
        elif day < self._day:  # out of order: the day is already closed
            return self
        self._vol += volume
        return self

    def get(self) -> float:
        """Average daily volume, NaN until ``days`` days are complete."""
        return self._m.mean() if self._m.full else math.nan
