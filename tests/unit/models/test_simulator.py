from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.regimes import REGIMES, Regime
from models.simulator import (
    BOND_FACE_VALUE,
    DEFAULT_START_NS,
    NS_PER_SECOND,
    MarketSimulator,
    SimConfig,
    bond_price,
    bond_yield,
    merge_by_ts,
    stationary_distribution,
    transition_matrix,
    year_fraction_30_360,
)
from tests.unit.models.avro import assert_valid, encode

INTERVAL = 100_000_000  # 10 quote rounds per 1 s bar keeps the tests fast
N_BARS = 300


@pytest.fixture(scope="module")
def sim() -> MarketSimulator:
    return MarketSimulator(seed=7)


@pytest.fixture(scope="module")
def ticks(sim: MarketSimulator) -> list[dict[str, Any]]:
    return list(sim.ticks(duration_ns=N_BARS * NS_PER_SECOND, tick_interval_ns=INTERVAL))


@pytest.fixture(scope="module")
def path(sim: MarketSimulator) -> pd.DataFrame:
    return sim.path(N_BARS)


@pytest.fixture(scope="module")
def long_path() -> pd.DataFrame:
    return MarketSimulator(seed=11).path(8000)


def _ns(iso: str) -> int:
    return int(pd.Timestamp(iso, tz="UTC").value)


def _kinds(sim: MarketSimulator) -> dict[str, str]:
    return {r["instrument_id"]: r["asset_class"] for r in sim.instruments()}


# -- determinism ------------------------------------------------------------------------


def _world_bytes(seed: int) -> tuple[bytes, ...]:
    s = MarketSimulator(seed=seed)
    props = list(s.proposals(count=300))
    return (
        encode("Instrument", s.instruments()),
        encode("MarketTick", s.ticks(count=5000, tick_interval_ns=INTERVAL)),
        encode("TradeProposal", props),
        encode("Execution", [*s.initial_executions(3), *(s.fill(p) for p in props[:50])]),
        s.path(500).to_csv().encode(),
    )


def test_outputs_when_seed_repeats_are_byte_identical() -> None:
    assert _world_bytes(3) == _world_bytes(3)


def test_outputs_when_seed_differs_differ() -> None:
    first, second = _world_bytes(3), _world_bytes(4)
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_ticks_when_started_mid_world_equal_the_tail_of_a_full_run() -> None:
    start = DEFAULT_START_NS + 300 * NS_PER_SECOND + 12_345_678  # block 1, mid-round
    full = MarketSimulator(seed=5).ticks(duration_ns=302 * NS_PER_SECOND)
    tail = [t for t in full if t["ts_event"] >= start]
    fresh = list(MarketSimulator(seed=5).ticks(start, count=len(tail)))
    assert fresh == tail
    assert len(tail) == 2 * 100 * 12 - 1 * 12 - 3  # 2 bars, minus the skipped round part


def test_path_when_asked_in_pieces_equals_one_long_path() -> None:
    sim = MarketSimulator(seed=2)
    whole = sim.path(600)
    later = MarketSimulator(seed=2).path(100, start_ns=DEFAULT_START_NS + 250 * NS_PER_SECOND)
    pd.testing.assert_frame_equal(later, whole.iloc[250:350])


# -- regime chain -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_path_when_run_for_2000_bars_visits_every_regime(seed: int) -> None:
    regimes = MarketSimulator(seed=seed).path(2000)["regime"]
    assert set(regimes) == {r.value for r in REGIMES}


def test_transition_matrix_when_built_is_sticky_and_reaches_every_regime() -> None:
    matrix = transition_matrix()
    assert np.allclose(matrix.sum(axis=1), 1.0)
    assert np.all(np.diag(matrix) >= 0.9)
    assert np.all(stationary_distribution(matrix) > 0.04)


def test_path_when_started_keeps_initial_regime_for_bar_zero() -> None:
    sim = MarketSimulator(seed=1, initial_regime=Regime.RALLY)
    assert sim.path(1)["regime"].iloc[0] == "RALLY"


