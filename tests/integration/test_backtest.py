"""``riskstream backtest`` over real daily data: the flow, the VaR tests, the report.

The report must render in headless Chromium: the screenshot is decoded here (a small PNG
reader, no imaging library) and must be large and far from blank.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import fastavro
import pandas as pd
import pytest

from dataflows.backtest import (
    Strategy,
    load_dataset,
    read_proposals,
    run_backtest,
    tidy_daily,
)
from dataflows.cli import main
from dataflows.diff import compare
from dataflows.report import nice_ticks, time_ticks, with_breaks, write_report
from dataflows.settings import Settings
from models.datasets import load_daily
from operators.errors import ConfigError
from operators.var_backtest import kupiec_pof

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sp500_report(tmp_path_factory) -> tuple[Path, dict]:
    """The full S&P 500 backtest (2000-2018) through the CLI: report and metrics."""
    out = tmp_path_factory.mktemp("backtest") / "sp500.html"
    assert main(["backtest", "--dataset", "sp500", "--report", str(out)]) == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_backtest_when_run_on_19_years_of_sp500_reports_decisions_and_var_tests(sp500_report):
    html_path, metrics = sp500_report
    html = html_path.read_text()

    assert metrics["dataset"]["years"] >= 10
    assert metrics["dataset"]["first_date"] == "2000-01-03"
    assert sum(metrics["decisions"].values()) == metrics["proposals"] > 1000
    assert metrics["dead_letters"] == {}
    assert metrics["fills"] > 0
    assert metrics["reasons"].get("CONCENTRATION", 0) > 0  # 30% asked, 25% allowed
    # var_before is the book's VaR the backtest recomputes from the flow's own features
    check = metrics["var_before_check"]
    assert check["checked"] > 1000 and check["agreed"] == check["checked"]
    for name in ("ewma_normal_95", "historical_95", "ewma_normal_99"):
        full = metrics["var_backtests"][name]["full_sample"]
        assert full["observations"] > 1000
        n, x, p = full["observations"], full["exceptions"], 1 - full["confidence"]
        assert full["kupiec"]["statistic"] == pytest.approx(kupiec_pof(n, x, p).statistic)
        t = full["transitions"]
        assert t["n00"] + t["n01"] + t["n10"] + t["n11"] == n - 1
        assert full["traffic_light"]["zone"] in {"GREEN", "YELLOW", "RED"}
    normal = metrics["var_backtests"]["ewma_normal_95"]["full_sample"]
    assert 0.02 < normal["exceptions"] / normal["observations"] < 0.10  # a sane 95% VaR
    for heading in ("Price, position and regimes", "Decisions over time", "Risk score",
                    "VaR (1 day) against realized P&amp;L", "Kupiec", "Christoffersen",
                    "traffic light", "Decisions by reason"):  # fmt: skip
        assert heading in html
    assert html.count("<svg") == 4


def png_pixels(path: Path) -> tuple[int, int, bytes, int]:
    """(width, height, raw pixel bytes, bytes per pixel) of an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for row in range(height):
        f = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        out += line
        prev = line
    return width, height, bytes(out), bpp


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium; see scripts/bootstrap.sh)",
)
def test_report_when_rendered_in_headless_chromium_is_a_full_non_blank_page(sp500_report, tmp_path):
    html_path, _ = sp500_report
    shot = tmp_path / "report.png"

    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2400", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    width, height, pixels, bpp = png_pixels(shot)
    assert (width, height) == (1280, 2400)
    colors = {pixels[i : i + 3] for i in range(0, len(pixels), bpp * 7)}
    assert len(colors) > 200  # lines, areas, bars and text in many shades
    white = sum(1 for i in range(0, len(pixels), bpp * 7) if pixels[i : i + 3] == b"\xff\xff\xff")
    assert white / (len(pixels) / (bpp * 7)) < 0.9
    # the charts are there: the price line's blue and the exceptions' red
    assert b"\x1f\x4e\x79" in colors or any(
        abs(c[0] - 0x1F) < 8 and abs(c[2] - 0x79) < 8 for c in colors
    )
    assert any(c[0] > 150 and c[1] < 90 and c[2] < 90 for c in colors)


def short(settings: Settings, **kw):
    return run_backtest(
        settings, kw.pop("dataset", "sp500"),
        start_ns=pd.Timestamp("2015-01-01", tz="UTC").value,
        end_ns=pd.Timestamp("2017-01-01", tz="UTC").value, regimes=0, **kw,
    )  # fmt: skip


def canonical(result) -> list[dict]:
    return [
        {k: v for k, v in d.items() if k not in ("ts_decided", "latency_us")}
        for d in result.decisions
    ]


def test_backtest_when_repeated_gives_identical_decisions_and_fills():
    settings = Settings(metrics_port=0)

    a, b = short(settings, strategy="rebalance"), short(settings, strategy="rebalance")

    assert compare(a.decisions, b.decisions).ok
    assert a.fills == b.fills and a.positions == b.positions
    assert len(a.decisions) > 400  # a proposal most days: the weight drifts with the price


