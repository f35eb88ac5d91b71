"""Per-update cost of the feature kernels against talib.stream and pandas recomputation.

Run: ``python bench/kernels_bench.py`` (about a minute). Writes ``bench/results/kernels.json``
and ``bench/results/kernels.md``.

For each feature, in the same run and on the same price path:

* ours: ``state.update(x).get()`` per new bar (Numba kernels, warm);
* talib.stream: one ``talib.stream.<FN>(last_250_bars)`` call per new bar (a streaming user
  keeps a 250-bar history and asks TA-Lib for the newest value);
* pandas: recompute the feature over the last 250 bars with pandas rolling / ewm per new bar.

Each timing is the best of ``REPEATS`` interleaved runs (the machine is shared; the load
average is recorded); ratios are ``their_ns / our_ns``. Targets: no slower than talib.stream
(ratio >= 1), >= 50x faster than pandas.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import talib
import talib.stream as ts

from operators.kernels import (
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    Bollinger,
    EwmaVol,
    FeatureConfig,
    HistoricalVaR,
    InstrumentFeatures,
    ParametricVaR,
    RealizedVol,
)

WINDOW = 250  # bars of history handed to talib.stream / pandas per update
N_OURS = 20_000  # updates timed for ours and talib.stream
N_PANDAS = 400  # pandas is ~1000x slower: fewer updates
REPEATS = 5
RESULTS = Path(__file__).resolve().parent / "results"


def price_path(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closes, highs and lows of a geometric random walk."""
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    spread = np.abs(rng.normal(0.0, 0.005, n)) * c
    return c, c + spread, c - spread


def time_ns(fn: Callable[[], None], n: int) -> float:
    """Wall time per update of one run of ``fn``, nanoseconds."""
    t = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t) / n


def best_ns(fn: Callable[[], None], n: int) -> float:
    """Best-of-REPEATS wall time per update, nanoseconds."""
    return min(time_ns(fn, n) for _ in range(REPEATS))


# ------------------------------------------------------------------------------------ ours
def ours_loop(
    make: Callable[[], object], feed: str, c: np.ndarray, h: np.ndarray, lo: np.ndarray
) -> Callable[[], None]:
    closes, highs, lows = c.tolist(), h.tolist(), lo.tolist()
    rets = (np.diff(np.log(c), prepend=math.log(c[0]))).tolist()

    def run() -> None:
        s: object = make()
        if feed == "close":
            upd = s.update  # type: ignore[attr-defined]
            get = s.get  # type: ignore[attr-defined]
            for x in closes:
                upd(x)
                get()
        elif feed == "ret":
            upd, get = s.update, s.get  # type: ignore[attr-defined]
            for x in rets:
                upd(x)
                get()
        else:
            upd, get = s.update, s.get  # type: ignore[attr-defined]
            for x, y, z in zip(highs, lows, closes, strict=True):
                upd(x, y, z)
                get()

    return run


