"""``riskstream backtest``: the pre-trade flow over real daily history, with a strategy.

The backtest feeds the *same* dataflow as ``riskstream run`` (``build_pretrade_flow`` in
replay mode, in process, one worker) with a daily price history (a dataset that ships in
a PyPI package, or an Avro / CSV / Parquet file) as four ticks a day, and proposals from a
strategy or a file. It closes the loop a trading system would: a proposal made after a
day's close is decided once the next day's open is seen, and its allowed quantity is
filled at that open (an ``Execution`` into the flow), so the book the flow holds is the
book the strategy holds. The source waits for each decision, and for the flow's book
write of each fill, before it moves on: the run is deterministic.

Outputs: an HTML report (``dataflows.report``) and a JSON of its metrics. The VaR
backtest compares the flow's 1-day 95% VaR of the book (``var_before`` of the day's
proposal; the same formula from the flow's own ``daily_vol`` feature on days without
one) and the instrument's historical VaR (``var_hist_0.95_1``) with the next day's
hypothetical P&L (the book held at the close, no trades), then runs Kupiec,
Christoffersen and the Basel traffic light (``operators.var_backtest``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.settings import Settings
from operators.errors import ConfigError, InvalidRecord, RiskstreamError
from operators.records import DeadLetterItem, Decided, StateWrite
from operators.var_backtest import Backtest, backtest, exceptions

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 1_000_000_000
MIN_DATE = pd.Timestamp("2000-01-01", tz="UTC")
"""The flow rejects event times before 2000 (operators.validate); history before is skipped."""
Z95 = 1.6448536269514722
Z99 = 2.3263478740408408
STRATEGIES = ("momentum", "rebalance")
WAIT_LIMIT_S = 30.0
"""How long the source waits for one decision or book write before giving up (a bug)."""
PORTFOLIO = "BT-001"

Record = dict[str, Any]


class BacktestError(RiskstreamError):
    """The backtest could not run (bad data, or the flow did not answer)."""


# --------------------------------------------------------------------------- data


def _lower_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(
        columns={c: str(c).strip().lower().replace(" ", "_") for c in frame.columns}
    )


def _to_utc_index(values: pd.Series | pd.Index) -> pd.DatetimeIndex:
    if pd.api.types.is_numeric_dtype(values):
        n = np.asarray(values, dtype=np.int64)
        scale = np.where(
            n < 10**11, 10**9, np.where(n < 10**14, 10**6, np.where(n < 10**17, 10**3, 1))
        )
        return pd.DatetimeIndex(pd.to_datetime(n * scale, utc=True))
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True))


def tidy_daily(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Daily open/high/low/close/volume indexed by UTC dates, from a loosely named table.

    Dates: a ``date``/``datetime``/``timestamp``/``time``/``ts_event`` column, or the
    index. Prices: ``close`` (or ``adj_close``/``price``/``last``); missing open, high or
    low repeat the close; missing volume is NaN.
    """
    df = _lower_columns(frame)
    date_col = next(
        (c for c in ("date", "datetime", "timestamp", "time", "ts_event") if c in df), None
    )
    index = _to_utc_index(df[date_col]) if date_col else _to_utc_index(df.index.to_series())
    close_col = next((c for c in ("close", "adj_close", "price", "last") if c in df), None)
    if close_col is None:
        raise ConfigError(
            f"{source}: no close column (close, adj_close, price or last); columns: {list(df)}"
        )
    close = pd.to_numeric(df[close_col], errors="coerce").to_numpy(dtype=float)
    out = pd.DataFrame(index=index.normalize().rename("date"))
    for name in ("open", "high", "low"):
        values = (
            pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float) if name in df else close
        )
        out[name] = np.where(np.isfinite(values), values, close)
    out["close"] = close
    vol = (
        pd.to_numeric(df["volume"], errors="coerce").to_numpy(dtype=float)
        if "volume" in df
        else np.nan
    )
    out["volume"] = vol
    out = out[np.isfinite(out["close"]) & (out["close"] > 0)].sort_index()
    out["high"] = out[["open", "high", "low", "close"]].max(axis=1)
    out["low"] = out[["open", "high", "low", "close"]].min(axis=1)
    return out[~out.index.duplicated(keep="last")]


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise ConfigError(f"reading Parquet needs pyarrow or fastparquet: {exc}") from None
    if suffix == ".avro":
        import fastavro

        with path.open("rb") as fo:
            try:
                return pd.DataFrame.from_records(list(fastavro.reader(fo)))
            except ValueError as exc:
                raise ConfigError(f"{path}: not an Avro container file: {exc}") from None
    raise ConfigError(f"{path}: unsupported file type {suffix!r}; use .csv, .parquet or .avro")