def test_backtest_when_fed_the_same_days_from_csv_and_avro_files_decides_the_same(tmp_path):
    frame = load_daily("sp500").loc["2015-01-01":"2016-12-31"]
    csv_path = tmp_path / "sp500.csv"
    frame.rename_axis("Date").rename(columns=str.title).to_csv(csv_path)
    avro_path = tmp_path / "sp500.avro"
    schema = {
        "type": "record", "name": "Day",
        "fields": [{"name": "date", "type": "string"}]
        + [{"name": c, "type": "double"} for c in ("open", "high", "low", "close", "volume")],
    }  # fmt: skip
    rows = [
        {"date": str(d.date()), **r}
        for d, r in zip(frame.index, frame.to_dict("records"), strict=True)
    ]
    with avro_path.open("wb") as fo:
        fastavro.writer(fo, fastavro.parse_schema(schema), rows)
    settings = Settings(metrics_port=0)

    packaged = short(settings)
    from_csv = short(settings, dataset=str(csv_path))
    from_avro = short(settings, dataset=str(avro_path))

    assert from_csv.instrument_id == from_avro.instrument_id == "SP500"
    assert compare(packaged.decisions, from_csv.decisions).ok
    assert compare(packaged.decisions, from_avro.decisions).ok


def test_backtest_when_given_a_proposals_file_decides_each_and_fills_the_allowed(tmp_path):
    path = tmp_path / "orders.csv"
    pd.DataFrame(
        {
            "proposal_id": ["O-1", "O-2", "O-3"],
            "date": ["2015-03-02", "2015-03-03", "2015-06-01"],
            "side": ["BUY", "BUY", "SELL"],
            "quantity": [500.0, 2500.0, 200.0],
        }
    ).to_csv(path, index=False)
    settings = Settings(metrics_port=0)

    result = short(settings, proposals=path)

    decided = {d["proposal_id"]: d for d in result.decisions}
    assert set(decided) == {"O-1", "O-2", "O-3"}
    assert decided["O-1"]["decision"] == "APPROVE"
    assert decided["O-2"]["decision"] == "REDUCE"  # 3,000 units would be ~60% of the book
    assert [f["quantity"] for f in result.fills] == [
        500.0, decided["O-2"]["allowed_quantity"], 200.0,
    ]  # fmt: skip
    report = tmp_path / "orders.html"
    metrics = write_report(result, report)
    assert metrics["proposals"] == 3 and "proposals from" in metrics["strategy"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "nowhere"], "not a packaged dataset"),
        (["--dataset", "sp500", "--from", "2030-01-01"], "0 trading days in the chosen period"),
        (["--dataset", "sp500", "--from", "soon"], "--from: cannot read 'soon'"),
        (["--dataset", "sp500", "--target-weight", "1.5"], "--target-weight must be in (0, 1]"),
    ],
)
def test_backtest_when_the_request_is_bad_ends_with_a_clear_message(
    tmp_path, capsys, args, message
):
    code = main(["backtest", *args, "--report", str(tmp_path / "r.html")])

    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_tidy_daily_when_columns_are_loosely_named_gives_ohlcv_by_utc_date():
    raw = pd.DataFrame(
        {"Date": ["2020-01-03", "2020-01-02", "2020-01-02"], "Adj Close": [3.0, 2.0, 2.5]}
    )

    frame = tidy_daily(raw, "x")

    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert [str(d.date()) for d in frame.index] == ["2020-01-02", "2020-01-03"]
    assert frame["close"].tolist() == [2.5, 3.0] and frame["open"].tolist() == [2.5, 3.0]
    with pytest.raises(ConfigError, match="no close column"):
        tidy_daily(pd.DataFrame({"date": ["2020-01-01"], "x": [1.0]}), "x")


def test_strategies_when_asked_for_orders_trade_to_the_target_in_whole_lots():
    from dataflows.backtest import DeskBook

    closes = pd.Series(range(100, 400), dtype=float).to_numpy()
    book = DeskBook(10_000_000.0)
    momentum, rebalance = Strategy("momentum", closes, 0.3), Strategy("rebalance", closes, 0.2)

    assert momentum.order(150, closes[150], book, "P") is None  # SMA(200) not ready: flat
    assert momentum.order(250, closes[250], book, "P") == ("BUY", 8571.0)  # floor(3e6 / 350)
    assert rebalance.order(0, closes[0], book, "P") == ("BUY", 20000.0)
    with pytest.raises(ConfigError):
        Strategy("martingale", closes, 0.2)


def test_chart_helpers_when_given_ranges_pick_round_ticks_and_break_gaps():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(-0.3, 0.9) == [-0.25, 0.0, 0.25, 0.5, 0.75]
    ns = pd.Timestamp("2000-06-01", tz="UTC").value, pd.Timestamp("2018-06-01", tz="UTC").value
    assert [label for _, label in time_ticks(*ns)] == [str(y) for y in range(2002, 2019, 2)]
    xs, ys = with_breaks([0, 1, 2, 10, 11], [1.0, 2.0, 3.0, 4.0, 5.0], max_gap=3)
    assert len(xs) == 6 and ys[3] != ys[3]  # a NaN between 2 and 10


def test_read_proposals_when_rows_are_bad_names_the_row(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"date": ["2015-01-05"], "side": ["BUY"], "quantity": [-5.0]}).to_csv(path)

    with pytest.raises(ConfigError, match="row 1"):
        read_proposals(path, "SP500")
    with pytest.raises(ConfigError, match="not a packaged dataset"):
        load_dataset(str(tmp_path / "missing.csv"))
