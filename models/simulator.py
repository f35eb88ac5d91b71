"""Seeded regime-switching market simulator with a known regime path.

The world
    One :class:`SimConfig` is one world. It starts at ``start_ns`` and is cut into bars
    of ``bar_ns``: bar ``k`` covers ``[start_ns + k*bar_ns, start_ns + (k+1)*bar_ns)``
    and has one regime, drawn from a sticky Markov chain over the seven regimes. Bar
    parameters have the scale of one trading day (CALM equity vol 0.8 % per bar), so
    bar-level features look like the daily real data of :mod:`models.datasets`.
Bars and ticks
    :meth:`MarketSimulator.path` is the bar skeleton: the close of every series and the
    true regime. :meth:`MarketSimulator.ticks` fills each bar with Brownian bridges
    between consecutive closes (log price for equities and the index, yield for bonds):
    the last tick of each instrument in a bar is quoted around the path's close mid.
Units
    Equity and index prices in USD. Bonds are quoted per 100 face; one unit is 1000
    face, so ``face_value`` is 10.0 and cash value = price * 10. Yields, the short rate
    and the credit spread are decimals (0.05 = 5 %). Bond pricing is the street formula
    with a fractional number of coupon periods, years counted 30/360 (bond basis): see
    :func:`bond_price`.
Determinism
    Every random draw comes from a generator keyed by (seed, stream, block), so one
    config gives identical records however, and from wherever, the output is consumed.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.regimes import REGIMES, Regime

NS_PER_SECOND = 1_000_000_000
DEFAULT_START_NS = 1_704_205_800_000_000_000
"""2024-01-02T14:30:00Z."""
DEFAULT_TICK_INTERVAL_NS = 10_000_000
"""One quote per instrument every 10 ms of event time."""
BOND_UNIT_FACE = 1000.0
"""Face amount of one bond unit."""
BOND_FACE_VALUE = BOND_UNIT_FACE / 100.0
"""Instrument.face_value of a bond: cash per unit per price point (price quoted per 100)."""

Record = dict[str, Any]
FloatArray = npt.NDArray[np.float64]

_BAR_CHUNK = 256  # bars simulated per random block
_TICKS_PER_BATCH = 8192  # ticks built per vectorised batch
_MAX_TICKS_PER_BAR = 2_000_000  # one bar's bridges are built at once
_STREAM_REF, _STREAM_BARS, _STREAM_TICKS, _STREAM_PROPOSALS, _STREAM_BOOKS = range(5)

_RATE_MEAN, _RATE_KAPPA, _RATE_START = 0.04, 0.01, 0.04
_CREDIT_MEAN, _CREDIT_KAPPA, _CREDIT_START = 0.012, 0.02, 0.012
_BOND_NOISE_PHI, _BOND_NOISE_VOL = 0.9, 0.0002
_DISLOCATION_PHI = 0.5  # share of a dislocation left after one bar
_INDEX_START = 4000.0
_PRICE_KAPPA = 0.002  # pull of log prices to their start: keeps long runs in range


@dataclass(frozen=True, slots=True)
class RegimeParams:
    """What one regime does to the market, per bar (about one trading day)."""

    drift: float
    """Mean log return of the market factor."""
    vol: float
    """Total log-return volatility of an equity with beta 1."""
    corr: float
    """Pairwise equity correlation through the one-factor market model."""
    spread_mult: float
    """Multiplier on each instrument's base bid/ask spread."""
    volume_mult: float
    """Multiplier on each instrument's average daily volume."""
    rate_drift: float
    """Mean change of the short rate (decimal)."""
    rate_vol: float
    """Volatility of the short-rate change (decimal)."""
    credit_drift: float
    """Mean change of the log credit spread."""
    credit_vol: float
    """Volatility of the log credit-spread change."""
    mean_duration: float
    """Expected bars per visit; sets the chain's stickiness."""
    jump_prob: float = 0.0
    """Chance per equity and bar of a jump that mean-reverts over the next bars."""
    jump_size: float = 0.0
    """Jump size as a log return (sign random)."""


REGIME_PARAMS: Mapping[Regime, RegimeParams] = {
    Regime.CALM: RegimeParams(
        drift=0.0006, vol=0.008, corr=0.35, spread_mult=1.0, volume_mult=1.0,
        rate_drift=0.0, rate_vol=0.0003, credit_drift=0.0, credit_vol=0.01,
        mean_duration=30,
    ),
    Regime.VOL_RISK_OFF: RegimeParams(
        drift=-0.003, vol=0.030, corr=0.75, spread_mult=2.5, volume_mult=1.8,
        rate_drift=-0.0003, rate_vol=0.0008, credit_drift=0.01, credit_vol=0.03,
        mean_duration=20,
    ),
    Regime.LIQUIDITY_CRISIS: RegimeParams(
        drift=-0.004, vol=0.035, corr=0.80, spread_mult=8.0, volume_mult=0.35,
        rate_drift=-0.0002, rate_vol=0.0010, credit_drift=0.02, credit_vol=0.04,
        mean_duration=12,
    ),
    Regime.CREDIT_SELLOFF: RegimeParams(
        drift=-0.002, vol=0.018, corr=0.60, spread_mult=2.0, volume_mult=1.3,
        rate_drift=-0.0001, rate_vol=0.0005, credit_drift=0.03, credit_vol=0.025,
        mean_duration=20,
    ),
    Regime.RATE_SELLOFF: RegimeParams(
        drift=-0.002, vol=0.015, corr=0.55, spread_mult=1.5, volume_mult=1.3,
        rate_drift=0.0008, rate_vol=0.0006, credit_drift=0.003, credit_vol=0.015,
        mean_duration=20,
    ),
    Regime.RALLY: RegimeParams(
        drift=0.005, vol=0.010, corr=0.45, spread_mult=0.8, volume_mult=1.5,
        rate_drift=0.00005, rate_vol=0.0003, credit_drift=-0.01, credit_vol=0.01,
        mean_duration=25,
    ),
    Regime.TECHNICAL_DISLOCATION: RegimeParams(
        drift=0.0, vol=0.012, corr=0.20, spread_mult=2.0, volume_mult=2.0,
        rate_drift=0.0, rate_vol=0.0004, credit_drift=0.0, credit_vol=0.015,
        mean_duration=12, jump_prob=0.25, jump_size=0.04,
    ),
}  # fmt: skip