# ---------------------------------------------------------------------------- talib.stream
def talib_loop(call: Callable[[int], object], n: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(WINDOW, WINDOW + n):
            call(i)

    return run


# ----------------------------------------------------------------------------------- pandas
def pd_rsi(s: pd.Series, n: int = 14) -> float:
    d = s.diff()
    gain = d.clip(lower=0).ewm(alpha=1.0 / n, adjust=False).mean()
    loss = (-d.clip(upper=0)).ewm(alpha=1.0 / n, adjust=False).mean()
    return float(100.0 * gain.iloc[-1] / (gain.iloc[-1] + loss.iloc[-1]))


def pd_macd(s: pd.Series) -> tuple[float, float]:
    line = s.ewm(span=12, adjust=False).mean() - s.ewm(span=26, adjust=False).mean()
    sig = line.ewm(span=9, adjust=False).mean()
    return float(line.iloc[-1]), float(sig.iloc[-1])


def pd_bbands(s: pd.Series) -> tuple[float, float]:
    r = s.rolling(20)
    return float(r.mean().iloc[-1]), float(r.std(ddof=0).iloc[-1])


def pd_atr(df: pd.DataFrame) -> float:
    prev = df["c"].shift()
    tr = pd.concat([df["h"] - df["l"], (df["h"] - prev).abs(), (df["l"] - prev).abs()], axis=1)
    return float(tr.max(axis=1).ewm(alpha=1.0 / 14, adjust=False).mean().iloc[-1])


def pandas_loop(fn: Callable[[int], object], n: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(WINDOW, WINDOW + n):
            fn(i)

    return run


def main() -> int:
    n_total = WINDOW + N_OURS + 1
    c, h, lo = price_path(n_total)
    lr = np.diff(np.log(c), prepend=math.log(c[0]))
    r = c / np.roll(c, 1) - 1.0
    r[0] = 0.0
    frame = pd.DataFrame({"h": h, "l": lo, "c": c})
    w = WINDOW

    def win(a: np.ndarray, i: int) -> np.ndarray:
        return a[i - w + 1 : i + 1]

    def swin(a: np.ndarray, i: int) -> pd.Series:
        return pd.Series(a[i - w + 1 : i + 1])

    # name, ours factory, feed, talib.stream call (or None), pandas recomputation
    cases: list[
        tuple[
            str, Callable[[], object], str, Callable[[int], object] | None, Callable[[int], object]
        ]
    ] = [
        (
            "sma_20",
            lambda: SMA(20),
            "close",
            lambda i: ts.SMA(win(c, i), 20),
            lambda i: swin(c, i).rolling(20).mean().iloc[-1],
        ),
        (
            "ema_20",
            lambda: EMA(20),
            "close",
            lambda i: ts.EMA(win(c, i), 20),
            lambda i: swin(c, i).ewm(span=20, adjust=False).mean().iloc[-1],
        ),
        (
            "rsi_14",
            lambda: RSI(14),
            "close",
            lambda i: ts.RSI(win(c, i), 14),
            lambda i: pd_rsi(swin(c, i)),
        ),
        (
            "macd_12_26_9",
            lambda: MACD(12, 26, 9),
            "close",
            lambda i: ts.MACD(win(c, i), 12, 26, 9),
            lambda i: pd_macd(swin(c, i)),
        ),
        (
            "bb_20_2",
            lambda: Bollinger(20, 2.0, 2.0),
            "close",
            lambda i: ts.BBANDS(win(c, i), 20, 2.0, 2.0, 0),
            lambda i: pd_bbands(swin(c, i)),
        ),
        (
            "atr_14",
            lambda: ATR(14),
            "hlc",
            lambda i: ts.ATR(win(h, i), win(lo, i), win(c, i), 14),
            lambda i: pd_atr(frame.iloc[i - w + 1 : i + 1]),
        ),
        (
            "rvol_20",
            lambda: RealizedVol(20),
            "ret",
            lambda i: ts.STDDEV(win(lr, i), 20, 1.0),
            lambda i: swin(lr, i).rolling(20).std().iloc[-1],
        ),
        (
            "ewm_vol_0.94",
            lambda: EwmaVol(0.94),
            "ret",
            None,
            lambda i: math.sqrt((swin(lr, i) ** 2).ewm(alpha=0.06, adjust=False).mean().iloc[-1]),
        ),
        (
            "var_hist_0.95_1",
            lambda: HistoricalVaR(250, 0.95),
            "ret",
            None,
            lambda i: swin(r, i).quantile(0.05),
        ),
        (
            "var_normal_0.95_1",
            lambda: ParametricVaR(250, 0.95),
            "ret",
            None,
            lambda i: (lambda s: s.mean() - 1.6448536269514722 * s.std())(swin(r, i)),
        ),
    ]

    # warm up every kernel (compilation / cache load) before timing
    for _, make, feed, _, _ in cases:
        ours_loop(make, feed, c[:300], h[:300], lo[:300])()

    rows = []
    for name, make, feed, ta_call, pd_call in cases:
        sl = slice(w, w + N_OURS)
        ours_run = ours_loop(make, feed, c[sl], h[sl], lo[sl])
        ta_run = talib_loop(ta_call, N_OURS) if ta_call else None
        pd_run = pandas_loop(pd_call, N_PANDAS)
        ours = ta_best = pdn = math.inf
        for _ in range(REPEATS):  # interleaved, so all three see the same machine load
            ours = min(ours, time_ns(ours_run, N_OURS))
            if ta_run is not None:
                ta_best = min(ta_best, time_ns(ta_run, N_OURS))
            pdn = min(pdn, time_ns(pd_run, N_PANDAS))
        ta = None if ta_run is None else ta_best
        rows.append(
            {
                "feature": name,
                "ours_ns": round(ours, 1),
                "talib_stream_ns": None if ta is None else round(ta, 1),
                "pandas_ns": round(pdn, 1),
                "speedup_vs_talib_stream": None if ta is None else round(ta / ours, 2),
                "speedup_vs_pandas": round(pdn / ours, 1),
                "meets_talib_target": None if ta is None else ta / ours >= 1.0,
                "meets_pandas_target": pdn / ours >= 50.0,
            }
        )
        print(
            f"{name:18s} ours {ours:8.0f} ns  talib.stream "
            f"{'-' if ta is None else f'{ta:8.0f}'} ns  pandas {pdn:10.0f} ns",
            flush=True,
        )

    engine = engine_costs()
    print(f"engine: on_tick {engine['on_tick_ns']:.0f} ns, on_bar {engine['on_bar_ns']:.0f} ns")
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "talib": talib.__version__,
        "window_bars": WINDOW,
        "updates_timed": {"ours": N_OURS, "talib_stream": N_OURS, "pandas": N_PANDAS},
        "repeats_best_of": REPEATS,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "results": rows,
        "engine": engine,
        "all_targets_met": all(
            r["meets_pandas_target"] and r["meets_talib_target"] is not False for r in rows
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "kernels.md").write_text(markdown(report))
    print(
        f"wrote {RESULTS / 'kernels.json'} and kernels.md; "
        f"all targets met: {report['all_targets_met']}"
    )
    return 0


def engine_costs() -> dict[str, float]:
    """Per-tick cost of InstrumentFeatures.on_tick (60 ticks per bar) and per closed bar."""
    s = 1_000_000_000
    rng = np.random.default_rng(7)
    n = 60_000
    px = (100.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, n)))).tolist()
    t0 = 1_700_000_040 * s
    ticks = [(t0 + k * s, p - 0.01, p + 0.01, p, 100.0) for k, p in enumerate(px)]

    def run() -> None:
        eng = InstrumentFeatures(FeatureConfig(bar_interval_ns=60 * s, lateness_ns=2 * s))
        on_tick = eng.on_tick
        for t in ticks:
            on_tick(*t)

    run()
    per_tick = best_ns(run, n)
    eng = InstrumentFeatures(FeatureConfig(bar_interval_ns=60 * s, lateness_ns=2 * s))
    for t in ticks:
        eng.on_tick(*t)
    bars = eng.flush()
    eng2 = InstrumentFeatures()
    t = time.perf_counter_ns()
    for b in bars:
        eng2.on_bar(b)
    t = time.perf_counter_ns() - t
    feats = eng.features
    f0 = time.perf_counter_ns()
    for _ in range(10_000):
        feats()
    f1 = time.perf_counter_ns()
    return {
        "on_tick_ns": round(per_tick, 1),
        "ticks_per_bar": 60,
        "on_bar_ns": round(t / len(bars), 1),
        "features_ns": round((f1 - f0) / 10_000, 1),
    }