def load_dataset(spec: str) -> tuple[str, pd.DataFrame, str]:
    """(instrument id, daily OHLCV frame, description) of a packaged dataset or a file."""
    from models.datasets import DAILY_DATASETS, describe_daily, load_daily

    if spec in DAILY_DATASETS:
        return spec.upper(), load_daily(spec), describe_daily()[spec]
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"--dataset {spec!r}: not a packaged dataset ({', '.join(DAILY_DATASETS)})"
            " nor an existing .csv, .parquet or .avro file"
        )
    frame = tidy_daily(_read_table(path), str(path))
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in path.stem.upper())
    return name[:64] or "FILE", frame, f"daily prices from {path.name}"


def select_period(frame: pd.DataFrame, start_ns: int | None, end_ns: int | None) -> pd.DataFrame:
    """Rows in ``[start, end)`` and on or after 2000-01-01 (what the flow accepts)."""
    index_ns = frame.index.as_unit("ns").asi8
    keep = index_ns >= MIN_DATE.value
    if start_ns is not None:
        keep &= index_ns >= start_ns
    if end_ns is not None:
        keep &= index_ns < end_ns
    return frame[keep]


# --------------------------------------------------------------------------- proposals


@dataclass
class DeskBook:
    """The backtest's own record of each portfolio (it makes every fill, so it knows)."""

    capital: float
    cash: dict[str, float] = field(default_factory=dict)
    position: dict[str, float] = field(default_factory=dict)

    def apply(self, portfolio: str, side: str, quantity: float, price: float) -> None:
        """Apply one fill."""
        signed = quantity if side == "BUY" else -quantity
        self.position[portfolio] = self.position.get(portfolio, 0.0) + signed
        self.cash[portfolio] = self.cash.get(portfolio, self.capital) - signed * price

    def value(self, portfolio: str, price: float) -> float:
        """Cash plus the position at ``price``."""
        return self.cash.get(portfolio, self.capital) + self.position.get(portfolio, 0.0) * price

    def total_position(self) -> float:
        """Net position over every portfolio."""
        return math.fsum(self.position.values())


class Strategy:
    """Daily target-weight trading after the close.

    ``momentum`` holds ``target_weight`` of the portfolio while the close is above its
    200-day average (else nothing); ``rebalance`` always holds it. Each day it proposes the
    difference to the target, in whole lots.
    """

    def __init__(self, name: str, closes: np.ndarray, target_weight: float, lot: float = 1.0):
        if name not in STRATEGIES:
            raise ConfigError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
        if not 0 < target_weight <= 1:
            raise ConfigError(f"--target-weight must be in (0, 1], got {target_weight}")
        self.name = name
        self.target_weight = target_weight
        self.lot = lot
        if name == "momentum":
            sma = pd.Series(closes).rolling(200, min_periods=200).mean().to_numpy()
            self.invested = np.isfinite(sma) & (closes > np.nan_to_num(sma, nan=np.inf))
        else:
            self.invested = np.ones(len(closes), dtype=bool)

    def order(
        self, day: int, close: float, book: DeskBook, portfolio: str
    ) -> tuple[str, float] | None:
        """(side, quantity) to trade after day ``day``'s close, or None."""
        weight = self.target_weight if self.invested[day] else 0.0
        target = math.floor(weight * book.value(portfolio, close) / close / self.lot) * self.lot
        diff = target - book.position.get(portfolio, 0.0)
        if abs(diff) < self.lot:
            return None
        return ("BUY" if diff > 0 else "SELL"), abs(diff)

    def describe(self) -> str:
        """One line."""
        rule = "while close > SMA(200), else flat" if self.name == "momentum" else "always"
        weight = f"{self.target_weight:.0%} of portfolio value"
        return f"{self.name}: {weight} {rule}, daily, at the next open"


