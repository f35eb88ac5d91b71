"""The recent ticks of one instrument in event-time order, for as-of lookups.

A fixed window of ``capacity`` ticks kept sorted by event time inside a buffer twice as
long, so appends are O(1) (amortized over a compaction every ``capacity`` ticks) and a
tick that arrives out of order shifts only the ticks after it. When full, the oldest tick
goes; a tick older than every tick of a full window is not kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

_HEAD, _COUNT = 0, 1
BID, ASK, LAST, YIELD = range(4)


@njit(cache=True)
def _compact(h_ts: np.ndarray, h_vals: np.ndarray, meta: np.ndarray) -> None:
    head, n = meta[_HEAD], meta[_COUNT]
    h_ts[:n] = h_ts[head : head + n].copy()
    h_vals[:n] = h_vals[head : head + n].copy()
    meta[_HEAD] = 0


@njit(cache=True)
def insert_ticks(
    h_ts: np.ndarray,
    h_vals: np.ndarray,
    meta: np.ndarray,
    ts: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    last: np.ndarray,
    yld: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """Insert ticks ``lo .. hi - 1`` at their event-time place (after equal times)."""
    cap = h_ts.shape[0] // 2
    for j in range(lo, hi):
        head, n, t = meta[_HEAD], meta[_COUNT], ts[j]
        if n == 0 or t >= h_ts[head + n - 1]:
            i = n
        else:
            a, b = 0, n  # bisect right
            while a < b:
                mid = (a + b) // 2
                if t < h_ts[head + mid]:
                    b = mid
                else:
                    a = mid + 1
            i = a
        if i == 0 and n == cap:
            continue
        if n == cap:
            meta[_HEAD] += 1
            meta[_COUNT] -= 1
            i -= 1
        if meta[_HEAD] + meta[_COUNT] == h_ts.shape[0]:
            _compact(h_ts, h_vals, meta)
        head, n = meta[_HEAD], meta[_COUNT]
        for k in range(head + n, head + i, -1):
            h_ts[k] = h_ts[k - 1]
            h_vals[k] = h_vals[k - 1]
        h_ts[head + i] = t
        h_vals[head + i, BID] = bid[j]
        h_vals[head + i, ASK] = ask[j]
        h_vals[head + i, LAST] = last[j]
        h_vals[head + i, YIELD] = yld[j]
        meta[_COUNT] = n + 1


class TickHistory:
    """The last ``capacity`` ticks by event time: (bid, ask, last, yield or NaN) each."""

    __slots__ = ("_meta", "_ts", "_vals")

    def __init__(self, capacity: int = 4096) -> None:
        self._ts = np.zeros(2 * capacity, dtype=np.int64)
        self._vals = np.zeros((2 * capacity, 4))
        self._meta = np.zeros(2, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._meta[_COUNT])

    def insert(
        self,
        ts: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        last: np.ndarray,
        yld: np.ndarray,
        lo: int,
        hi: int,
    ) -> None:
        """Add ticks ``lo .. hi - 1`` of the columns."""
        insert_ticks(self._ts, self._vals, self._meta, ts, bid, ask, last, yld, lo, hi)

    def as_of(self, ts: int) -> tuple[int, np.ndarray] | None:
        """Event time and values of the last tick at or before ``ts`` (None if none)."""
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        i = int(np.searchsorted(self._ts[head : head + n], ts, side="right"))
        if not i:
            return None
        return int(self._ts[head + i - 1]), self._vals[head + i - 1]

    def __getstate__(self) -> dict[str, Any]:
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        return {
            "capacity": len(self._ts) // 2,
            "ts": self._ts[head : head + n].copy(),
            "vals": self._vals[head : head + n].copy(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        TickHistory.__init__(self, state["capacity"])
        n = len(state["ts"])
        self._ts[:n] = state["ts"]
        self._vals[:n] = state["vals"]
        self._meta[_COUNT] = n