def markdown(report: dict) -> str:  # type: ignore[type-arg]
    lines = [
        "# Kernel per-update cost",
        "",
        f"{report['generated_at']}, Python {report['python']}, numba {report['numba']}, "
        f"TA-Lib {report['talib']}, pandas {report['pandas']}; best of "
        f"{report['repeats_best_of']} interleaved runs (load average "
        f"{report['load_average_1_5_15'][0]}); talib.stream / pandas get the last "
        f"{report['window_bars']} bars per update.",
        "",
        "| feature | ours (ns) | talib.stream (ns) | pandas 250-bar (ns) | x talib.stream "
        "| x pandas |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ta = "-" if r["talib_stream_ns"] is None else f"{r['talib_stream_ns']:.0f}"
        xta = "-" if r["speedup_vs_talib_stream"] is None else f"{r['speedup_vs_talib_stream']:.2f}"
        lines.append(
            f"| {r['feature']} | {r['ours_ns']:.0f} | {ta} | {r['pandas_ns']:.0f} | {xta} "
            f"| {r['speedup_vs_pandas']:.0f} |"
        )
    e = report["engine"]
    lines += [
        "",
        f"InstrumentFeatures: on_tick {e['on_tick_ns']:.0f} ns/tick ({e['ticks_per_bar']} ticks "
        f"per bar, all features), on_bar {e['on_bar_ns']:.0f} ns, features() "
        f"{e['features_ns']:.0f} ns.",
        "",
        f"Targets (>= 1x talib.stream, >= 50x pandas) met: {report['all_targets_met']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
