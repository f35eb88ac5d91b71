"""The backtest report: one self-contained HTML file with inline SVG plots and tables.

No plotting library: the charts are SVG drawn here (lines, stacked areas, bars, markers,
axes with "nice" ticks), so the report needs nothing to build and opens anywhere,
including headless Chromium.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dataflows.backtest import BacktestResult, VarSeries
    from operators.var_backtest import Backtest

DECISION_COLORS = {"APPROVE": "#2e8b57", "REDUCE": "#e0a100", "REJECT": "#c0392b"}
REGIME_COLORS = ("#7fb77e", "#f2c14e", "#d1495b", "#6c5b7b", "#355c7d")
ZONE_COLORS = {"GREEN": "#2e8b57", "YELLOW": "#e0a100", "RED": "#c0392b"}
Values = Sequence[float] | np.ndarray
"""A series of numbers."""
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


# --------------------------------------------------------------------------- scales


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def short_number(value: float) -> str:
    """1.5M, 250k, 12, 0.25, -3.1k."""
    a = abs(value)
    if a >= 1e9:
        return f"{value / 1e9:g}G"
    if a >= 1e6:
        return f"{value / 1e6:g}M"
    if a >= 1e4:
        return f"{value / 1e3:g}k"
    if a >= 100 or a == 0:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _year_of(ns: int) -> int:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).year


def _ns_of(year: int, month: int = 1) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000_000


def time_ticks(lo: int, hi: int, target: int = 10) -> list[tuple[int, str]]:
    """(ns, label) ticks on year starts (or quarter starts for short spans)."""
    y0, y1 = _year_of(lo), _year_of(hi)
    if y1 - y0 >= 2:
        step = next(s for s in (1, 2, 5, 10, 20, 50) if (y1 - y0) / s <= target)
        years = [y for y in range(y0, y1 + 2) if y % step == 0]
        return [(_ns_of(y), str(y)) for y in years if lo <= _ns_of(y) <= hi]
    out = []
    for y in range(y0, y1 + 1):
        for m in (1, 4, 7, 10):
            t = _ns_of(y, m)
            if lo <= t <= hi:
                out.append((t, f"{y}-{m:02d}"))
    return out


# --------------------------------------------------------------------------- SVG


@dataclass
class Panel:
    """A plotting area in a chart, with its own y scale and a shared x scale."""

    top: float
    height: float
    y_lo: float
    y_hi: float
    y_label: str = ""
    y_format: Any = short_number
    y_ticks: list[float] | None = None


@dataclass
class Chart:
    """An SVG chart of one or more stacked panels sharing the x axis."""

    width: int
    height: int
    x_lo: float
    x_hi: float
    title: str
    left: int = 70
    right: int = 20
    x_time: bool = True
    parts: list[str] = field(default_factory=list)
    legend: list[tuple[str, str, str]] = field(default_factory=list)
    """(label, color, mark) with mark ``line``, ``box``, ``dot`` or ``cross``."""

    def sx(self, x: float) -> float:
        """Pixel x of a data x."""
        span = (self.x_hi - self.x_lo) or 1.0
        return self.left + (x - self.x_lo) / span * (self.width - self.left - self.right)

    @staticmethod
    def sy(panel: Panel, y: float) -> float:
        """Pixel y of a data y in ``panel``."""
        span = (panel.y_hi - panel.y_lo) or 1.0
        return panel.top + panel.height - (y - panel.y_lo) / span * panel.height

    def axes(self, panel: Panel, x_axis: bool = True) -> None:
        """Frame, horizontal grid with y labels, and (optionally) x labels under the panel."""
        x0, x1 = self.left, self.width - self.right
        y0, y1 = panel.top, panel.top + panel.height
        ticks = panel.y_ticks if panel.y_ticks is not None else nice_ticks(panel.y_lo, panel.y_hi)
        for t in ticks:
            if panel.y_lo <= t <= panel.y_hi:
                y = self.sy(panel, t)
                self.parts.append(
                    f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                    f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11"'
                    f' fill="#555">{html.escape(panel.y_format(t))}</text>'
                )
        self.parts.append(
            f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{panel.height}" fill="none"'
            ' stroke="#999"/>'
        )
        if panel.y_label:
            cy = y0 + panel.height / 2
            self.parts.append(
                f'<text x="14" y="{cy:.1f}" font-size="11" fill="#333" text-anchor="middle"'
                f' transform="rotate(-90 14 {cy:.1f})">{html.escape(panel.y_label)}</text>'
            )
        if x_axis:
            marks = (
                time_ticks(int(self.x_lo), int(self.x_hi))
                if self.x_time
                else [(t, short_number(t)) for t in nice_ticks(self.x_lo, self.x_hi, 10)]
            )
            for t, label in marks:
                x = self.sx(t)
                self.parts.append(
                    f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="#999"/>'
                    f'<text x="{x:.1f}" y="{y1 + 16}" text-anchor="middle" font-size="11"'
                    f' fill="#555">{html.escape(label)}</text>'
                )

    def line(
        self, panel: Panel, xs: Sequence[float], ys: Sequence[float], color: str,
        label: str = "", width: float = 1.2, dash: str = "",
    ) -> None:  # fmt: skip
        """A polyline (NaN breaks it)."""
        path: list[str] = []
        pen_up = True
        for x, y in zip(xs, ys, strict=True):
            if not math.isfinite(y):
                pen_up = True
                continue
            path.append(f"{'M' if pen_up else 'L'}{self.sx(x):.1f},{self.sy(panel, y):.1f}")
            pen_up = False
        if path:
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            self.parts.append(
                f'<path d="{"".join(path)}" fill="none" stroke="{color}"'
                f' stroke-width="{width}"{extra}/>'
            )
        if label:
            self.legend.append((label, color, "line"))

    def stacked_areas(
        self, panel: Panel, xs: Sequence[float], layers: Sequence[Values],
        colors: Sequence[str], labels: Sequence[str],
    ) -> None:  # fmt: skip
        """Layers stacked from the panel's bottom (NaN counts as 0)."""
        base = np.zeros(len(xs))
        for values, color, label in zip(layers, colors, labels, strict=True):
            top = base + np.nan_to_num(np.asarray(values, dtype=float))
            upper = " ".join(
                f"{self.sx(x):.1f},{self.sy(panel, y):.1f}" for x, y in zip(xs, top, strict=True)
            )
            lower = " ".join(
                f"{self.sx(x):.1f},{self.sy(panel, y):.1f}"
                for x, y in zip(reversed(xs), reversed(base), strict=True)
            )
            self.parts.append(f'<polygon points="{upper} {lower}" fill="{color}" stroke="none"/>')
            self.legend.append((label, color, "box"))
            base = top

    def bars(
        self, panel: Panel, xs: Sequence[float], stacks: Sequence[Values],
        colors: Sequence[str], labels: Sequence[str], bar_width: float,
    ) -> None:  # fmt: skip
        """Stacked bars centred on ``xs`` (``bar_width`` in x units)."""
        base = np.zeros(len(xs))
        px = max(1.0, abs(self.sx(bar_width) - self.sx(0)) - 1.0)
        for values, color, label in zip(stacks, colors, labels, strict=True):
            rects = []
            for x, b, v in zip(xs, base, values, strict=True):
                if v <= 0:
                    continue
                y_top, y_bot = self.sy(panel, b + v), self.sy(panel, b)
                rects.append(
                    f'<rect x="{self.sx(x) - px / 2:.1f}" y="{y_top:.1f}" width="{px:.1f}"'
                    f' height="{max(0.5, y_bot - y_top):.1f}"/>'
                )
            self.parts.append(f'<g fill="{color}">{"".join(rects)}</g>')
            self.legend.append((label, color, "box"))
            base = base + np.asarray(values, dtype=float)

    def spikes(
        self, panel: Panel, xs: Sequence[float], ys: Sequence[float], color: str, label: str
    ) -> None:
        """Vertical lines from 0 to each y (daily P&L)."""
        zero = self.sy(panel, 0.0)
        d = "".join(
            f"M{self.sx(x):.1f},{zero:.1f}V{self.sy(panel, y):.1f}"
            for x, y in zip(xs, ys, strict=True)
            if math.isfinite(y)
        )
        self.parts.append(f'<path d="{d}" stroke="{color}" stroke-width="1" fill="none"/>')
        self.legend.append((label, color, "line"))

    def markers(
        self, panel: Panel, xs: Sequence[float], ys: Sequence[float], color: str, label: str,
        shape: str = "cross", size: float = 3.5,
    ) -> None:  # fmt: skip
        """Markers at points (``cross`` or ``dot``)."""
        items = []
        for x, y in zip(xs, ys, strict=True):
            px, py = self.sx(x), self.sy(panel, y)
            if shape == "dot":
                items.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{size}"/>')
            else:
                items.append(
                    f"M{px - size:.1f},{py - size:.1f}L{px + size:.1f},{py + size:.1f}"
                    f"M{px - size:.1f},{py + size:.1f}L{px + size:.1f},{py - size:.1f}"
                )
        if shape == "dot":
            self.parts.append(f'<g fill="{color}">{"".join(items)}</g>')
        else:
            self.parts.append(
                f'<path d="{"".join(items)}" stroke="{color}" stroke-width="1.6" fill="none"/>'
            )
        self.legend.append((label, color, shape))

    def svg(self) -> str:
        """The chart as an ``<svg>`` element."""
        legend = []
        x: float = self.left
        for label, color, mark in self.legend:
            if mark == "line":
                icon = (
                    f'<line x1="{x}" y1="38" x2="{x + 16}" y2="38" stroke="{color}"'
                    ' stroke-width="2"/>'
                )
            elif mark == "cross":
                icon = (
                    f'<path d="M{x + 4},34L{x + 12},42M{x + 4},42L{x + 12},34" stroke="{color}"'
                    ' stroke-width="1.6"/>'
                )
            elif mark == "dot":
                icon = f'<circle cx="{x + 8}" cy="38" r="4" fill="{color}"/>'
            else:
                icon = f'<rect x="{x}" y="32" width="16" height="12" fill="{color}"/>'
            legend.append(
                f'{icon}<text x="{x + 21}" y="42" font-size="11" fill="#333">'
                f"{html.escape(label)}</text>"
            )
            x += 30 + 6.2 * len(label)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}"'
            f' viewBox="0 0 {self.width} {self.height}" style="{FONT}" role="img"'
            f' aria-label="{html.escape(self.title)}">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{self.left}" y="20" font-size="14" font-weight="600" fill="#222">'
            f"{html.escape(self.title)}</text>{''.join(legend)}{''.join(self.parts)}</svg>"
        )