EXIT_WEIGHTS: Mapping[Regime, Mapping[Regime, float]] = {
    Regime.CALM: {
        Regime.VOL_RISK_OFF: 0.15, Regime.LIQUIDITY_CRISIS: 0.10, Regime.CREDIT_SELLOFF: 0.15,
        Regime.RATE_SELLOFF: 0.20, Regime.RALLY: 0.20, Regime.TECHNICAL_DISLOCATION: 0.20,
    },
    Regime.VOL_RISK_OFF: {
        Regime.CALM: 0.40, Regime.LIQUIDITY_CRISIS: 0.25, Regime.CREDIT_SELLOFF: 0.15,
        Regime.RALLY: 0.10, Regime.TECHNICAL_DISLOCATION: 0.10,
    },
    Regime.LIQUIDITY_CRISIS: {
        Regime.CALM: 0.30, Regime.VOL_RISK_OFF: 0.35, Regime.CREDIT_SELLOFF: 0.20,
        Regime.RALLY: 0.15,
    },
    Regime.CREDIT_SELLOFF: {
        Regime.CALM: 0.40, Regime.VOL_RISK_OFF: 0.20, Regime.LIQUIDITY_CRISIS: 0.15,
        Regime.RATE_SELLOFF: 0.10, Regime.RALLY: 0.10, Regime.TECHNICAL_DISLOCATION: 0.05,
    },
    Regime.RATE_SELLOFF: {
        Regime.CALM: 0.45, Regime.VOL_RISK_OFF: 0.15, Regime.CREDIT_SELLOFF: 0.15,
        Regime.RALLY: 0.10, Regime.TECHNICAL_DISLOCATION: 0.15,
    },
    Regime.RALLY: {
        Regime.CALM: 0.50, Regime.VOL_RISK_OFF: 0.10, Regime.RATE_SELLOFF: 0.20,
        Regime.TECHNICAL_DISLOCATION: 0.20,
    },
    Regime.TECHNICAL_DISLOCATION: {
        Regime.CALM: 0.50, Regime.VOL_RISK_OFF: 0.15, Regime.LIQUIDITY_CRISIS: 0.10,
        Regime.RATE_SELLOFF: 0.10, Regime.RALLY: 0.15,
    },
}  # fmt: skip
"""Where the chain goes when it leaves a regime (relative weights)."""

SECTORS: tuple[tuple[str, float], ...] = (
    ("Information Technology", 1.25),
    ("Financials", 1.10),
    ("Health Care", 0.80),
    ("Energy", 1.05),
    ("Industrials", 1.00),
    ("Consumer Discretionary", 1.15),
    ("Utilities", 0.55),
    ("Communication Services", 1.05),
    ("Materials", 1.00),
    ("Consumer Staples", 0.65),
    ("Real Estate", 0.85),
)
"""Equity sectors (GICS names) and their typical market beta, assigned in turn."""


@dataclass(frozen=True, slots=True)
class BondSpec:
    """A simulated fixed-rate bond: yield = short rate + term premium + beta * credit."""

    instrument_id: str
    symbol: str
    sector: str
    issuer: str
    rating: str
    coupon: float
    years: int
    term_premium: float
    credit_beta: float
    spread_bps: float
    adv: float


BONDS: tuple[BondSpec, ...] = (
    BondSpec("SIM-UST-10Y", "UST 4.000 10Y", "Government", "US Treasury", "AA+",
             0.040, 10, 0.0035, 0.0, 1.5, 5_000_000.0),
    BondSpec("SIM-IG-7Y", "SIMCO 5.000 7Y", "Industrials", "SimCo Industrials Inc", "A-",
             0.050, 7, 0.0025, 1.0, 6.0, 15_000.0),
    BondSpec("SIM-HY-5Y", "RISKY 7.500 5Y", "Consumer Discretionary", "Risky Retail Corp",
             "BB", 0.075, 5, 0.0015, 3.0, 25.0, 5_000.0),
)  # fmt: skip

