"""Assertions and reference helpers shared by the kernel tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np


def assert_matches(
    ours: Sequence[float] | np.ndarray, ref: np.ndarray, rtol: float = 1e-9, atol: float = 0.0
) -> None:
    """NaN exactly where the reference has NaN; elsewhere equal to ``rtol`` relative (+ atol)."""
    a = np.asarray(ours, dtype=float)
    b = np.asarray(ref, dtype=float)
    assert a.shape == b.shape
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    bad = np.flatnonzero(nan_a != nan_b)
    assert bad.size == 0, f"NaN mismatch at {bad[:10]} (ours {a[bad[:3]]}, ref {b[bad[:3]]})"
    m = ~nan_b
    if not m.any():
        return
    floor = 1e-14 * float(np.max(np.abs(b[m])))  # exact zeros in the reference
    err = np.abs(a[m] - b[m])
    lim = rtol * np.abs(b[m]) + floor + atol
    worst = int(np.argmax(err - lim))
    assert np.all(err <= lim), (
        f"max error {err[worst]:.3e} > {lim[worst]:.3e} at {np.flatnonzero(m)[worst]}"
    )


def windows(x: np.ndarray, n: int) -> list[np.ndarray | None]:
    """``x[i-n+1 : i+1]`` for every i, None before the first full window."""
    return [x[i - n + 1 : i + 1] if i >= n - 1 else None for i in range(len(x))]


def rolling_ref(x: np.ndarray, n: int, fn: Callable[[np.ndarray], float]) -> np.ndarray:
    """Reference rolling statistic: ``fn`` recomputed on every full window, NaN before."""
    return np.array([np.nan if w is None else fn(w) for w in windows(x, n)])


def random_walk(n: int, start: float, step: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start + np.cumsum(rng.normal(0.0, step, n))


def rolling_vec(x: np.ndarray, n: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Vectorized reference: ``fn`` maps a (windows, n) array to one value per row."""
    vals = fn(np.lib.stride_tricks.sliding_window_view(x, n))
    return np.concatenate([np.full(n - 1, np.nan), vals])


def same_values(a: Sequence[object], b: Sequence[object]) -> bool:
    """Element-wise equality of (nested) tuples where NaN equals NaN."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if not same_values(x, y):
                return False
        elif not (x == y or (x != x and y != y)):
            return False
    return True


# ---- ticks
S = 1_000_000_000
T0 = 1_700_000_040 * S  # 2023-11-14T22:14:00Z, a multiple of the 60 s interval
Tick = tuple[int, float, float, float, float]


def tick(ts: int, price: float = 100.0, size: float = 1.0, spread: float = 0.02) -> Tick:
    """A valid tick: (ts_ns, price, size, bid, ask) with the quote centred on the price."""
    return (ts, price, size, price - spread / 2, price + spread / 2)


def tick_stream(n: int, seed: int, gap_ns: int = 2 * S) -> list[Tick]:
    """Sorted ticks: a random walk with random gaps and a few equal timestamps."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.integers(0, gap_ns, n))
    px = np.round(100.0 * np.exp(np.cumsum(rng.normal(0.0, 5e-4, n))), 4)
    sz = rng.integers(1, 500, n).astype(float)
    return [tick(int(t), float(p), float(s), 0.02) for t, p, s in zip(ts, px, sz, strict=True)]


def shuffle_within(ticks: list[Tick], lateness_ns: int, seed: int) -> list[Tick]:
    """Reorder so that no tick is more than ``lateness_ns`` older than any earlier one."""
    rnd = random.Random(seed)
    keyed = [(t[0] + rnd.uniform(0, lateness_ns * 0.999), i) for i, t in enumerate(ticks)]
    return [ticks[i] for _, i in sorted(keyed)]