def test_path_when_built_has_documented_columns(sim: MarketSimulator, path: pd.DataFrame) -> None:
    assert list(path.columns[:8]) == [
        "bar", "regime", "regime_code", "index_level", "short_rate", "credit_spread",
        "spread_bps", "volume",
    ]  # fmt: skip
    for iid in sim.instrument_ids:
        assert {f"{iid}.price", f"{iid}.spread_bps", f"{iid}.volume"} <= set(path.columns)
    assert str(path.index.tz) == "UTC"
    assert path.index[0].value == DEFAULT_START_NS + NS_PER_SECOND  # labelled by bar close
    assert (path["regime"].cat.codes == path["regime_code"]).all()
    assert path.notna().all().all()


# -- reference data and schemas ---------------------------------------------------------


def test_instruments_when_listed_have_equities_index_and_bonds(sim: MarketSimulator) -> None:
    records = sim.instruments()
    by_class = Counter(r["asset_class"] for r in records)
    assert by_class == {"EQUITY": 8, "INDEX": 1, "BOND": 3}
    equities = [r for r in records if r["asset_class"] == "EQUITY"]
    assert {r["lot_size"] for r in equities} == {1.0, 100.0}
    assert all(r["sector"] and r["adv"] > 0 for r in equities)
    for bond in (r for r in records if r["asset_class"] == "BOND"):
        assert bond["coupon_frequency"] == 2 and bond["day_count"] == "30/360"
        assert bond["face_value"] == BOND_FACE_VALUE == 10.0
        assert bond["maturity"] > bond["ts_event"] == DEFAULT_START_NS
        assert 0 < bond["coupon"] < 0.2


def test_records_when_validated_match_avro_schemas(
    sim: MarketSimulator, ticks: list[dict[str, Any]]
) -> None:
    proposals = list(sim.proposals(count=500))
    assert_valid("Instrument", sim.instruments())
    assert_valid("MarketTick", ticks[:5000])
    assert_valid("TradeProposal", proposals)
    assert_valid("Execution", [*sim.initial_executions(2), *(sim.fill(p) for p in proposals)])


# -- ticks ------------------------------------------------------------------------------


def test_ticks_when_generated_are_sorted_quotes_with_bid_below_ask(
    sim: MarketSimulator, ticks: list[dict[str, Any]]
) -> None:
    ts = np.array([t["ts_event"] for t in ticks])
    bid, ask, last, size = (np.array([t[k] for t in ticks]) for k in ("bid", "ask", "last", "size"))
    assert len(ticks) == N_BARS * 10 * 12
    assert np.all(np.diff(ts) > 0)
    assert np.all(bid < ask)
    assert np.all((bid <= last) & (last <= ask))
    assert np.all(size > 0) and np.all(bid > 0)
    kinds = _kinds(sim)
    assert all((t["yield"] is None) == (kinds[t["instrument_id"]] != "BOND") for t in ticks)
    assert all(t["venue"] is None for t in ticks)


def test_ticks_when_bar_closes_quote_around_the_path_mid(
    sim: MarketSimulator, ticks: list[dict[str, Any]], path: pd.DataFrame
) -> None:
    frame = pd.DataFrame(ticks)
    frame["bar"] = (frame["ts_event"] - DEFAULT_START_NS) // NS_PER_SECOND
    closes = frame.groupby(["bar", "instrument_id"]).last()
    for iid in sim.instrument_ids:
        quotes = closes.xs(iid, level="instrument_id")
        mid = path[f"{iid}.price"].to_numpy()
        assert np.all((quotes["bid"] <= mid) & (mid <= quotes["ask"]))


