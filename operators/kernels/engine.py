"""Per-instrument feature state: ticks in, closed bars and a flat ``features()`` dict out.

``InstrumentFeatures.on_tick`` validates the tick, feeds the :class:`BarBuilder`, and updates
every bar-level statistic from each bar the tick closes. Bar-level features are recomputed once
per closed bar; tick-level features (spreads of the latest tick) are read on demand. Feature
names and definitions are listed in :mod:`operators.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import NamedTuple

import numpy as np
from numba import njit

from operators.kernels.bars import AddResult, Bar, BarBuilder
from operators.kernels.fixed_income import BondSpec, YieldCurve, bond_risk, yield_spread
from operators.kernels.indicators import ATR, EMA, MACD, RSI, SMA, Bollinger
from operators.kernels.liquidity import (
    NS_PER_DAY,
    Amihud,
    AverageDailyVolume,
    VolumeZScore,
    effective_spread_bps,
    quoted_spread_bps,
)
from operators.kernels.rolling import KernelState
from operators.kernels.validation import LATE, check_yield
from operators.kernels.var import HistoricalVaR, ParametricVaR
from operators.kernels.volatility import EwmaVol, GarmanKlassVol, ParkinsonVol, RealizedVol

_EPOCH = date(1970, 1, 1)
NAN = math.nan


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Parameters of one instrument's features (defaults: 1-minute bars, 5 s lateness)."""

    bar_interval_ns: int = 60_000_000_000
    lateness_ns: int = 5_000_000_000
    sma_period: int = 20
    ema_period: int = 20
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_nbdev: float = 2.0
    atr_period: int = 14
    ewma_lambda: float = 0.94
    vol_window: int = 20
    var_window: int = 250
    var_confidence: float = 0.95
    var_horizon: int = 1
    liquidity_window: int = 20
    adv_days: int = 20
    day_offset_ns: int = 0
    bond: BondSpec | None = None
    curve: YieldCurve | None = None


class TickResult(NamedTuple):
    """Outcome of :meth:`InstrumentFeatures.on_tick`."""

    closed_bars: tuple[Bar, ...]
    late: bool
    reason: str | None  # None: accepted; "LATE" or a validation code: dead-letter the tick


_ACCEPTED = TickResult((), False, None)
_LATE = TickResult((), True, LATE)