def with_breaks(
    xs: Sequence[float], ys: Sequence[float], max_gap: float
) -> tuple[list[float], list[float]]:
    """The points with a NaN inserted wherever x jumps by more than ``max_gap`` (a gap)."""
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in zip(xs, ys, strict=True):
        if out_x and x - out_x[-1] > max_gap:
            out_x.append(out_x[-1])
            out_y.append(math.nan)
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


def _range(values: Sequence[float] | np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if not len(arr):
        return 0.0, 1.0
    lo, hi = float(arr.min()), float(arr.max())
    span = (hi - lo) or abs(hi) or 1.0
    return lo - pad * span, hi + pad * span


# --------------------------------------------------------------------------- the plots


def price_regime_chart(result: BacktestResult, width: int = 1180) -> str:
    """Price, the strategy's position, and regime probabilities over time."""
    days = result.frame.index.as_unit("ns").asi8.astype(float)
    closes = result.frame["close"].to_numpy(dtype=float)
    chart = Chart(
        width,
        470,
        days[0],
        days[-1],
        f"{result.instrument_id}: price, position and regime probabilities",
    )
    price = Panel(52, 210, *_range(closes), y_label="close")
    chart.axes(price, x_axis=False)
    chart.line(price, days, closes, "#1f4e79", "close", 1.3)
    positions = np.asarray(result.positions + [math.nan] * (len(days) - len(result.positions)))
    pos = Panel(272, 60, *_range(np.append(positions, 0.0), 0.02), y_label="position")
    chart.axes(pos, x_axis=False)
    chart.stacked_areas(pos, days, [np.nan_to_num(positions)], ["#8fb8de"], ["position (units)"])
    regimes = Panel(340, 100, 0.0, 1.0, y_label="P(regime)", y_ticks=[0.0, 0.5, 1.0])
    if result.regimes is not None:
        labels, probs = result.regimes
        chart.stacked_areas(
            regimes, days, [probs[:, j] for j in range(probs.shape[1])],
            REGIME_COLORS[: len(labels)], labels,
        )  # fmt: skip
    else:
        chart.parts.append(
            f'<text x="{chart.sx(days[len(days) // 2]):.0f}" y="395" text-anchor="middle"'
            ' font-size="12" fill="#777">no regime probabilities</text>'
        )
    chart.axes(regimes)
    return chart.svg()


def decisions_chart(result: BacktestResult, width: int = 1180) -> str:
    """Monthly counts of decisions by outcome."""
    months: dict[int, Counter[str]] = {}
    for d in result.decisions:
        when = datetime.fromtimestamp(d["ts_event"] / 1e9, tz=UTC)
        months.setdefault(_ns_of(when.year, when.month), Counter())[d["decision"]] += 1
    days = result.frame.index.as_unit("ns").asi8
    chart = Chart(width, 300, float(days[0]), float(days[-1]), "Decisions over time (per month)")
    xs = sorted(months)
    top = max((sum(c.values()) for c in months.values()), default=1)
    panel = Panel(52, 210, 0.0, top * 1.08, y_label="decisions")
    chart.axes(panel)
    if xs:
        centers = [x + 15 * 86_400 * 10**9 for x in xs]
        chart.bars(
            panel, centers, [[months[x][k] for x in xs] for k in DECISION_COLORS],
            list(DECISION_COLORS.values()), list(DECISION_COLORS), 26 * 86_400 * 10**9,
        )  # fmt: skip
    return chart.svg()


def score_chart(result: BacktestResult, width: int = 1180) -> str:
    """Histogram of risk scores (0-100), stacked by decision."""
    edges = np.linspace(0, 100, 21)
    stacks = []
    for k in DECISION_COLORS:
        scores = [d["score"] for d in result.decisions if d["decision"] == k]
        stacks.append(np.histogram(scores, bins=edges)[0].astype(float))
    total = np.sum(stacks, axis=0)
    chart = Chart(width, 280, 0.0, 100.0, "Risk score distribution", x_time=False)
    panel = Panel(52, 190, 0.0, max(1.0, float(total.max()) * 1.08), y_label="proposals")
    chart.axes(panel)
    centers = (edges[:-1] + edges[1:]) / 2
    chart.bars(
        panel, list(centers), stacks, list(DECISION_COLORS.values()), list(DECISION_COLORS), 5.0
    )
    return chart.svg()


def var_chart(result: BacktestResult, width: int = 1180) -> str:
    """Daily hypothetical P&L against minus the VaR forecasts, exceptions marked."""
    series = {s.name: s for s in result.var}
    main = series["ewma_normal_95"]
    days = result.frame.index.as_unit("ns").asi8
    chart = Chart(width, 380, float(days[0]), float(days[-1]), "VaR (1 day) against realized P&L")
    if not main.var:
        panel = Panel(52, 280, -1.0, 1.0, y_label="P&L")
        chart.axes(panel)
        chart.parts.append(
            '<text x="590" y="190" text-anchor="middle" fill="#777">no positions held</text>'
        )
        return chart.svg()
    xs = [float(t) for t in main.dates]
    hist = series["historical_95"]
    values = [*main.pnl, *(-v for v in main.var), *(-v for v in hist.var)]
    panel = Panel(52, 280, *_range(values), y_label="P&L (currency)")
    chart.axes(panel)
    chart.spikes(panel, xs, main.pnl, "#9aa5b1", "daily P&L (book at the close)")
    gap = 6 * 86_400e9  # longer than a weekend and a holiday: the book was flat
    chart.line(panel, *with_breaks(xs, [-v for v in main.var], gap), "#1f4e79",
               "-VaR 95% (flow, EWMA normal)", 1.3)  # fmt: skip
    if hist.var:
        hx = [float(t) for t in hist.dates]
        chart.line(panel, *with_breaks(hx, [-v for v in hist.var], gap), "#8e44ad",
                   "-VaR 95% (historical)", 1.0, "4 3")  # fmt: skip
    hits = main.hits
    ex_x = [x for x, h in zip(xs, hits, strict=True) if h]
    ex_y = [p for p, h in zip(main.pnl, hits, strict=True) if h]
    chart.markers(panel, ex_x, ex_y, "#c0392b", f"exception of the flow VaR ({len(ex_x)})")
    return chart.svg()


# --------------------------------------------------------------------------- tables


def _p(value: float) -> str:
    return "&lt;0.0001" if value < 1e-4 else f"{value:.4f}"


def _test_row(label: str, window: str, bt: Backtest) -> str:
    zone = bt.traffic_light.zone
    t = bt.transitions
    return (
        f"<tr><td>{html.escape(label)}</td><td>{window}</td><td>{bt.observations:,}</td>"
        f"<td>{bt.exceptions:,}</td><td>{bt.expected_exceptions:,.1f}</td>"
        f"<td>{bt.exceptions / bt.observations:.2%}</td>"
        f"<td>{bt.kupiec.statistic:.3f}</td><td>{_p(bt.kupiec.p_value)}</td>"
        f"<td>{bt.independence.statistic:.3f}</td><td>{_p(bt.independence.p_value)}</td>"
        f"<td>{bt.conditional.statistic:.3f}</td><td>{_p(bt.conditional.p_value)}</td>"
        f"<td>{t.n00}/{t.n01}/{t.n10}/{t.n11}</td>"
        f'<td><span class="zone" style="background:{ZONE_COLORS[zone]}">{zone}</span>'
        f" {bt.traffic_light.cumulative_probability:.4f}</td></tr>"
    )


def var_table(series: Sequence[VarSeries]) -> str:
    """Kupiec, Christoffersen and traffic light of every VaR series."""
    rows = []
    for s in series:
        if s.result is None or s.last_250 is None:
            rows.append(
                f'<tr><td>{html.escape(s.label)}</td><td colspan="13">no observations</td></tr>'
            )
            continue
        rows.append(_test_row(s.label, "all days", s.result))
        rows.append(_test_row(s.label, "last 250", s.last_250))
    return (
        "<table><thead><tr><th>VaR model</th><th>window</th><th>days</th><th>exceptions</th>"
        "<th>expected</th><th>rate</th><th>Kupiec LR<sub>pof</sub></th><th>p</th>"
        "<th>Christoffersen LR<sub>ind</sub></th><th>p</th><th>LR<sub>cc</sub></th><th>p</th>"
        "<th>n00/n01/n10/n11</th><th>traffic light (P[X&le;x])</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def counts_table(title: str, counts: dict[str, int], total: int) -> str:
    """A two-column table of counts with shares."""
    if not counts:
        return f"<p class='muted'>{html.escape(title)}: none</p>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:,}</td><td>{v / total:.1%}</td></tr>"
        for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    return (
        f"<table><thead><tr><th>{html.escape(title)}</th><th>count</th><th>share of"
        f" proposals</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def summary_table(metrics: dict[str, Any]) -> str:
    """Key facts of the run."""
    ds = metrics["dataset"]
    check = metrics["var_before_check"]
    rows = [
        ("data", f"{ds['description']} ({ds['instrument_id']})"),
        (
            "period",
            f"{ds['first_date']} to {ds['last_date']}:"
            f" {ds['days']:,} trading days, {ds['years']} years",
        ),
        ("strategy", metrics["strategy"]),
        ("limits", ", ".join(f"{k} {v:g}" for k, v in metrics["limits"].items())),
        (
            "proposals",
            f"{metrics['proposals']:,}: "
            + ", ".join(f"{k} {v:,}" for k, v in metrics["decisions"].items()),
        ),
        ("fills", f"{metrics['fills']:,} (the allowed quantity, at the next open)"),
        (
            "dead letters",
            ", ".join(f"{k} {v:,}" for k, v in metrics["dead_letters"].items()) or "none",
        ),
        ("flow input", f"{metrics['events']:,} events in {metrics['elapsed_s']:.1f} s"),
        (
            "var_before check",
            "the flow's var_before equals z &middot; |position &middot; close| &middot;"
            f" daily_vol on {check['agreed']:,} of {check['checked']:,} days with a proposal",
        ),
    ]
    body = "".join(
        f"<tr><th>{k}</th><td>{v if k == 'var_before check' else html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table class="facts"><tbody>{body}</tbody></table>'


CSS = """
body{FONT;margin:24px auto;max-width:1200px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666;font-size:13px} section{background:#fff;padding:12px 16px;margin:14px 0;
border:1px solid #e3e3e3;border-radius:6px;overflow-x:auto}
svg{display:block;max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #ddd;
padding:4px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
table.facts th{text-align:left;width:150px} table.facts td{text-align:left}
td:first-child{white-space:nowrap}
.zone{color:#fff;padding:1px 6px;border-radius:3px;font-weight:600}
""".replace("FONT", FONT)


def render(result: BacktestResult, metrics: dict[str, Any]) -> str:
    """The whole report as HTML."""
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    regimes = {
        "flow": "Regime probabilities: the flow's own RegimeEvents at each daily bar close.",
        "markov_baseline": (
            "Regime probabilities: the flow emitted no regime events for this data, so this is"
            " a causal Markov-switching filter on daily log returns (statsmodels, switching"
            " variance, parameters fitted on the period)."
        ),
    }.get(result.regime_source, "No regime probabilities.")
    total = max(1, metrics["proposals"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>riskstream backtest: {html.escape(result.instrument_id)}</title>
<style>{CSS}</style></head><body>
<h1>riskstream backtest: {html.escape(result.instrument_id)}</h1>
<p class="muted">Generated {created} by <code>riskstream backtest</code>: the pre-trade
dataflow in replay mode over daily data, proposals after each close, fills of the allowed
quantity at the next open.</p>
<section>{summary_table(metrics)}</section>
<section><h2>Price, position and regimes</h2>{price_regime_chart(result)}
<p class="muted">{regimes}</p></section>
<section><h2>Decisions</h2>{decisions_chart(result)}</section>
<section><h2>Risk scores</h2>{score_chart(result)}</section>
<section><h2>VaR backtest</h2>{var_chart(result)}
<p class="muted">VaR forecast at each close for the book then held; P&amp;L is the next
day's change in value of that book (hypothetical: no trades). An exception is a loss
larger than the VaR. Kupiec (1995) tests the exception rate, Christoffersen (1998) their
independence (transitions n<sub>ij</sub>: day t-1 in state i, day t in j) and both
together; p-values from chi-squared with 1, 1 and 2 degrees of freedom. The traffic light
is the Basel zone of the binomial probability of at most that many exceptions (green
&lt; 95%, yellow &lt; 99.99%); for 250 days at 99% it is the Basel table.</p>
{var_table(result.var)}</section>
<section><h2>Decisions by reason</h2>
{counts_table("decision", metrics["decisions"], total)}
{counts_table("reason", metrics["reasons"], total)}</section>
</body></html>
"""


def write_report(result: BacktestResult, path: Path) -> dict[str, Any]:
    """Write the HTML report; its metrics."""
    metrics = result.metrics()
    path.write_text(render(result, metrics), encoding="utf-8")
    return metrics