def test_ticks_when_count_or_duration_given_stop_there(sim: MarketSimulator) -> None:
    assert len(list(sim.ticks(count=1234))) == 1234
    timed = list(sim.ticks(duration_ns=NS_PER_SECOND // 2))
    assert len(timed) == 50 * 12
    assert timed[-1]["ts_event"] < DEFAULT_START_NS + NS_PER_SECOND // 2
    endless = sim.ticks()
    assert len(list(itertools.islice(endless, 30_000))) == 30_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tick_interval_ns": 300_000_000}, "must divide bar_ns"),
        ({"tick_interval_ns": 5}, "number of instruments"),
        ({"start_ns": DEFAULT_START_NS - 1}, "before the simulated world starts"),
        ({"count": -1}, "count >= 0"),
    ],
)
def test_ticks_when_arguments_invalid_raise_value_error(
    sim: MarketSimulator, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sim.ticks(**kwargs)


def test_bond_ticks_when_priced_carry_the_yield_of_the_last_price(
    sim: MarketSimulator, ticks: list[dict[str, Any]]
) -> None:
    bonds = {r["instrument_id"]: r for r in sim.instruments() if r["asset_class"] == "BOND"}
    rows = [t for t in ticks if t["instrument_id"] in bonds]
    ref = [bonds[t["instrument_id"]] for t in rows]
    years = year_fraction_30_360([t["ts_event"] for t in rows], [r["maturity"] for r in ref])
    priced = bond_price([t["yield"] for t in rows], [r["coupon"] for r in ref], years)
    np.testing.assert_allclose(priced, [t["last"] for t in rows], rtol=0, atol=1e-9)


# -- bond math --------------------------------------------------------------------------


def test_bond_price_when_ten_year_5pct_at_6pct_matches_quantlib() -> None:
    assert float(bond_price(0.06, 0.05, 10.0)) == pytest.approx(92.5612625698, abs=1e-9)
    assert float(bond_price(0.05, 0.05, 7.0)) == pytest.approx(100.0, abs=1e-9)
    assert float(bond_price(0.0, 0.04, 2.0)) == pytest.approx(108.0, abs=1e-9)


def test_bond_yield_when_inverting_price_round_trips() -> None:
    yields = np.array([-0.001, 0.0, 0.02, 0.0437, 0.12, 0.3])
    years = np.array([0.3, 1.0, 2.75, 7.0, 10.0, 4.2])
    prices = bond_price(yields, 0.05, years)
    np.testing.assert_allclose(bond_yield(prices, 0.05, years), yields, atol=1e-12)


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("2024-01-31", "2024-03-31", 60),  # both 31sts become 30
        ("2024-01-30", "2024-02-29", 29),
        ("2024-01-15", "2034-01-15", 3600),
        ("2024-03-31", "2024-03-01", 0),  # after maturity: no time left
    ],
)
def test_year_fraction_when_30_360_bond_basis_counts_days(start: str, end: str, days: int) -> None:
    assert float(year_fraction_30_360(_ns(start), _ns(end))) == pytest.approx(days / 360)


# -- regime-conditional behaviour -------------------------------------------------------


def _by_regime(values: pd.Series | pd.DataFrame, path: pd.DataFrame) -> Any:
    return values.groupby(path["regime"], observed=True)


def _equity_returns(path: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in path.columns if c.startswith("SIM-EQ") and c.endswith(".price")]
    return np.log(path[cols]).diff()


def test_realized_vol_when_vol_risk_off_exceeds_calm_twice(long_path: pd.DataFrame) -> None:
    vol = _by_regime(_equity_returns(long_path), long_path).apply(lambda r: np.nanstd(r.values))
    assert vol["VOL_RISK_OFF"] > 2 * vol["CALM"]
    assert vol["LIQUIDITY_CRISIS"] > 2 * vol["CALM"]


def test_correlation_when_vol_risk_off_exceeds_calm(long_path: pd.DataFrame) -> None:
    def mean_corr(r: pd.DataFrame) -> float:
        c = r.corr().to_numpy()
        return float(c[np.triu_indices_from(c, 1)].mean())

    corr = _by_regime(_equity_returns(long_path), long_path).apply(mean_corr)
    assert corr["VOL_RISK_OFF"] > corr["CALM"] + 0.2


