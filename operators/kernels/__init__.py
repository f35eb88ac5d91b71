"""Pure Numba kernels for market features and risk metrics, exact against reference libraries.

Per-update math is ``@njit(cache=True)`` on fixed float64 ring buffers held by small state
classes (river style: ``update(x) -> self``, ``get()``, ``name``; every class pickles and has
``snapshot()``). Each update is O(1), historical VaR O(log n) search plus a shift.
References the tests hold them to at every step: TA-Lib 0.8.2 (indicators), arch 8.0
(EWMA), empyrical-reloaded 0.7.1 (historical VaR / CVaR), QuantLib 1.44 (bonds), NumPy / SciPy
(rolling statistics).

Features of ``InstrumentFeatures.features()`` (default ``FeatureConfig``; the numbers in a name
are its parameters; NaN until enough bars exist, exactly where the reference gives NaN):

Latest tick (largest event time)
    last_price                 last traded price
    mid                        (bid + ask) / 2
    quoted_spread_bps          1e4 * (ask - bid) / mid
    effective_spread_bps       1e4 * 2 * |last - mid| / mid

Latest closed bar (event-time bars of ``bar_interval_ns``, ``lateness_ns`` allowed)
    bar_close, bar_vwap        close price; sum(price * size) / sum(size) (NaN if no volume)
    bar_volume, bar_ticks      sum of sizes; number of ticks
    bar_spread_bps             mean quoted spread of the bar's ticks, bps
    bar_eff_spread_bps         mean effective spread of the bar's ticks, bps
    return_1, log_return_1     close / previous close - 1; ln(close / previous close)
    sma_20                     simple moving average of closes (TA-Lib SMA)
    ema_20                     EMA of closes, k = 2 / (n + 1), SMA seed (TA-Lib EMA)
    rsi_14                     Wilder RSI of closes, 0..100 (TA-Lib RSI)
    macd_12_26_9               EMA12 - EMA26 of closes (TA-Lib MACD seeding)
    macd_signal_12_26_9        EMA9 of the MACD line
    macd_hist_12_26_9          MACD line - signal
    bb_middle_20_2             SMA20 of closes (TA-Lib BBANDS, matype SMA)
    bb_upper_20_2, bb_lower_20_2   middle +/- 2 population std of the last 20 closes
    bb_pctb_20_2               (close - lower) / (upper - lower); NaN if the bands coincide
    bb_bandwidth_20_2          (upper - lower) / middle
    atr_14                     Wilder average true range (TA-Lib ATR)
    ewm_vol_0.94               sqrt of the RiskMetrics EWMA variance forecast of log returns,
                               lambda 0.94, arch's 75-observation backcast (arch EWMAVariance)
    rvol_20                    std (ddof 1) of the last 20 log returns
    parkinson_vol_20           sqrt(mean(ln(H/L)^2) / (4 ln 2)) over 20 bars
    gk_vol_20                  Garman-Klass: sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2))
    var_hist_0.95_1            5th percentile of the last 250 simple returns, linear
                               interpolation, times sqrt(horizon) (empyrical value_at_risk)
    cvar_hist_0.95_1           mean of the k + 1 smallest, k = int((n - 1) * 0.05)
                               (empyrical conditional_value_at_risk)
    var_normal_0.95_1          (mean + z * std) * sqrt(h), z = Phi^-1(0.05), std ddof 1
    cvar_normal_0.95_1         (mean - std * phi(z) / 0.05) * sqrt(h)
    var_cf_0.95_1              Cornish-Fisher VaR: z adjusted by the window's population
                               skewness and excess kurtosis
    amihud_20                  mean of |return| / (bar notional) over the last 20 traded bars
    volume_z_20                (volume - mean) / std (ddof 1) against the previous 20 bars
    adv_20                     mean volume of the last 20 completed (event-time UTC) days
    VaR / CVaR figures are returns: a loss is negative.

Bonds only (``FeatureConfig.bond`` set; from the yield of the bar's latest tick carrying one;
settlement = the bar's UTC date; prices per 100 face; QuantLib BondFunctions conventions)
    bond_yield                 yield to maturity, compounded at the coupon frequency
    bond_clean_price           clean price implied by that yield
    bond_accrued               accrued interest
    bond_mac_duration          Macaulay duration, years
    bond_mod_duration          modified duration, -dP/dy / P
    bond_convexity             d2P/dy2 / P
    bond_dv01                  modified duration * dirty price * 1e-4 (per 100 face, positive)
    bond_spread_bps            1e4 * (yield - reference curve yield at the time to maturity)
    bond_spread_chg_bps        change of bond_spread_bps since the previous bar with a yield
"""

from operators.kernels.bars import AddResult, Bar, BarBuilder
from operators.kernels.engine import FeatureConfig, InstrumentFeatures, TickResult
from operators.kernels.fixed_income import (
    BondPrice,
    BondRisk,
    BondSpec,
    YieldCurve,
    bond_risk,
    price_from_yield,
    year_fraction,
    yield_from_price,
    yield_spread,
)
from operators.kernels.indicators import (
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    Bollinger,
    BollingerValue,
    MACDValue,
)
from operators.kernels.liquidity import (
    Amihud,
    AverageDailyVolume,
    VolumeZScore,
    effective_spread_bps,
    quoted_spread_bps,
)
from operators.kernels.rolling import KernelState, RollingMoments
from operators.kernels.validation import (
    CROSSED_QUOTE,
    INVALID_PRICE,
    INVALID_SIZE,
    INVALID_TIMESTAMP,
    INVALID_YIELD,
    LATE,
    check_price,
    check_quote,
    check_size,
    check_tick,
    check_yield,
)
from operators.kernels.var import HistoricalVaR, ParametricVaR, VaRValue
from operators.kernels.volatility import (
    EwmaVariance,
    EwmaVol,
    GarmanKlassVol,
    ParkinsonVol,
    RealizedVol,
    arch_backcast,
)

__all__ = [
    "ATR",
    "CROSSED_QUOTE",
    "EMA",
    "INVALID_PRICE",
    "INVALID_SIZE",
    "INVALID_TIMESTAMP",
    "INVALID_YIELD",
    "LATE",
    "MACD",
    "RSI",
    "SMA",
    "AddResult",
    "Amihud",
    "AverageDailyVolume",
    "Bar",
    "BarBuilder",
    "Bollinger",
    "BollingerValue",
    "BondPrice",
    "BondRisk",
    "BondSpec",
    "EwmaVariance",
    "EwmaVol",
    "FeatureConfig",
    "GarmanKlassVol",
    "HistoricalVaR",
    "InstrumentFeatures",
    "KernelState",
    "MACDValue",
    "ParametricVaR",
    "ParkinsonVol",
    "RealizedVol",
    "RollingMoments",
    "TickResult",
    "VaRValue",
    "VolumeZScore",
    "YieldCurve",
    "arch_backcast",
    "bond_risk",
    "check_price",
    "check_quote",
    "check_size",
    "check_tick",
    "check_yield",
    "effective_spread_bps",
    "price_from_yield",
    "quoted_spread_bps",
    "year_fraction",
    "yield_from_price",
    "yield_spread",
]