def read_proposals(path: Path, instrument_id: str) -> list[Record]:
    """TradeProposal records from a file, checked like the flow checks them.

    Each row has ``side``, ``quantity`` and ``ts_event`` (ns) or ``date`` (after that
    day's close); optionally ``proposal_id``, ``portfolio_id``, ``limit_price``.
    """
    from operators.validate import validate

    df = _lower_columns(_read_table(path))
    missing = [c for c in ("side", "quantity") if c not in df]
    if missing or not ({"ts_event", "date"} & set(df)):
        raise ConfigError(
            f"{path}: proposals need side, quantity and ts_event (ns) or date; missing"
            f" {missing or ['ts_event or date']}"
        )
    out: list[Record] = []
    for i, row in enumerate(df.to_dict("records")):
        if "ts_event" in row and pd.notna(row["ts_event"]):
            ts = int(row["ts_event"])
        else:
            day = pd.Timestamp(row["date"])
            day = day.tz_localize("UTC") if day.tzinfo is None else day.tz_convert("UTC")
            ts = int(day.normalize().value) + NS_PER_DAY + 1000  # after that day's close
        inst = row.get("instrument_id") or instrument_id
        if inst != instrument_id:
            raise ConfigError(
                f"{path} row {i + 1}: proposal for {inst!r}, but this backtest trades only"
                f" {instrument_id!r}"
            )
        rec = {
            "proposal_id": str(row.get("proposal_id") or f"FILE-{i:06d}"),
            "portfolio_id": str(row.get("portfolio_id") or PORTFOLIO),
            "instrument_id": inst,
            "side": str(row["side"]).upper(),
            "quantity": float(row["quantity"]),
            "limit_price": None
            if pd.isna(row.get("limit_price", None))
            else float(row["limit_price"]),
            "strategy": str(row.get("strategy") or "file"),
            "ts_event": ts,
        }
        try:
            validate("TradeProposal", rec)
        except InvalidRecord as exc:
            raise ConfigError(f"{path} row {i + 1}: {exc}") from None
        out.append(rec)
    ids = Counter(r["proposal_id"] for r in out)
    repeated = [k for k, n in ids.items() if n > 1]
    if repeated:
        raise ConfigError(f"{path}: repeated proposal_id {repeated[:5]}")
    return sorted(out, key=lambda r: (r["ts_event"], r["proposal_id"]))


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopState:
    """What the sinks saw, for the source to wait on (one worker, one thread)."""

    decisions: dict[str, Record] = field(default_factory=dict)
    dead_letters: list[Record] = field(default_factory=list)
    book_ts: dict[str, int] = field(default_factory=dict)
    """Newest book write per portfolio (ts_event)."""
    bars: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """(bar end, fields) of every ``instrument:`` state write."""
    regime_events: list[Record] = field(default_factory=list)
    """RegimeEvent records, where the flow emits them."""


@dataclass(frozen=True)
class Wait:
    """The source pauses until ``ready()``; ``what`` names it if it never is."""

    ready: Callable[[], bool]
    what: str


class _LoopPartition(StatefulSourcePartition[Any, None]):
    def __init__(self, steps: Iterator[list[Any] | Wait]) -> None:
        self._steps = steps
        self._wait: Wait | None = None
        self._since = 0.0

    def next_batch(self) -> list[Any]:
        if self._wait is not None:
            if not self._wait.ready():
                if time.monotonic() - self._since > WAIT_LIMIT_S:
                    raise BacktestError(f"the flow did not answer: {self._wait.what}")
                return []
            self._wait = None
        step = next(self._steps)  # StopIteration ends the input
        if isinstance(step, Wait):
            self._wait, self._since = step, time.monotonic()
            return []
        return step

    def snapshot(self) -> None:
        return None