@pytest.mark.parametrize(
    ("column", "regime", "sign"),
    [
        ("credit_spread", "CREDIT_SELLOFF", 1),
        ("credit_spread", "RALLY", -1),
        ("short_rate", "RATE_SELLOFF", 1),
        ("short_rate", "VOL_RISK_OFF", -1),  # flight to quality
        ("index_level", "RALLY", 1),
        ("index_level", "RATE_SELLOFF", -1),
        ("index_level", "CREDIT_SELLOFF", -1),
        ("index_level", "VOL_RISK_OFF", -1),
    ],
)
def test_series_change_when_regime_active_moves_the_right_way(
    long_path: pd.DataFrame, column: str, regime: str, sign: int
) -> None:
    change = _by_regime(long_path[column].diff(), long_path).mean()
    assert np.sign(change[regime]) == sign


def test_liquidity_when_crisis_spreads_blow_out_and_volume_collapses(
    long_path: pd.DataFrame,
) -> None:
    spread = _by_regime(long_path["spread_bps"], long_path).mean()
    volume = _by_regime(long_path["volume"], long_path).mean()
    assert spread["LIQUIDITY_CRISIS"] > 4 * spread["CALM"]
    assert volume["LIQUIDITY_CRISIS"] < 0.5 * volume["CALM"]
    assert volume["RALLY"] > volume["CALM"]


def test_returns_when_technical_dislocation_mean_revert(long_path: pd.DataFrame) -> None:
    returns = _equity_returns(long_path)
    lag = returns.shift(1)
    same = long_path["regime"].eq(long_path["regime"].shift(1)) & lag.notna().all(axis=1)

    def lag1_autocorrelation(regime: str) -> float:
        mask = same & long_path["regime"].eq(regime)
        pairs = (returns[mask].to_numpy().ravel(), lag[mask].to_numpy().ravel())
        return float(np.corrcoef(*pairs)[0, 1])

    assert lag1_autocorrelation("TECHNICAL_DISLOCATION") < -0.1
    assert abs(lag1_autocorrelation("CALM")) < 0.05


def test_tick_realized_vol_when_vol_risk_off_exceeds_calm(
    ticks: list[dict[str, Any]], path: pd.DataFrame
) -> None:
    frame = pd.DataFrame([t for t in ticks if t["instrument_id"] == "SIM-IDX"])
    frame["bar"] = (frame["ts_event"] - DEFAULT_START_NS) // NS_PER_SECOND
    mid = np.log((frame["bid"] + frame["ask"]) / 2)
    rv = (mid.diff() ** 2).groupby(frame["bar"]).sum().iloc[1:]
    regime = path["regime"].to_numpy()[rv.index]
    assert {"CALM", "VOL_RISK_OFF"} <= set(regime)
    assert rv[regime == "VOL_RISK_OFF"].mean() > 4 * rv[regime == "CALM"].mean()


# -- proposals and fills ----------------------------------------------------------------


@pytest.fixture(scope="module")
def proposals(sim: MarketSimulator) -> list[dict[str, Any]]:
    return list(sim.proposals(5, count=4000, rate_per_s=50.0))


def test_proposals_when_generated_are_unique_sorted_lot_multiples(
    sim: MarketSimulator, proposals: list[dict[str, Any]]
) -> None:
    lots = {r["instrument_id"]: r["lot_size"] for r in sim.instruments()}
    assert len({p["proposal_id"] for p in proposals}) == len(proposals)
    assert all(re.fullmatch(r"PRP-7-\d{8}", p["proposal_id"]) for p in proposals)
    assert {p["portfolio_id"] for p in proposals} == {f"PF-00{i}" for i in range(1, 6)}
    assert np.all(np.diff([p["ts_event"] for p in proposals]) > 0)
    assert all(
        p["quantity"] > 0 and p["quantity"] % lots[p["instrument_id"]] == 0 for p in proposals
    )
    assert "SIM-IDX" not in {p["instrument_id"] for p in proposals}


def test_proposals_when_generated_are_mostly_market_orders_with_a_few_oversized(
    sim: MarketSimulator, proposals: list[dict[str, Any]]
) -> None:
    adv = {r["instrument_id"]: r["adv"] for r in sim.instruments()}
    limit_share = np.mean([p["limit_price"] is not None for p in proposals])
    oversized = np.mean([p["quantity"] >= 0.1 * adv[p["instrument_id"]] for p in proposals])
    assert 0.15 < limit_share < 0.35
    assert 0.01 < oversized < 0.06