INDEX_ID = "SIM-IDX"


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines one simulated world."""

    seed: int = 0
    start_ns: int = DEFAULT_START_NS
    bar_ns: int = NS_PER_SECOND
    n_equities: int = 8
    initial_regime: Regime = Regime.CALM
    regimes: Mapping[Regime, RegimeParams] = field(default_factory=lambda: dict(REGIME_PARAMS))
    exit_weights: Mapping[Regime, Mapping[Regime, float]] = field(
        default_factory=lambda: dict(EXIT_WEIGHTS)
    )

    def __post_init__(self) -> None:
        """Reject settings the simulator cannot honour."""
        if self.seed < 0:
            raise ValueError(f"SimConfig.seed must be >= 0, got {self.seed}")
        if self.bar_ns <= 0:
            raise ValueError(f"SimConfig.bar_ns must be > 0, got {self.bar_ns}")
        object.__setattr__(self, "initial_regime", Regime(self.initial_regime))
        if self.n_equities < 1:
            raise ValueError(f"SimConfig.n_equities must be >= 1, got {self.n_equities}")
        missing = [r.value for r in REGIMES if r not in self.regimes]
        if missing:
            raise ValueError(f"SimConfig.regimes lacks parameters for {missing}")


# ---------------------------------------------------------------------------------------
# Regime chain


def transition_matrix(
    regimes: Mapping[Regime, RegimeParams] = REGIME_PARAMS,
    exit_weights: Mapping[Regime, Mapping[Regime, float]] = EXIT_WEIGHTS,
) -> FloatArray:
    """Row-stochastic 7x7 matrix: stay with 1 - 1/mean_duration, else leave by weight."""
    matrix = np.zeros((len(REGIMES), len(REGIMES)))
    for i, regime in enumerate(REGIMES):
        leave = 1.0 / regimes[regime].mean_duration
        weights = np.array([exit_weights[regime].get(other, 0.0) for other in REGIMES])
        weights[i] = 0.0
        if weights.sum() <= 0:
            raise ValueError(f"regime {regime.value} has no exit weights")
        matrix[i] = leave * weights / weights.sum()
        matrix[i, i] = 1.0 - leave
    return matrix


def stationary_distribution(matrix: FloatArray) -> FloatArray:
    """Long-run share of bars per regime for a row-stochastic transition matrix."""
    values, vectors = np.linalg.eig(matrix.T)
    vec = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return np.asarray(vec / vec.sum(), dtype=np.float64)


def _markov_path(
    cumulative: FloatArray, previous: int, uniforms: FloatArray
) -> npt.NDArray[np.int8]:
    """Regime codes for consecutive bars, each drawn given the one before."""
    out = np.empty(len(uniforms), dtype=np.int8)
    state = previous
    last = cumulative.shape[1] - 1
    for k, u in enumerate(uniforms):
        state = min(int(np.searchsorted(cumulative[state], u, side="right")), last)
        out[k] = state
    return out


# ---------------------------------------------------------------------------------------
# Bond math


def year_fraction_30_360(start_ns: npt.ArrayLike, end_ns: npt.ArrayLike) -> FloatArray:
    """Years from start to end, 30/360 bond basis on UTC dates; 0 when end <= start."""
    d1 = _ymd(np.asarray(start_ns, dtype=np.int64))
    d2 = _ymd(np.asarray(end_ns, dtype=np.int64))
    day1 = np.minimum(d1[2], 30)
    day2 = np.where((d2[2] == 31) & (day1 >= 30), 30, d2[2])
    days = 360 * (d2[0] - d1[0]) + 30 * (d2[1] - d1[1]) + (day2 - day1)
    return np.asarray(np.maximum(days, 0) / 360.0, dtype=np.float64)


def _ymd(ns: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], ...]:
    """Calendar year, month and day of UTC epoch nanoseconds."""
    days = ns.astype("datetime64[ns]").astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


def bond_price(
    yld: npt.ArrayLike, coupon: npt.ArrayLike, years: npt.ArrayLike, frequency: int = 2
) -> FloatArray:
    """Price per 100 face of a fixed-rate bond from its yield (street formula).

    ``n = years * frequency`` coupon periods, possibly fractional:
    ``P = 100*c/f * (1 - (1+y/f)^-n) / (y/f) + 100 * (1+y/f)^-n``. On a coupon date this
    is QuantLib's clean price; between coupon dates it is this same formula (no split
    into clean price and accrued interest), so price and yield map one to one.
    """
    rate = np.asarray(yld, dtype=np.float64) / frequency
    periods = np.maximum(np.asarray(years, dtype=np.float64), 0.0) * frequency
    log_discount = -periods * np.log1p(rate)
    discount = np.exp(log_discount)
    zero = rate == 0.0
    annuity = np.where(zero, periods, -np.expm1(log_discount) / np.where(zero, 1.0, rate))
    cash = 100.0 * np.asarray(coupon, dtype=np.float64) / frequency
    return np.asarray(cash * annuity + 100.0 * discount, dtype=np.float64)


def bond_yield(
    price: npt.ArrayLike,
    coupon: npt.ArrayLike,
    years: npt.ArrayLike,
    frequency: int = 2,
    guess: npt.ArrayLike | None = None,
) -> FloatArray:
    """Yield whose :func:`bond_price` is ``price`` (Newton's method, vectorised)."""
    target = np.asarray(price, dtype=np.float64)
    y = np.broadcast_to(np.asarray(coupon if guess is None else guess, dtype=np.float64),
                        target.shape).copy()  # fmt: skip
    h = 1e-6
    for _ in range(50):
        value = bond_price(y, coupon, years, frequency)
        slope = (bond_price(y + h, coupon, years, frequency)
                 - bond_price(y - h, coupon, years, frequency)) / (2 * h)  # fmt: skip
        step = np.where(np.abs(slope) > 1e-12, (value - target) / np.where(slope == 0, 1, slope), 0)
        y = y - step
        if np.all(np.abs(step) < 1e-14):
            break
    return np.asarray(y, dtype=np.float64)


def _add_years(ns: int, years: int) -> int:
    """The same UTC instant ``years`` calendar years later (Feb 29 -> Feb 28)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    when = epoch + dt.timedelta(microseconds=ns // 1000)
    try:
        later = when.replace(year=when.year + years)
    except ValueError:
        later = when.replace(year=when.year + years, day=28)
    return (later - epoch) // dt.timedelta(microseconds=1) * 1000 + ns % 1000


# ---------------------------------------------------------------------------------------
# Universe


@dataclass(frozen=True)
class _Universe:
    """Reference data and static parameters; instrument order: equities, index, bonds."""

    ids: tuple[str, ...]
    records: tuple[Record, ...]
    n_equities: int
    beta: FloatArray  # (E,)
    x0: FloatArray  # (n,) opening log price or yield
    spread_bps: FloatArray  # (n,)
    volume_base: FloatArray  # (n,) units per bar in CALM (index: sum of equities)
    lot: FloatArray  # (n,)
    face_value: FloatArray  # (n,)
    coupon: FloatArray  # (B,)
    maturity_ns: npt.NDArray[np.int64]  # (B,)
    term_premium: FloatArray  # (B,)
    credit_beta: FloatArray  # (B,)

    @property
    def n(self) -> int:
        """Number of instruments."""
        return len(self.ids)

    @property
    def bonds(self) -> slice:
        """Positions of the bonds."""
        return slice(self.n_equities + 1, self.n)

    @property
    def tradable(self) -> npt.NDArray[np.int64]:
        """Positions of the instruments proposals trade (equities and bonds)."""
        return np.r_[np.arange(self.n_equities), np.arange(self.n_equities + 1, self.n)]


def _build_universe(config: SimConfig) -> _Universe:
    """Draw the equities from the seed and add the index and the bonds."""
    rng = np.random.default_rng([config.seed, _STREAM_REF])
    n_eq = config.n_equities
    price = np.round(np.exp(rng.uniform(np.log(15.0), np.log(400.0), n_eq)), 2)
    adv = np.round(np.exp(rng.uniform(np.log(5e5), np.log(2e7), n_eq)), -2)
    beta = np.array([SECTORS[i % len(SECTORS)][1] for i in range(n_eq)])
    beta = beta * rng.uniform(0.85, 1.15, n_eq)
    eq_spread = np.clip(3.0 * np.sqrt(5e6 / adv), 1.0, 15.0)
    lot = np.where(np.arange(n_eq) % 2 == 1, 100.0, 1.0)
    maturity = np.array([_add_years(config.start_ns, b.years) for b in BONDS], dtype=np.int64)
    y0 = np.array([_RATE_START + b.term_premium + b.credit_beta * _CREDIT_START for b in BONDS])
    records = (
        *(_equity_record(i, adv[i], lot[i]) for i in range(n_eq)),
        _index_record(),
        *(_bond_record(b, int(m)) for b, m in zip(BONDS, maturity, strict=True)),
    )
    return _Universe(
        ids=tuple(r["instrument_id"] for r in records),
        records=records,
        n_equities=n_eq,
        beta=beta,
        x0=np.r_[np.log(price), np.log(_INDEX_START), y0],
        spread_bps=np.r_[eq_spread, 0.5, [b.spread_bps for b in BONDS]],
        volume_base=np.r_[adv, adv.sum(), [b.adv for b in BONDS]],
        lot=np.r_[lot, 1.0, np.ones(len(BONDS))],
        face_value=np.r_[np.ones(n_eq + 1), np.full(len(BONDS), BOND_FACE_VALUE)],
        coupon=np.array([b.coupon for b in BONDS]),
        maturity_ns=maturity,
        term_premium=np.array([b.term_premium for b in BONDS]),
        credit_beta=np.array([b.credit_beta for b in BONDS]),
    )


def _instrument(instrument_id: str, symbol: str, asset_class: str, **fields: Any) -> Record:
    """An Instrument record with the schema's defaults; ``ts_event`` is set later."""
    record: Record = {
        "instrument_id": instrument_id, "symbol": symbol, "asset_class": asset_class,
        "currency": "USD", "sector": None, "issuer": None, "rating": None, "coupon": None,
        "coupon_frequency": None, "day_count": None, "maturity": None, "face_value": 1.0,
        "lot_size": 1.0, "adv": 0.0, "ts_event": 0,
    }  # fmt: skip
    record.update(fields)
    return record


def _equity_record(i: int, adv: float, lot: float) -> Record:
    """Reference record of simulated equity ``i``."""
    sector = SECTORS[i % len(SECTORS)][0]
    return _instrument(
        f"SIM-EQ{i + 1:02d}", f"SEQ{i + 1:02d}", "EQUITY", sector=sector,
        issuer=f"Sim {sector} Co {i + 1}", lot_size=float(lot), adv=float(adv),
    )  # fmt: skip


def _index_record() -> Record:
    """Reference record of the simulated equity index (not tradable, ADV unknown)."""
    return _instrument(INDEX_ID, "SIMX", "INDEX", issuer="Sim Index Provider")


def _bond_record(bond: BondSpec, maturity_ns: int) -> Record:
    """Reference record of a simulated bond."""
    return _instrument(
        bond.instrument_id, bond.symbol, "BOND", sector=bond.sector, issuer=bond.issuer,
        rating=bond.rating, coupon=bond.coupon, coupon_frequency=2, day_count="30/360",
        maturity=maturity_ns, face_value=BOND_FACE_VALUE, adv=bond.adv,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# Bar skeleton


@dataclass(frozen=True)
class _State:
    """Where the world stands after a bar; what the next bar starts from."""

    regime: int
    log_fund: FloatArray  # (E+1,) equities then index, without dislocations
    disloc: FloatArray  # (E,)
    rate: float
    log_credit: float
    bond_noise: FloatArray  # (B,)
    x: FloatArray  # (n,) close in bridge space: log price, or yield for bonds


@dataclass(frozen=True)
class _Bars:
    """Consecutive bars of the skeleton; arrays have one row per bar."""

    first: int
    regime: npt.NDArray[np.int8]
    x_open: FloatArray
    x_close: FloatArray
    bridge_vol: FloatArray
    spread_bps: FloatArray
    volume: FloatArray
    short_rate: FloatArray
    credit: FloatArray

    def __len__(self) -> int:
        """Number of bars."""
        return len(self.regime)

    def rows(self, lo: int, hi: int) -> _Bars:
        """Bars ``lo..hi-1`` counted from the first bar of this block."""
        sliced = {
            name: getattr(self, name)[lo:hi]
            for name in ("regime", "x_open", "x_close", "bridge_vol", "spread_bps", "volume",
                         "short_rate", "credit")
        }  # fmt: skip
        return replace(self, first=self.first + lo, **sliced)


def _param_table(regimes: Mapping[Regime, RegimeParams]) -> dict[str, FloatArray]:
    """Each RegimeParams field as an array indexed by regime code."""
    names = RegimeParams.__dataclass_fields__
    return {n: np.array([getattr(regimes[r], n) for r in REGIMES]) for n in names}


class MarketSimulator:
    """Seeded regime-switching market: reference data, ticks, bars, proposals, fills."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        """Build the world of ``config`` (``SimConfig`` fields may be given as keywords)."""
        base = config or SimConfig()
        self.config = replace(base, **overrides) if overrides else base
        self.universe = _build_universe(self.config)
        self.transitions = transition_matrix(self.config.regimes, self.config.exit_weights)
        self._cumulative = np.cumsum(self.transitions, axis=1)
        self._par = _param_table(self.config.regimes)
        self._starts: list[_State] = [self._initial_state()]
        self._recent: OrderedDict[int, _Bars] = OrderedDict()

    # -- reference data ------------------------------------------------------------------

    def instruments(self, ts_event: int | None = None) -> list[Record]:
        """Instrument records (equities, the index, bonds), valid from ``ts_event``."""
        ts = self.config.start_ns if ts_event is None else int(ts_event)
        return [{**r, "ts_event": ts} for r in self.universe.records]

    @property
    def instrument_ids(self) -> tuple[str, ...]:
        """Instrument ids in simulator order: equities, the index, bonds."""
        return self.universe.ids

    # -- bars ----------------------------------------------------------------------------

    def path(self, n_bars: int, start_ns: int | None = None) -> pd.DataFrame:
        """``n_bars`` bars from the bar holding ``start_ns``: closes, regime, market series.

        Index: bar close time (UTC). Columns: ``bar``, ``regime`` (categorical, model
        order), ``regime_code``, ``index_level``, ``short_rate``, ``credit_spread``,
        ``spread_bps`` (equity mean), ``volume`` (equity total), then per instrument
        ``<id>.price`` (close mid), ``<id>.spread_bps``, ``<id>.volume`` and for bonds
        ``<id>.yield``.
        """
        if n_bars < 0:
            raise ValueError(f"path needs n_bars >= 0, got {n_bars}")
        first = self._bar_of(self._check_start(start_ns))
        blocks: list[_Bars] = []
        got = 0
        for block in self._blocks_from(first, _BAR_CHUNK):
            blocks.append(block.rows(0, n_bars - got))
            got += len(blocks[-1])
            if got >= n_bars:
                break
        return self._frame(blocks, n_bars)

    def _frame(self, blocks: list[_Bars], n_bars: int) -> pd.DataFrame:
        """Assemble bar blocks into the ``path`` DataFrame."""
        u, cfg = self.universe, self.config
        cat = lambda name: np.concatenate([getattr(b, name) for b in blocks])  # noqa: E731
        first = blocks[0].first if blocks else 0
        bars = np.arange(first, first + n_bars, dtype=np.int64)
        ts_close = cfg.start_ns + (bars + 1) * cfg.bar_ns
        codes = cat("regime") if blocks else np.empty(0, dtype=np.int8)
        x = cat("x_close") if blocks else np.empty((0, u.n))
        spread, volume = (cat("spread_bps"), cat("volume")) if blocks else (x, x)
        price = self._prices(x, ts_close[:, None])
        eq = slice(0, u.n_equities)
        columns: dict[str, Any] = {
            "bar": bars,
            "regime": pd.Categorical.from_codes(codes, categories=[r.value for r in REGIMES]),
            "regime_code": codes,
            "index_level": price[:, u.n_equities],
            "short_rate": cat("short_rate") if blocks else np.empty(0),
            "credit_spread": cat("credit") if blocks else np.empty(0),
            "spread_bps": spread[:, eq].mean(axis=1),
            "volume": volume[:, eq].sum(axis=1),
        }
        for j, iid in enumerate(u.ids):
            columns[f"{iid}.price"] = price[:, j]
            columns[f"{iid}.spread_bps"] = spread[:, j]
            columns[f"{iid}.volume"] = volume[:, j]
        for j, iid in enumerate(u.ids[u.bonds], start=u.n_equities + 1):
            columns[f"{iid}.yield"] = x[:, j]
        index = pd.DatetimeIndex(pd.to_datetime(ts_close, unit="ns", utc=True), name="ts")
        return pd.DataFrame(columns, index=index)

    def _prices(self, x: FloatArray, bond_ts: npt.ArrayLike) -> FloatArray:
        """Mid prices from bridge-space values; bonds priced at ``bond_ts`` (broadcast)."""
        u = self.universe
        price = np.exp(x)
        years = year_fraction_30_360(bond_ts, u.maturity_ns)
        price[..., u.bonds] = bond_price(x[..., u.bonds], u.coupon, years)
        return price

    def _check_start(self, start_ns: int | None) -> int:
        """``start_ns`` or the world's start; never before the world's start."""
        start = self.config.start_ns if start_ns is None else int(start_ns)
        if start < self.config.start_ns:
            raise ValueError(
                f"start_ns {start} is before the simulated world starts "
                f"(SimConfig.start_ns = {self.config.start_ns})"
            )
        return start

    def _bar_of(self, ts_ns: int) -> int:
        """Index of the bar holding ``ts_ns``."""
        return (ts_ns - self.config.start_ns) // self.config.bar_ns

    def _blocks_from(self, first: int, size: int) -> Iterator[_Bars]:
        """Endless consecutive bar blocks of at most ``size`` bars, from bar ``first``."""
        bar = first
        while True:
            chunk = self._chunk(bar // _BAR_CHUNK)
            lo = bar - chunk.first
            block = chunk.rows(lo, min(lo + size, _BAR_CHUNK))
            yield block
            bar += len(block)

    def _chunk(self, index: int) -> _Bars:
        """Bars of random block ``index`` (cached: the latest few blocks)."""
        if index in self._recent:
            self._recent.move_to_end(index)
            return self._recent[index]
        known = min(index, len(self._starts) - 1)
        for i in range(known, index + 1):
            bars, end = self._simulate_chunk(i, self._starts[i])
            if i + 1 == len(self._starts):
                self._starts.append(end)
        self._recent[index] = bars
        if len(self._recent) > 4:
            self._recent.popitem(last=False)
        return bars

    def _initial_state(self) -> _State:
        """The world before bar 0."""
        u = self.universe
        n_eq, n_b = u.n_equities, len(BONDS)
        return _State(
            regime=self.config.initial_regime.code,
            log_fund=u.x0[: n_eq + 1].copy(),
            disloc=np.zeros(n_eq),
            rate=_RATE_START,
            log_credit=float(np.log(_CREDIT_START)),
            bond_noise=np.zeros(n_b),
            x=u.x0.copy(),
        )

    def _simulate_chunk(self, index: int, state: _State) -> tuple[_Bars, _State]:
        """Simulate the bars of random block ``index`` from ``state``."""
        u = self.universe
        rng = np.random.default_rng([self.config.seed, _STREAM_BARS, index])
        z = _BarDraws.sample(rng, _BAR_CHUNK, u.n_equities, len(BONDS))
        codes = _markov_path(self._cumulative, state.regime, z.regime)
        if index == 0:
            codes[0] = state.regime
        p = {name: arr[codes] for name, arr in self._par.items()}
        paths = _recursions(state, p, z, self._returns(p, z), u.x0[: u.n_equities + 1])
        log_fund, disloc, rate, log_credit, noise = paths
        credit = np.exp(log_credit)
        yields = rate[:, None] + u.term_premium + u.credit_beta * credit[:, None] + noise
        x_close = np.c_[log_fund[:, : u.n_equities] + disloc, log_fund[:, u.n_equities], yields]
        bars = _Bars(
            first=index * _BAR_CHUNK,
            regime=codes,
            x_open=np.vstack([state.x, x_close[:-1]]),
            x_close=x_close,
            bridge_vol=self._bridge_vol(p, credit),
            spread_bps=u.spread_bps * p["spread_mult"][:, None] * np.exp(0.25 * z.spread - 0.03125),
            volume=u.volume_base * p["volume_mult"][:, None] * np.exp(0.3 * z.volume - 0.045),
            short_rate=rate,
            credit=credit,
        )
        end = _State(
            regime=int(codes[-1]), log_fund=log_fund[-1], disloc=disloc[-1], rate=float(rate[-1]),
            log_credit=float(log_credit[-1]), bond_noise=noise[-1], x=x_close[-1],
        )  # fmt: skip
        return bars, end

    def _returns(self, p: dict[str, FloatArray], z: _BarDraws) -> FloatArray:
        """Log-return shocks per bar of the equities (one-factor model) and the index."""
        n_eq = self.universe.n_equities
        vol, corr = p["vol"][:, None], p["corr"][:, None]
        factor = p["drift"] + p["vol"] * np.sqrt(p["corr"]) * z.market
        idio = vol * np.sqrt(1.0 - corr) * z.idio
        equities = self.universe.beta * factor[:, None] + idio[:, :n_eq]
        index = factor + 0.1 * idio[:, n_eq]
        return np.c_[equities, index]

    def _bridge_vol(self, p: dict[str, FloatArray], credit: FloatArray) -> FloatArray:
        """Intra-bar volatility per bar and instrument, in bridge space."""
        u = self.universe
        eq = np.repeat(p["vol"][:, None], u.n_equities, axis=1) * np.sqrt(
            u.beta**2 * p["corr"][:, None] + 1.0 - p["corr"][:, None]
        )
        index = p["vol"] * np.sqrt(p["corr"])
        credit_part = u.credit_beta * (credit * p["credit_vol"])[:, None]
        bonds = np.sqrt(p["rate_vol"][:, None] ** 2 + credit_part**2 + _BOND_NOISE_VOL**2)
        return np.c_[eq, index, bonds]

    # -- ticks ---------------------------------------------------------------------------

    def ticks(
        self,
        start_ns: int | None = None,
        *,
        count: int | None = None,
        duration_ns: int | None = None,
        tick_interval_ns: int = DEFAULT_TICK_INTERVAL_NS,
    ) -> Iterator[Record]:
        """MarketTick records in event-time order, from ``start_ns`` (default: the start).

        Every ``tick_interval_ns`` each instrument quotes once, staggered inside the
        interval in simulator order; ``tick_interval_ns`` must divide ``bar_ns``, and the
        ticks are reproducible for a given interval. Equities and the index quote on a
        0.01 grid; bonds quote unrounded with ``yield`` the yield of ``last``. ``size``
        splits the bar's volume over its ticks (the index: all equities' volume). Stops
        after ``count`` ticks or at ``start_ns + duration_ns`` (exclusive); endless if
        neither is given.
        """
        start = self._check_start(start_ns)
        rounds = self._rounds_per_bar(tick_interval_ns)
        if count is not None and count < 0:
            raise ValueError(f"ticks needs count >= 0, got {count}")
        if duration_ns is not None and duration_ns < 0:
            raise ValueError(f"ticks needs duration_ns >= 0, got {duration_ns}")
        end = None if duration_ns is None else start + duration_ns
        return self._tick_stream(start, end, count, rounds, tick_interval_ns)

    def _rounds_per_bar(self, tick_interval_ns: int) -> int:
        """Quote rounds per bar; the interval must divide the bar and fit every instrument."""
        bar_ns, n = self.config.bar_ns, self.universe.n
        if tick_interval_ns < n or bar_ns % tick_interval_ns:
            raise ValueError(
                f"tick_interval_ns must divide bar_ns ({bar_ns}) and be >= the number of "
                f"instruments ({n}), got {tick_interval_ns}"
            )
        rounds = bar_ns // tick_interval_ns
        if rounds * n > _MAX_TICKS_PER_BAR:
            raise ValueError(
                f"tick_interval_ns {tick_interval_ns} gives {rounds * n} ticks per bar; "
                f"at most {_MAX_TICKS_PER_BAR} fit in memory: use a longer interval or bar"
            )
        return rounds

    def _tick_stream(
        self, start: int, end: int | None, count: int | None, rounds: int, interval: int
    ) -> Iterator[Record]:
        """Generate tick records batch by batch until ``end`` or ``count``."""
        left = count
        group = self._tick_group(rounds)
        first = self._bar_of(start) // group * group
        for bars in self._blocks_from(first, group):
            if left == 0 or (end is not None and self._bar_start(bars.first) >= end):
                return
            records = self._tick_batch(bars, rounds, interval, start, end)
            if left is not None:
                records = records[:left]
                left -= len(records)
            yield from records

    def _tick_group(self, rounds: int) -> int:
        """Bars per tick batch: a power of two (so it divides the bar block) near 8k ticks."""
        fit = max(1, _TICKS_PER_BATCH // (rounds * self.universe.n))
        return min(1 << (fit.bit_length() - 1), _BAR_CHUNK)

    def _bar_start(self, bar: int) -> int:
        """Event time at which bar ``bar`` opens."""
        return self.config.start_ns + bar * self.config.bar_ns

    def _tick_batch(
        self, bars: _Bars, rounds: int, interval: int, lo: int, hi: int | None
    ) -> list[Record]:
        """Tick records of ``bars`` with ``lo <= ts_event < hi``."""
        u = self.universe
        z_path, z_spread, u_last, weight = self._tick_draws(bars.first, len(bars), rounds)
        ts = self._tick_times(bars, rounds, interval)
        x = _bridge(bars, z_path)
        half = 0.5e-4 * bars.spread_bps[:, None, :] * np.exp(0.15 * z_spread - 0.01125)
        bid, ask, last, yld = self._quotes(x, half, 0.9 * (2.0 * u_last - 1.0), ts)
        size = bars.volume[:, None, :] * weight / weight.sum(axis=1, keepdims=True)
        size = np.maximum(np.round(size), 1.0)

        flat_ts = ts.ravel()
        a = int(np.searchsorted(flat_ts, lo, side="left"))
        b = len(flat_ts) if hi is None else int(np.searchsorted(flat_ts, hi, side="left"))
        ids = u.ids * (len(flat_ts) // u.n)
        cols = (a_.ravel()[a:b].tolist() for a_ in (ts, bid, ask, last, size, yld))
        return [
            {"instrument_id": iid, "ts_event": t, "bid": bi, "ask": ak, "last": la,
             "size": sz, "yield": None if y != y else y, "venue": None}
            for iid, t, bi, ak, la, sz, y in zip(ids[a:b], *cols, strict=True)
        ]  # fmt: skip

    def _tick_draws(self, first: int, n_bars: int, rounds: int) -> tuple[FloatArray, ...]:
        """Random numbers for the ticks of a batch (keyed by its first bar and size)."""
        key = [self.config.seed, _STREAM_TICKS, rounds, n_bars, first]
        rng = np.random.default_rng(key)
        shape = (n_bars, rounds, self.universe.n)
        return (rng.standard_normal(shape), rng.standard_normal(shape), rng.random(shape),
                rng.standard_exponential(shape))  # fmt: skip

    def _tick_times(self, bars: _Bars, rounds: int, interval: int) -> npt.NDArray[np.int64]:
        """Event times, shape (bars, rounds, instruments)."""
        n = self.universe.n
        bar_index = np.arange(bars.first, bars.first + len(bars), dtype=np.int64)
        bar0 = self.config.start_ns + bar_index * self.config.bar_ns
        offsets = np.arange(n, dtype=np.int64) * interval // n
        steps = np.arange(rounds, dtype=np.int64) * interval
        return np.asarray(bar0[:, None, None] + steps[None, :, None] + offsets, dtype=np.int64)

    def _quotes(
        self, x: FloatArray, half: FloatArray, displace: FloatArray, ts: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Bid, ask, last and yield (NaN off bonds) from mids in bridge space."""
        u = self.universe
        bonds = u.bonds
        mid = self._prices(x, ts[..., bonds])
        tick = np.where(mid >= 1.0, 0.01, 0.0001)
        bid = np.round(np.floor(mid * (1.0 - half) / tick) * tick, 6)
        ask = np.round(np.ceil(mid * (1.0 + half) / tick) * tick, 6)
        ask = np.where(ask > bid, ask, bid + tick)
        last = np.clip(np.round(np.round(mid * (1.0 + displace * half) / tick) * tick, 6), bid, ask)
        # Bonds: unrounded quotes, and the yield of the last price.
        bond_mid = mid[..., bonds]
        bid[..., bonds] = bond_mid * (1.0 - half[..., bonds])
        ask[..., bonds] = bond_mid * (1.0 + half[..., bonds])
        last[..., bonds] = bond_mid * (1.0 + displace[..., bonds] * half[..., bonds])
        years = year_fraction_30_360(ts[..., bonds], u.maturity_ns)
        yld = np.full_like(mid, np.nan)
        yld[..., bonds] = bond_yield(last[..., bonds], u.coupon, years, guess=x[..., bonds])
        return bid, ask, last, yld

    # -- proposals and fills -------------------------------------------------------------

    def proposals(
        self,
        portfolios: int | Sequence[str] = 4,
        *,
        start_ns: int | None = None,
        rate_per_s: float = 20.0,
        count: int | None = None,
        duration_ns: int | None = None,
        seed: int | None = None,
        limit_share: float = 0.25,
        oversize_share: float = 0.03,
    ) -> Iterator[Record]:
        """TradeProposal records, Poisson arrivals at ``rate_per_s`` of event time.

        Portfolios are ``portfolios`` ids, or ``PF-001``.. when a number. Quantities are
        lot multiples sized from the mark of the last closed bar (no look-ahead); a share
        ``limit_share`` carries a limit price near that mark, and a share
        ``oversize_share`` asks for 10-40 % of ADV so that limits fire. ``seed`` picks
        an independent order flow in the same world (default: the world's seed); ids are
        ``PRP-<seed>-<n>``. Stops after ``count`` or at ``start_ns + duration_ns``.
        """
        start = self._check_start(start_ns)
        books = portfolio_ids(portfolios)
        if rate_per_s <= 0:
            raise ValueError(f"proposals needs rate_per_s > 0, got {rate_per_s}")
        if not (0.0 <= limit_share <= 1.0 and 0.0 <= oversize_share <= 1.0):
            raise ValueError("limit_share and oversize_share must be within [0, 1]")
        flow = _OrderFlow(
            seed=self.config.seed if seed is None else seed, portfolios=books,
            rate_per_s=rate_per_s, limit_share=limit_share, oversize_share=oversize_share,
        )  # fmt: skip
        end = None if duration_ns is None else start + duration_ns
        return self._proposal_stream(flow, start, end, count)

    def _proposal_stream(
        self, flow: _OrderFlow, start: int, end: int | None, count: int | None
    ) -> Iterator[Record]:
        """Generate proposals block by block."""
        last_ts, n, block = start, 0, 0
        while True:
            records, last_ts = self._proposal_block(flow, block, last_ts, n)
            for rec in records:
                if (count is not None and n >= count) or (
                    end is not None and rec["ts_event"] >= end
                ):
                    return
                n += 1
                yield rec
            block += 1

    def _proposal_block(
        self, flow: _OrderFlow, block: int, last_ts: int, n0: int
    ) -> tuple[list[Record], int]:
        """One block of 256 proposals after ``last_ts``; numbering starts at ``n0``."""
        u, size = self.universe, 256
        rng = np.random.default_rng([flow.seed, _STREAM_PROPOSALS, block])
        gaps = np.maximum(rng.exponential(NS_PER_SECOND / flow.rate_per_s, size), 1).astype(
            np.int64
        )
        ts = last_ts + np.cumsum(gaps)
        tradable = u.tradable
        weights = np.where(tradable < u.n_equities, 0.8 / u.n_equities, 0.2 / len(BONDS))
        inst = rng.choice(tradable, size, p=weights / weights.sum())
        book = rng.integers(0, len(flow.portfolios), size)
        buy = rng.random(size) < 0.55
        is_limit = rng.random(size) < flow.limit_share
        oversize = rng.random(size) < flow.oversize_share
        notional = np.exp(rng.normal(np.log(150_000.0), 0.8, size))
        adv_frac = rng.uniform(0.10, 0.40, size)
        limit_off = rng.uniform(-0.004, 0.001, size)
        strategy = rng.integers(0, len(_STRATEGIES), size)

        mark = self.marks(ts)[np.arange(size), inst]
        unit_cash = mark * u.face_value[inst]
        adv = np.array([u.records[i]["adv"] for i in inst])
        notional = np.where(oversize, adv_frac * adv * unit_cash, notional)
        lots = np.maximum(np.round(notional / unit_cash / u.lot[inst]), 1.0)
        quantity = lots * u.lot[inst]
        limit = mark * (1.0 + np.where(buy, limit_off, -limit_off))
        limit = np.where(inst < u.n_equities, np.round(limit, 2), np.round(limit, 3))
        out = [
            {"proposal_id": f"PRP-{flow.seed}-{n0 + k:08d}",
             "portfolio_id": flow.portfolios[book[k]], "instrument_id": u.ids[inst[k]],
             "side": "BUY" if buy[k] else "SELL", "quantity": float(quantity[k]),
             "limit_price": float(limit[k]) if is_limit[k] else None,
             "strategy": _STRATEGIES[strategy[k]], "ts_event": int(ts[k])}
            for k in range(size)
        ]  # fmt: skip
        return out, int(ts[-1])

    def marks(self, ts_ns: npt.ArrayLike) -> FloatArray:
        """Mid of every instrument at the last bar close at or before each time.

        Shape (len(ts_ns), n instruments), simulator order; before the first close, the
        opening prices. Bond prices use the close yield at the given time.
        """
        ts = np.atleast_1d(np.asarray(ts_ns, dtype=np.int64))
        bar = (ts - self.config.start_ns) // self.config.bar_ns - 1
        x = np.empty((len(ts), self.universe.n))
        for i, k in enumerate(bar.tolist()):
            x[i] = self.universe.x0 if k < 0 else self._close_x(k)
        return self._prices(x, ts[:, None])

    def _close_x(self, bar: int) -> FloatArray:
        """Bridge-space close of bar ``bar``."""
        chunk = self._chunk(bar // _BAR_CHUNK)
        return chunk.x_close[bar - chunk.first]

    def fill(
        self,
        proposal: Mapping[str, Any],
        *,
        quantity: float | None = None,
        latency_ns: int = 1_000_000,
    ) -> Record:
        """Execution record filling ``proposal`` (its limit, else the mark across the spread)."""
        iid = str(proposal["instrument_id"])
        if iid not in self.universe.ids:
            raise ValueError(
                f"fill: instrument {iid!r} is not simulated; known: {self.universe.ids}"
            )
        j = self.universe.ids.index(iid)
        ts = int(proposal["ts_event"])
        mark = float(self.marks(ts)[0, j])
        bar = max(self._bar_of(ts) - 1, 0)
        chunk = self._chunk(bar // _BAR_CHUNK)
        half = 0.5e-4 * float(chunk.spread_bps[bar - chunk.first, j])
        sign = 1.0 if proposal["side"] == "BUY" else -1.0
        limit = proposal.get("limit_price")
        price = float(limit) if limit is not None else mark * (1.0 + sign * half)
        return {
            "execution_id": f"EXE-{proposal['proposal_id']}",
            "portfolio_id": proposal["portfolio_id"],
            "instrument_id": proposal["instrument_id"],
            "side": proposal["side"],
            "quantity": float(proposal["quantity"] if quantity is None else quantity),
            "price": round(price, 6),
            "proposal_id": proposal["proposal_id"],
            "ts_event": ts + latency_ns,
        }

    def initial_executions(
        self,
        portfolios: int | Sequence[str] = 4,
        *,
        notional: float = 10_000_000.0,
        ts_event: int | None = None,
    ) -> list[Record]:
        """Opening fills that give each portfolio a diversified book of about ``notional``.

        70 % equities, 30 % bonds, no instrument above about 15 %; at opening prices.
        """
        u = self.universe
        ts = self.config.start_ns if ts_event is None else int(ts_event)
        rng = np.random.default_rng([self.config.seed, _STREAM_BOOKS])
        tradable = u.tradable
        base = np.where(tradable < u.n_equities, 0.7 / u.n_equities, 0.3 / len(BONDS))
        price = self._prices(u.x0, ts)
        out: list[Record] = []
        for book in portfolio_ids(portfolios):
            weights = base * rng.uniform(0.7, 1.3, len(tradable))
            cash = notional * weights / weights.sum()
            for j, c in zip(tradable.tolist(), cash.tolist(), strict=True):
                lots = max(round(c / (price[j] * u.face_value[j]) / u.lot[j]), 1)
                out.append({
                    "execution_id": f"EXE-{self.config.seed}-INIT-{book}-{u.ids[j]}",
                    "portfolio_id": book, "instrument_id": u.ids[j], "side": "BUY",
                    "quantity": float(lots * u.lot[j]), "price": round(float(price[j]), 6),
                    "proposal_id": None, "ts_event": ts,
                })  # fmt: skip
        return out


_STRATEGIES = ("momentum", "mean_reversion", "market_making", "hedging", "rebalance")


@dataclass(frozen=True)
class _OrderFlow:
    """Parameters of one proposal stream."""

    seed: int
    portfolios: tuple[str, ...]
    rate_per_s: float
    limit_share: float
    oversize_share: float


def portfolio_ids(portfolios: int | Sequence[str]) -> tuple[str, ...]:
    """Portfolio ids: the given ones, or ``PF-001``..``PF-<n>`` for a number ``n``."""
    if isinstance(portfolios, int):
        if portfolios < 1:
            raise ValueError(f"need at least one portfolio, got {portfolios}")
        return tuple(f"PF-{i + 1:03d}" for i in range(portfolios))
    books = tuple(portfolios)
    if not books:
        raise ValueError("need at least one portfolio id")
    return books


@dataclass(frozen=True)
class _BarDraws:
    """Random numbers of one block of bars, drawn in a fixed order."""

    regime: FloatArray
    market: FloatArray
    idio: FloatArray
    jump: FloatArray
    rate: FloatArray
    credit: FloatArray
    bond: FloatArray
    spread: FloatArray
    volume: FloatArray

    @classmethod
    def sample(cls, rng: np.random.Generator, nb: int, n_eq: int, n_bonds: int) -> _BarDraws:
        """Draw everything a block of ``nb`` bars needs."""
        n = n_eq + 1 + n_bonds
        return cls(
            regime=rng.random(nb), market=rng.standard_normal(nb),
            idio=rng.standard_normal((nb, n_eq + 1)), jump=rng.random((nb, n_eq)),
            rate=rng.standard_normal(nb), credit=rng.standard_normal(nb),
            bond=rng.standard_normal((nb, n_bonds)), spread=rng.standard_normal((nb, n)),
            volume=rng.standard_normal((nb, n)),
        )  # fmt: skip


def _recursions(
    state: _State, p: dict[str, FloatArray], z: _BarDraws, returns: FloatArray, anchor: FloatArray
) -> tuple[FloatArray, ...]:
    """Bar-by-bar paths: log prices, dislocations, short rate, log credit, bond noise.

    Log prices follow the return shocks with a weak pull to ``anchor``; dislocations
    jump (TECHNICAL_DISLOCATION) and decay; rate and log credit are OU processes with
    regime drifts; bond noise is AR(1).
    """
    nb = len(z.rate)
    jump_hit = z.jump < p["jump_prob"][:, None]
    jump_sign = np.where(z.jump < p["jump_prob"][:, None] / 2, 1.0, -1.0)
    jumps = np.where(jump_hit, p["jump_size"][:, None] * jump_sign, 0.0)
    rate_step = p["rate_drift"] + p["rate_vol"] * z.rate
    credit_step = p["credit_drift"] + p["credit_vol"] * z.credit
    out = [np.empty((nb, *np.shape(v))) for v in _state_paths(state)]
    f, d, r, c, e = _state_paths(state)
    log_mean = np.log(_CREDIT_MEAN)
    for k in range(nb):
        f = f + returns[k] - _PRICE_KAPPA * (f - anchor)
        d = _DISLOCATION_PHI * d + jumps[k]
        r = r + _RATE_KAPPA * (_RATE_MEAN - r) + rate_step[k]
        c = c + _CREDIT_KAPPA * (log_mean - c) + credit_step[k]
        e = _BOND_NOISE_PHI * e + _BOND_NOISE_VOL * z.bond[k]
        for path, value in zip(out, (f, d, r, c, e), strict=True):
            path[k] = value
    return tuple(out)


def _state_paths(state: _State) -> tuple[Any, ...]:
    """The recursive parts of a state: log prices, dislocations, rate, log credit, noise."""
    return state.log_fund, state.disloc, state.rate, state.log_credit, state.bond_noise


def _bridge(bars: _Bars, z: FloatArray) -> FloatArray:
    """Brownian bridges from each bar's open to its close; shape (bars, rounds, n)."""
    rounds = z.shape[1]
    frac = (np.arange(1, rounds + 1) / rounds)[None, :, None]
    walk = np.cumsum(z, axis=1) * (bars.bridge_vol / np.sqrt(rounds))[:, None, :]
    bridge = walk - frac * walk[:, -1:, :]
    x = bars.x_open[:, None, :] + frac * (bars.x_close - bars.x_open)[:, None, :] + bridge
    x[:, -1, :] = bars.x_close
    return x


def merge_by_ts(*streams: Iterable[Record]) -> Iterator[Record]:
    """Merge record streams that are each sorted by ``ts_event`` (ties: argument order)."""
    return heapq.merge(*streams, key=lambda r: int(r["ts_event"]))