class _LoopSource(FixedPartitionedSource[Any, None]):
    def __init__(self, steps: Iterator[list[Any] | Wait]) -> None:
        self.steps = steps

    def list_parts(self) -> list[str]:
        return ["backtest"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _LoopPartition:
        return _LoopPartition(self.steps)


class _CallbackPartition(StatelessSinkPartition[Any]):
    def __init__(self, fn: Callable[[list[Any]], None]) -> None:
        self._fn = fn

    def write_batch(self, items: list[Any]) -> None:
        self._fn(items)


class CallbackSink(DynamicSink[Any]):
    """Hands every batch to a function (in process)."""

    def __init__(self, fn: Callable[[list[Any]], None]) -> None:
        self.fn = fn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition:
        return _CallbackPartition(self.fn)


@dataclass
class Driver:
    """Generates the input of the flow day by day and fills what the flow allows."""

    instrument_id: str
    frame: pd.DataFrame
    settings: Settings
    strategy: Strategy | None
    file_proposals: list[Record]
    state: LoopState = field(default_factory=LoopState)
    fills: list[Record] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)
    """Net position held after each day's close (index = day)."""
    events: int = 0

    def __post_init__(self) -> None:
        from schemas.codec import SingleObjectCodec

        self.codec = SingleObjectCodec()
        self.topics = {kind: topic for topic, kind in self.settings.topics.input_kinds().items()}
        self.book = DeskBook(self.settings.portfolio_capital)
        self._offsets: Counter[str] = Counter()

    def _msg(self, kind: str, record: Record, key: str) -> KafkaSourceMessage:
        topic = self.topics[kind]
        offset = self._offsets[topic]
        self._offsets[topic] += 1
        self.events += 1
        return KafkaSourceMessage(
            key=key.encode(),
            value=self.codec.encode(kind, record),
            topic=topic,
            partition=0,
            offset=offset,
            timestamp=(1, record["ts_event"] // 1_000_000),
        )

    def steps(self) -> Iterator[list[Any] | Wait]:
        """The input, step by step, waiting on the flow where a trading system would."""
        from models.datasets import daily_to_records

        instrument, ticks = daily_to_records(self.frame, self.instrument_id)
        instrument["ts_event"] = int(self.frame.index[0].value)
        yield [self._msg("Instrument", instrument, self.instrument_id)]
        closes = self.frame["close"].to_numpy(dtype=float)
        queued = list(self.file_proposals)
        pending: list[Record] = []
        batch: list[Any] = []
        made = 0
        for n, tick in enumerate(ticks):
            day, slot = divmod(n, 4)
            while queued and queued[0]["ts_event"] < tick["ts_event"]:
                p = queued.pop(0)
                batch.append(self._msg("TradeProposal", p, p["portfolio_id"]))
                pending.append(p)
            batch.append(self._msg("MarketTick", tick, self.instrument_id))
            if pending:  # this tick is after every pending proposal: they are released
                yield batch
                batch = []
                for p in pending:
                    pid = p["proposal_id"]
                    yield Wait(self._decided(pid), f"decision of {pid}")
                    allowed = float(self.state.decisions[pid]["allowed_quantity"])
                    if allowed > 0:
                        yield from self._fill(p, allowed, tick)
                pending = []
            if slot == 3:
                self.positions.append(self.book.total_position())
                if self.strategy is not None:
                    order = self.strategy.order(day, closes[day], self.book, PORTFOLIO)
                    if order is not None:
                        made += 1
                        p = self._proposal(made, order, int(self.frame.index[day].value))
                        pending.append(p)
                        batch.append(self._msg("TradeProposal", p, PORTFOLIO))
        batch.extend(self._msg("TradeProposal", p, p["portfolio_id"]) for p in queued)
        if batch:
            yield batch

    def _decided(self, pid: str) -> Callable[[], bool]:
        return lambda: pid in self.state.decisions

    def _proposal(self, n: int, order: tuple[str, float], day_ns: int) -> Record:
        side, qty = order
        return {
            "proposal_id": f"BT-{n:06d}",
            "portfolio_id": PORTFOLIO,
            "instrument_id": self.instrument_id,
            "side": side,
            "quantity": float(qty),
            "limit_price": None,
            "strategy": self.strategy.name if self.strategy else None,
            # just after midnight following the close: the day's bar has ended
            "ts_event": day_ns + NS_PER_DAY + 1000,
        }

    def _fill(self, p: Record, quantity: float, tick: Record) -> Iterator[list[Any] | Wait]:
        fill = {
            "execution_id": f"X-{p['proposal_id']}",
            "portfolio_id": p["portfolio_id"],
            "instrument_id": p["instrument_id"],
            "side": p["side"],
            "quantity": quantity,
            "price": float(tick["last"]),
            "proposal_id": p["proposal_id"],
            "ts_event": int(tick["ts_event"]),
        }
        self.book.apply(p["portfolio_id"], p["side"], quantity, float(tick["last"]))
        self.fills.append(fill)
        yield [self._msg("Execution", fill, p["portfolio_id"])]
        pf, ts = p["portfolio_id"], fill["ts_event"]
        yield Wait(
            lambda: self.state.book_ts.get(pf, -1) >= ts, f"book write of {fill['execution_id']}"
        )

    # sinks ------------------------------------------------------------------

    def on_decisions(self, items: list[Decided]) -> None:
        """Scores sink."""
        for d in items:
            self.state.decisions[d.record["proposal_id"]] = d.record

    def on_dead_letters(self, items: list[DeadLetterItem]) -> None:
        """Dead-letter sink."""
        self.state.dead_letters.extend(d.record for d in items)

    def on_regimes(self, items: list[Any]) -> None:
        """Regime-event sink (where the flow has one)."""
        self.state.regime_events.extend(dict(r.record) for r in items)

    def on_state(self, items: list[StateWrite]) -> None:
        """State sink: book writes (acks of fills) and bar features."""
        for w in items:
            kind, _, name = w.key.partition(":")
            if kind == "book":
                self.state.book_ts[name] = max(self.state.book_ts.get(name, -1), w.ts_event)
            elif kind == "instrument":
                self.state.bars.append((w.ts_event, w.fields))


def backtest_settings(settings: Settings) -> Settings:
    """Daily bars, one bar a day, and market data up to four days old (weekends)."""
    return settings.model_copy(
        update={"bar_interval_s": 86_400.0, "bars_per_day": 1.0, "stale_after_s": 4 * 86_400.0}
    )


def run_flow(driver: Driver) -> None:
    """Run the pre-trade flow in process over the driver's input."""
    from bytewax.testing import run_main

    from dataflows.pretrade import build_pretrade_flow
    from dataflows.replay import pretrade_sinks
    from schemas.codec import SingleObjectCodec

    config = driver.settings.engine_config(wait_for_data=True)
    sinks = pretrade_sinks(
        CallbackSink(driver.on_decisions),
        CallbackSink(driver.on_dead_letters),
        CallbackSink(driver.on_state),
        CallbackSink(driver.on_regimes),
    )
    flow = build_pretrade_flow(
        _LoopSource(driver.steps()),
        sinks,
        config,
        SingleObjectCodec(),
        driver.settings.topics.input_kinds(),
    )
    run_main(flow)


# --------------------------------------------------------------------------- analysis


@dataclass
class VarSeries:
    """One VaR model's daily forecasts against the next day's P&L."""

    name: str
    label: str
    confidence: float
    dates: list[int]
    var: list[float]
    pnl: list[float]
    result: Backtest | None = None
    last_250: Backtest | None = None

    @property
    def hits(self) -> list[bool]:
        """Exception indicators."""
        return exceptions(self.var, self.pnl)

    def run(self) -> VarSeries:
        """Backtest over the whole sample and its last 250 days."""
        if self.var:
            hits = self.hits
            self.result = backtest(hits, self.confidence)
            self.last_250 = backtest(hits[-250:], self.confidence)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "observations": len(self.var),
            "first_date": _date(self.dates[0]) if self.dates else None,
            "last_date": _date(self.dates[-1]) if self.dates else None,
            "full_sample": self.result.to_dict() if self.result else None,
            "last_250_days": self.last_250.to_dict() if self.last_250 else None,
        }