class InstrumentFeatures(KernelState):
    """All features of one instrument; pickles, ``snapshot()`` deep-copies."""

    __slots__ = (
        "_adv",
        "_amihud",
        "_atr",
        "_bar_features",
        "_bb",
        "_bond_spread_bps",
        "_curve",
        "_ema",
        "_ewm",
        "_gk",
        "_last",
        "_last_bar",
        "_macd",
        "_park",
        "_prev_close",
        "_rsi",
        "_rvol",
        "_sma",
        "_var_cf",
        "_var_hist",
        "_var_norm",
        "_vol_z",
        "bars",
        "config",
    )

    def __init__(self, config: FeatureConfig | None = None) -> None:
        cfg = config or FeatureConfig()
        self.config = cfg
        self.bars = BarBuilder(cfg.bar_interval_ns, cfg.lateness_ns)
        self._sma = SMA(cfg.sma_period)
        self._ema = EMA(cfg.ema_period)
        self._rsi = RSI(cfg.rsi_period)
        self._macd = MACD(cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
        self._bb = Bollinger(cfg.bb_period, cfg.bb_nbdev, cfg.bb_nbdev)
        self._atr = ATR(cfg.atr_period)
        self._ewm = EwmaVol(cfg.ewma_lambda)
        self._rvol = RealizedVol(cfg.vol_window)
        self._park = ParkinsonVol(cfg.vol_window)
        self._gk = GarmanKlassVol(cfg.vol_window)
        w, c, h = cfg.var_window, cfg.var_confidence, cfg.var_horizon
        self._var_hist = HistoricalVaR(w, c, h)
        self._var_norm = ParametricVaR(w, c, h, "normal")
        self._var_cf = ParametricVaR(w, c, h, "cornish_fisher")
        self._amihud = Amihud(cfg.liquidity_window)
        self._vol_z = VolumeZScore(cfg.liquidity_window)
        self._adv = AverageDailyVolume(cfg.adv_days, cfg.day_offset_ns)
        self._curve = cfg.curve
        self._prev_close = NAN
        self._bond_spread_bps = NAN
        # latest tick by event time: (ts, last, size, bid, ask)
        self._last: tuple[int, float, float, float, float] | None = None
        self._bar_features = dict.fromkeys(self._bar_feature_names(), NAN)
        self._last_bar: Bar | None = None

    # ----------------------------------------------------------------------------- names
    def _bar_feature_names(self) -> list[str]:
        macd, bb = self._macd.name[5:], self._bb.name[3:]
        cvar_hist = "c" + self._var_hist.name
        cvar_norm = "c" + self._var_norm.name
        names = [
            "bar_close",
            "bar_vwap",
            "bar_volume",
            "bar_ticks",
            "bar_spread_bps",
            "bar_eff_spread_bps",
            "return_1",
            "log_return_1",
            self._sma.name,
            self._ema.name,
            self._rsi.name,
            f"macd_{macd}",
            f"macd_signal_{macd}",
            f"macd_hist_{macd}",
            f"bb_middle_{bb}",
            f"bb_upper_{bb}",
            f"bb_lower_{bb}",
            f"bb_pctb_{bb}",
            f"bb_bandwidth_{bb}",
            self._atr.name,
            self._ewm.name,
            self._rvol.name,
            self._park.name,
            self._gk.name,
            self._var_hist.name,
            cvar_hist,
            self._var_norm.name,
            cvar_norm,
            self._var_cf.name,
            self._amihud.name,
            self._vol_z.name,
            self._adv.name,
        ]
        if self.config.bond is not None:
            names += [
                "bond_yield",
                "bond_clean_price",
                "bond_accrued",
                "bond_mac_duration",
                "bond_mod_duration",
                "bond_convexity",
                "bond_dv01",
                "bond_spread_bps",
                "bond_spread_chg_bps",
            ]
        return names

    def feature_names(self) -> list[str]:
        """Every key ``features()`` returns, in order."""
        return [*_TICK_FEATURES, *self._bar_features]

    # ----------------------------------------------------------------------------- input
    def on_tick(
        self,
        ts_ns: int,
        bid: float,
        ask: float,
        last: float,
        size: float,
        yld: float | None = None,
    ) -> TickResult:
        """Add one tick; return the bars it closed, the late flag and the rejection reason."""
        res: AddResult = self.bars.add(ts_ns, last, size, bid, ask, yld)
        if res.reason is not None:
            return _LATE if res.late else TickResult(res.closed, res.late, res.reason)
        cur = self._last
        if cur is None or ts_ns > cur[0] or (ts_ns == cur[0] and (last, size, bid, ask) > cur[1:]):
            self._last = (int(ts_ns), float(last), float(size), float(bid), float(ask))
        if not res.closed:
            return _ACCEPTED
        for bar in res.closed:
            self.on_bar(bar)
        return TickResult(res.closed, False, None)

    def on_ticks(
        self,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        yld: np.ndarray,
        i0: int,
    ) -> tuple[int, int, tuple[Bar, ...]]:
        """Add ticks from ``i0`` on, in one compiled call, until one needs the caller.

        Returns ``(i, code, closed)`` as :meth:`BarBuilder.add_run` does (``yld`` NaN: no
        yield); the features are updated from the closed bars. On RUN_LATE / RUN_INVALID,
        tick ``i`` was not added: the caller rejects it (see :meth:`on_tick` for the
        reason) and goes on from ``i + 1``.
        """
        stop, code, closed = self.bars.add_run(ts, price, size, bid, ask, yld, i0)
        if stop > i0:  # ticks i0 .. stop - 1 were added
            j = int(latest_tick(ts, price, size, bid, ask, i0, stop))
            row = (int(ts[j]), float(price[j]), float(size[j]), float(bid[j]), float(ask[j]))
            cur = self._last
            if cur is None or row[0] > cur[0] or (row[0] == cur[0] and row[1:] > cur[1:]):
                self._last = row
        for bar in closed:
            self.on_bar(bar)
        return stop, code, closed

    def flush(self) -> tuple[Bar, ...]:
        """Close every open bar (end of stream) and update the features from them."""
        closed = tuple(self.bars.flush())
        for bar in closed:
            self.on_bar(bar)
        return closed

    def set_curve(self, curve: YieldCurve | None) -> None:
        """Replace the reference curve used for ``bond_spread_bps`` from the next bar on."""
        self._curve = curve

    def on_bar(self, bar: Bar) -> None:
        """Update every bar-level statistic with one closed bar (bars must come in order)."""
        self._last_bar = bar
        o, h, lo, c = bar.open, bar.high, bar.low, bar.close
        prev = self._prev_close
        self._prev_close = c
        ret = c / prev - 1.0 if prev == prev else NAN
        logret = math.log(c / prev) if prev == prev else NAN
        self._sma.update(c)
        self._ema.update(c)
        self._rsi.update(c)
        self._macd.update(c)
        self._bb.update(c)
        self._atr.update(h, lo, c)
        self._park.update(o, h, lo, c)
        self._gk.update(o, h, lo, c)
        if ret == ret:
            self._ewm.update(logret)
            self._rvol.update(logret)
            self._var_hist.update(ret)
            self._var_norm.update(ret)
            self._var_cf.update(ret)
            self._amihud.update(ret, bar.notional)
        self._vol_z.update(bar.volume)
        self._adv.update(bar.start_ns, bar.volume)

        macd = self._macd.get()
        bb = self._bb.get()
        vh = self._var_hist.get()
        vn = self._var_norm.get()
        values = [
            c,
            bar.vwap,
            bar.volume,
            float(bar.ticks),
            bar.spread_bps_mean,
            bar.eff_spread_bps_mean,
            ret,
            logret,
            self._sma.get(),
            self._ema.get(),
            self._rsi.get(),
            macd.macd,
            macd.signal,
            macd.hist,
            bb.middle,
            bb.upper,
            bb.lower,
            bb.pct_b,
            bb.bandwidth,
            self._atr.get(),
            self._ewm.get(),
            self._rvol.get(),
            self._park.get(),
            self._gk.get(),
            vh.var,
            vh.cvar,
            vn.var,
            vn.cvar,
            self._var_cf.get().var,
            self._amihud.get(),
            self._vol_z.get(),
            self._adv.get(),
        ]
        if self.config.bond is not None:
            values += self._bond_values(self.config.bond, bar)
        self._bar_features = dict(zip(self._bar_features, values, strict=True))

    def _bond_values(self, spec: BondSpec, bar: Bar) -> list[float]:
        y = bar.close_yield
        settle = _EPOCH + timedelta(days=bar.start_ns // NS_PER_DAY)
        if y != y or settle >= spec.maturity or check_yield(y, spec.frequency) is not None:
            return [NAN] * 9
        r = bond_risk(spec, settle, y)
        spread = NAN
        if self._curve is not None:
            spread = 1e4 * yield_spread(spec, settle, y, self._curve)
        change = spread - self._bond_spread_bps
        self._bond_spread_bps = spread
        return [
            y,
            r.clean,
            r.accrued,
            r.macaulay,
            r.modified,
            r.convexity,
            r.dv01,
            spread,
            change,
        ]

    # ---------------------------------------------------------------------------- output
    @property
    def last_bar(self) -> Bar | None:
        """The latest closed bar (its ``end_ns`` is the event time of the bar features)."""
        return self._last_bar

    def bar_features(self) -> dict[str, float]:
        """Features of the latest closed bar only (a copy; NaN before the first bar)."""
        return dict(self._bar_features)

    def features(self) -> dict[str, float]:
        """Flat feature dict: latest tick's spreads, then the latest closed bar's features."""
        if self._last is None:
            tick = dict.fromkeys(_TICK_FEATURES, NAN)
        else:
            _, last, _, bid, ask = self._last
            tick = {
                "last_price": last,
                "mid": 0.5 * (bid + ask),
                "quoted_spread_bps": quoted_spread_bps(bid, ask),
                "effective_spread_bps": effective_spread_bps(last, bid, ask),
            }
        tick.update(self._bar_features)
        return tick


_TICK_FEATURES = ("last_price", "mid", "quoted_spread_bps", "effective_spread_bps")


@njit(cache=True)
def latest_tick(
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    lo: int,
    hi: int,
) -> int:
    """Index in ``[lo, hi)`` of the largest ``(ts, price, size, bid, ask)``: the latest tick."""
    best = lo
    for i in range(lo + 1, hi):
        if ts[i] != ts[best]:
            newer = ts[i] > ts[best]
        elif price[i] != price[best]:
            newer = price[i] > price[best]
        elif size[i] != size[best]:
            newer = size[i] > size[best]
        elif bid[i] != bid[best]:
            newer = bid[i] > bid[best]
        else:
            newer = ask[i] > ask[best]
        if newer:
            best = i
    return best