def test_proposals_when_rate_given_arrive_at_that_rate(proposals: list[dict[str, Any]]) -> None:
    span_s = (proposals[-1]["ts_event"] - DEFAULT_START_NS) / NS_PER_SECOND
    assert len(proposals) / span_s == pytest.approx(50.0, rel=0.1)


def test_proposals_when_limit_priced_sit_near_the_last_close(
    sim: MarketSimulator, proposals: list[dict[str, Any]]
) -> None:
    ids = list(sim.instrument_ids)
    limited = [p for p in proposals if p["limit_price"] is not None]
    marks = sim.marks([p["ts_event"] for p in limited])
    for p, row in zip(limited, marks, strict=True):
        assert p["limit_price"] == pytest.approx(row[ids.index(p["instrument_id"])], rel=0.006)


def test_proposals_when_seed_overridden_change_the_flow_not_the_world(
    sim: MarketSimulator,
) -> None:
    base = list(sim.proposals(count=50))
    other = list(sim.proposals(count=50, seed=99))
    assert other[0]["proposal_id"].startswith("PRP-99-")
    assert [p["ts_event"] for p in base] != [p["ts_event"] for p in other]


def test_merge_by_ts_when_interleaving_streams_keeps_event_time_order(sim: MarketSimulator) -> None:
    merged = list(merge_by_ts(sim.ticks(count=3000), sim.proposals(count=50, rate_per_s=200.0)))
    ts = [r["ts_event"] for r in merged]
    assert ts == sorted(ts)
    assert sum("proposal_id" in r for r in merged) > 0


def test_fill_when_market_order_pays_the_spread_and_limit_fills_at_limit(
    sim: MarketSimulator, proposals: list[dict[str, Any]]
) -> None:
    ids = list(sim.instrument_ids)
    market = next(p for p in proposals if p["limit_price"] is None and p["side"] == "BUY")
    limit = next(p for p in proposals if p["limit_price"] is not None)
    mark = sim.marks(market["ts_event"])[0, ids.index(market["instrument_id"])]
    fill = sim.fill(market)
    assert fill["price"] > mark
    assert fill["execution_id"] == f"EXE-{market['proposal_id']}"
    assert fill["ts_event"] == market["ts_event"] + 1_000_000
    assert sim.fill(limit, quantity=1.0)["price"] == limit["limit_price"]


def test_initial_executions_when_books_built_are_diversified(sim: MarketSimulator) -> None:
    fills = sim.initial_executions(3, notional=1e7)
    face = {r["instrument_id"]: r["face_value"] for r in sim.instruments()}
    cash = pd.DataFrame(
        {"pf": f["portfolio_id"], "v": f["quantity"] * f["price"] * face[f["instrument_id"]]}
        for f in fills
    )
    totals = cash.groupby("pf")["v"].sum()
    assert list(totals.index) == ["PF-001", "PF-002", "PF-003"]
    assert np.allclose(totals, 1e7, rtol=0.02)
    assert (cash["v"] / cash["pf"].map(totals)).max() < 0.2
    assert len({f["execution_id"] for f in fills}) == len(fills)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"bar_ns": 0}, "bar_ns"),
        ({"n_equities": 0}, "n_equities"),
    ],
)
def test_sim_config_when_invalid_raises_value_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_per_s": 0.0}, "rate_per_s > 0"),
        ({"limit_share": 1.5}, "within"),
        ({"portfolios": 0}, "at least one portfolio"),
        ({"portfolios": []}, "at least one portfolio"),
    ],
)
def test_proposals_when_arguments_invalid_raise_value_error(
    sim: MarketSimulator, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sim.proposals(**kwargs)


def test_fill_when_instrument_unknown_raises_value_error(
    sim: MarketSimulator, proposals: list[dict[str, Any]]
) -> None:
    with pytest.raises(ValueError, match="'NOPE' is not simulated"):
        sim.fill({**proposals[0], "instrument_id": "NOPE"})