def _date(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d")


def _float(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name, "nan"))
    except ValueError:
        return math.nan


def var_series(driver: Driver, decisions: list[Record]) -> tuple[list[VarSeries], dict[str, Any]]:
    """The EWMA-normal (flow) and historical VaR series, and how many var_before matched."""
    frame = driver.frame
    days = frame.index.as_unit("ns").asi8
    closes = frame["close"].to_numpy(dtype=float)
    bars = {end - NS_PER_DAY: f for end, f in driver.state.bars}  # keyed by the bar's day
    by_day = {}
    for d in decisions:
        by_day[d["ts_event"] - 1000 - NS_PER_DAY] = d
    z = driver.settings.engine_config().var_confidence_z
    normal = VarSeries("ewma_normal_95", "Flow VaR (EWMA normal, 95%)", 0.95, [], [], [])
    hist = VarSeries("historical_95", "Historical VaR (250 days, 95%)", 0.95, [], [], [])
    scaled = VarSeries("ewma_normal_99", "Flow VaR scaled to 99% (normal)", 0.99, [], [], [])
    checked = agreed = 0
    for i in range(len(days) - 1):
        q = driver.positions[i]
        fields = bars.get(int(days[i]))
        if not q or fields is None:
            continue
        vol = _float(fields, "daily_vol")
        var_hist = _float(fields, "var_hist_0.95_1")
        if not (math.isfinite(vol) and vol > 0 and math.isfinite(var_hist)):
            continue  # warm-up: both models need their history
        exposure = q * closes[i]
        flow_var = z * abs(exposure) * vol
        decided = by_day.get(int(days[i]))
        if decided is not None and decided.get("var_before") is not None:
            checked += 1
            agreed += math.isclose(decided["var_before"], flow_var, rel_tol=1e-9, abs_tol=1e-6)
            flow_var = float(decided["var_before"])
        pnl = q * (closes[i + 1] - closes[i])
        for series, var in (
            (normal, flow_var),
            (hist, -var_hist * abs(exposure) if q > 0 else math.nan),
            (scaled, flow_var * Z99 / Z95),
        ):
            if math.isfinite(var):
                series.dates.append(int(days[i]))
                series.var.append(var)
                series.pnl.append(pnl)
    return [s.run() for s in (normal, hist, scaled)], {"checked": checked, "agreed": agreed}


def flow_regimes(frame: pd.DataFrame, events: list[Record]) -> tuple[list[str], np.ndarray] | None:
    """The flow's own regime probabilities by day (RegimeEvents at bar closes), if any."""
    if not events:
        return None
    labels = [p["regime"] for p in events[0]["probabilities"]]
    days = {int(d): i for i, d in enumerate(frame.index.as_unit("ns").asi8)}
    probs = np.full((len(frame), len(labels)), np.nan)
    for e in events:
        i = days.get(int(e["ts_event"]) - NS_PER_DAY)  # a bar closes at the next midnight
        if i is not None:
            by_name = {p["regime"]: p["probability"] for p in e["probabilities"]}
            probs[i] = [by_name.get(name, np.nan) for name in labels]
    if not np.isfinite(probs).any():
        return None
    return labels, probs


def regime_probabilities(frame: pd.DataFrame, k: int) -> tuple[list[str], np.ndarray] | None:
    """Causal Markov-switching probabilities of ``k`` volatility states, calm first.

    Filtered probabilities of a switching-variance MarkovRegression of daily log returns;
    None if the fit fails.

    The flow does not emit regime events yet (the regime model is not wired in); this is
    the causal baseline of FACTS.md. Parameters are fitted on the whole period, so the
    probabilities use no future *returns* but do use parameters estimated on them.
    """
    import warnings

    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    if k < 2 or len(frame) < 50:
        return None
    returns = 100.0 * np.diff(np.log(frame["close"].to_numpy(dtype=float)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = MarkovRegression(returns, k_regimes=k, switching_variance=True).fit(disp=False)
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("regime baseline failed: %s", exc)
        return None
    probs = np.asarray(fitted.filtered_marginal_probabilities)
    params = np.asarray(fitted.params, dtype=float)
    names_ = list(fitted.model.param_names)
    sigmas = [params[names_.index(f"sigma2[{j}]")] for j in range(k)]
    order = np.argsort(sigmas)
    names = {2: ["calm", "turbulent"], 3: ["calm", "normal", "turbulent"]}.get(
        k, [f"state {j + 1}" for j in range(k)]
    )
    labelled = [f"{names[r]} (daily sd {math.sqrt(sigmas[j]):.2f}%)" for r, j in enumerate(order)]
    first = np.full((1, k), np.nan)  # no return on the first day
    return labelled, np.vstack([first, probs[:, order]])


@dataclass
class BacktestResult:
    """Everything the report shows."""

    instrument_id: str
    description: str
    frame: pd.DataFrame
    strategy: str
    decisions: list[Record]
    dead_letters: list[Record]
    fills: list[Record]
    positions: list[float]
    var: list[VarSeries]
    var_check: dict[str, Any]
    regimes: tuple[list[str], np.ndarray] | None
    regime_source: str
    events: int
    elapsed_s: float
    settings: Settings

    def metrics(self) -> dict[str, Any]:
        """The report's figures, JSON-ready."""
        decisions = Counter(d["decision"] for d in self.decisions)
        reasons = Counter(r["code"] for d in self.decisions for r in d["reasons"])
        scores = np.array([d["score"] for d in self.decisions], dtype=float)
        hist, edges = np.histogram(scores, bins=20, range=(0, 100))
        days = self.frame.index
        closes = self.frame["close"].to_numpy(dtype=float)
        q = np.asarray(self.positions[: len(closes) - 1], dtype=float)
        pnl = q * np.diff(closes)
        return {
            "dataset": {
                "instrument_id": self.instrument_id,
                "description": self.description,
                "first_date": days[0].strftime("%Y-%m-%d"),
                "last_date": days[-1].strftime("%Y-%m-%d"),
                "days": len(days),
                "years": round((days[-1] - days[0]).days / 365.25, 2),
            },
            "strategy": self.strategy,
            "limits": self.settings.limits.model_dump(),
            "portfolio_capital": self.settings.portfolio_capital,
            "events": self.events,
            "elapsed_s": round(self.elapsed_s, 3),
            "proposals": len(self.decisions),
            "decisions": dict(sorted(decisions.items())),
            "stale_decisions": sum(bool(d["stale"]) for d in self.decisions),
            "reasons": dict(reasons.most_common()),
            "dead_letters": dict(Counter(d["error_code"] for d in self.dead_letters)),
            "fills": len(self.fills),
            "score": {
                "mean": float(scores.mean()) if len(scores) else None,
                "p50": float(np.percentile(scores, 50)) if len(scores) else None,
                "p95": float(np.percentile(scores, 95)) if len(scores) else None,
                "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]},
            },
            "pnl": {
                "total": float(pnl.sum()),
                "days_invested": int(np.count_nonzero(q)),
                "worst_day": float(pnl.min()) if len(pnl) else 0.0,
            },
            "var_before_check": self.var_check,
            "var_backtests": {s.name: s.to_dict() for s in self.var},
            "regimes": self.regimes[0] if self.regimes else None,
            "regime_source": self.regime_source,
        }


def run_backtest(
    settings: Settings,
    dataset: str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    strategy: str | None = "momentum",
    target_weight: float = 0.3,
    proposals: Path | None = None,
    regimes: int = 2,
) -> BacktestResult:
    """Load the data, drive the flow, and compute the backtest's figures."""
    instrument_id, full, description = load_dataset(dataset)
    frame = select_period(full, start_ns, end_ns)
    if len(frame) < 30:
        span = f"{full.index[0]:%Y-%m-%d} to {full.index[-1]:%Y-%m-%d}" if len(full) else "no rows"
        raise ConfigError(
            f"--dataset {dataset}: {len(frame)} trading days in the chosen period (need at"
            f" least 30; the flow accepts dates from 2000 on); the data covers {span}"
        )
    settings = backtest_settings(settings)
    file_proposals = read_proposals(proposals, instrument_id) if proposals else []
    strat = None
    if proposals is None and strategy:
        strat = Strategy(strategy, frame["close"].to_numpy(dtype=float), target_weight)
    driver = Driver(instrument_id, frame, settings, strat, file_proposals)
    started = time.monotonic()
    run_flow(driver)
    elapsed = time.monotonic() - started
    decisions = sorted(
        driver.state.decisions.values(), key=lambda d: (d["ts_event"], d["proposal_id"])
    )
    series, check = var_series(driver, decisions)
    regime_view = flow_regimes(frame, driver.state.regime_events)
    regime_source = "flow"
    if regime_view is None:
        regime_view = regime_probabilities(frame, regimes)
        regime_source = "markov_baseline" if regime_view is not None else "none"
    return BacktestResult(
        instrument_id,
        description,
        frame,
        strat.describe() if strat else f"proposals from {proposals}",
        decisions,
        driver.state.dead_letters,
        driver.fills,
        driver.positions,
        series,
        check,
        regime_view,
        regime_source,
        driver.events,
        elapsed,
        settings,
    )


# --------------------------------------------------------------------------- CLI


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    """Backtest a strategy through the pre-trade flow and write the report."""
    from dataflows.replay import parse_time, with_limits
    from dataflows.report import write_report

    if args.proposals is not None and args.strategy is not None:
        raise ConfigError("give --proposals PATH or --strategy NAME, not both")
    if not args.report.parent.is_dir():
        raise ConfigError(f"--report: directory {str(args.report.parent)!r} does not exist")
    settings = with_limits(settings, args.limit or ())
    result = run_backtest(
        settings,
        args.dataset,
        start_ns=None if args.from_ is None else parse_time(args.from_, "--from"),
        end_ns=None if args.to is None else parse_time(args.to, "--to"),
        strategy=args.strategy or "momentum",
        target_weight=args.target_weight,
        proposals=args.proposals,
        regimes=args.regimes,
    )
    metrics = result.metrics()
    write_report(result, args.report)
    metrics_path = args.metrics or args.report.with_suffix(".json")
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    normal = metrics["var_backtests"]["ewma_normal_95"]["full_sample"] or {}
    print(
        f"backtest {metrics['dataset']['instrument_id']} {metrics['dataset']['first_date']}"
        f" .. {metrics['dataset']['last_date']}: {metrics['proposals']:,} proposals"
        f" {metrics['decisions']}, {metrics['fills']:,} fills;"
        f" VaR 95% exceptions {normal.get('exceptions', 0)}/{normal.get('observations', 0)}"
        f" (Kupiec p={normal.get('kupiec', {}).get('p_value', float('nan')):.3f});"
        f" {metrics['elapsed_s']:.1f} s"
    )
    print(f"report: {args.report}\nmetrics: {metrics_path}")
    return 0


def add_backtest_parser(sub: argparse._SubParsersAction) -> None:
    """``riskstream backtest``."""
    p = sub.add_parser(
        "backtest",
        help="run a strategy over real daily history through the flow; HTML report + JSON",
        description=(
            "Drives the pre-trade flow (in process) with daily prices and the proposals of a"
            " strategy or a file, fills what the flow allows at the next open, and writes an"
            " HTML report with plots and VaR backtests, plus a JSON of its metrics."
        ),
    )
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME|PATH",
        help="sp500, nasdaq, vix, wti, or a .csv/.parquet/.avro of daily prices",
    )
    p.add_argument("--from", dest="from_", metavar="DATE", help="first day (default: all)")
    p.add_argument("--to", metavar="DATE", help="end day, exclusive")
    p.add_argument(
        "--proposals", type=Path, metavar="PATH", help="proposals file instead of a strategy"
    )
    p.add_argument("--strategy", choices=STRATEGIES, default=None, help="default: momentum")
    p.add_argument("--target-weight", type=float, default=0.3, help="strategy weight (0.3)")
    p.add_argument("--limit", type=_limit_arg, action="append", metavar="NAME=VALUE",
                   help="what-if limit (repeatable)")  # fmt: skip
    p.add_argument("--regimes", type=int, default=2, help="Markov regime states (0: none)")
    p.add_argument("--report", type=Path, required=True, metavar="PATH", help="HTML report")
    p.add_argument("--metrics", type=Path, default=None, help="JSON metrics (default: .json)")
    p.set_defaults(func=cmd_backtest)


def _limit_arg(text: str) -> tuple[str, float]:
    from dataflows.replay import _limit

    return _limit(text)
