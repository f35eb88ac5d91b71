"""The as-of histories of one instrument: ticks and bar-close features, by event time.

Both keep everything from an eviction point on (the caller moves it: the proposals'
frontier), at least the newest ``keep`` entries, at most ``cap`` (then the oldest go).
Whatever was dropped leaves a *floor*: ``reaches(ts)`` says whether an as-of lookup at
``ts`` is still exact, so a lookup that needs dropped data is known, never silently wrong.

Ticks are kept sorted by event time in a buffer that grows (doubling) up to 1.25 x the
cap: appends are O(1) amortized (a compaction moves the window to the front when the
buffer's end is reached), a tick that arrives out of order shifts only the ticks after
it, and a whole run of ticks goes in one compiled call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

_HEAD, _COUNT, _FLOOR = 0, 1, 2
NO_FLOOR = -(2**63)
"""Floor of a history that never dropped anything."""
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
    cap: int,
    may_grow: bool,
) -> int:
    """Insert ticks ``lo .. hi - 1`` at their event-time place (after equal times).

    A tick below the floor is not kept; at ``cap`` ticks the oldest goes (raising the
    floor). Returns the first tick not inserted because the buffer should grow first
    (``hi`` when all are done).
    """
    size = h_ts.shape[0]
    for j in range(lo, hi):
        t = ts[j]
        if t < meta[_FLOOR]:
            continue
        if meta[_HEAD] + meta[_COUNT] == size:
            if may_grow and 4 * meta[_COUNT] > 3 * size:
                return j
            _compact(h_ts, h_vals, meta)
        head, n = meta[_HEAD], meta[_COUNT]
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
        if n >= cap:
            if i == 0:  # older than every tick of a full history
                meta[_FLOOR] = max(meta[_FLOOR], t)
                continue
            meta[_FLOOR] = max(meta[_FLOOR], h_ts[head])
            head += 1
            n -= 1
            i -= 1
            meta[_HEAD] = head
            meta[_COUNT] = n
        for k in range(head + n, head + i, -1):
            h_ts[k] = h_ts[k - 1]
            h_vals[k] = h_vals[k - 1]
        h_ts[head + i] = t
        h_vals[head + i, BID] = bid[j]
        h_vals[head + i, ASK] = ask[j]
        h_vals[head + i, LAST] = last[j]
        h_vals[head + i, YIELD] = yld[j]
        meta[_COUNT] = n + 1
    return hi


class TickHistory:
    """Ticks by event time: (bid, ask, last, yield or NaN) each; see the module doc."""

    __slots__ = ("_meta", "_ts", "_vals", "cap", "keep")

    def __init__(self, keep: int = 4096, cap: int = 262_144) -> None:
        self.keep = keep
        self.cap = max(cap, keep)
        size = min(2 * keep, self.max_size)
        self._ts = np.zeros(size, dtype=np.int64)
        self._vals = np.zeros((size, 4))
        self._meta = np.array([0, 0, NO_FLOOR], dtype=np.int64)

    @property
    def max_size(self) -> int:
        """The largest the buffer grows: the cap plus a quarter for amortized compaction."""
        return self.cap + max(self.cap // 4, 1)

    def __len__(self) -> int:
        return int(self._meta[_COUNT])

    @property
    def floor(self) -> int:
        """The newest event time dropped (``NO_FLOOR`` when nothing was)."""
        return int(self._meta[_FLOOR])

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers."""
        return self._ts.nbytes + self._vals.nbytes

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
        while lo < hi:
            may_grow = len(self._ts) < self.max_size
            lo = insert_ticks(
                self._ts, self._vals, self._meta, ts, bid, ask, last, yld, lo, hi, self.cap,
                may_grow,
            )  # fmt: skip
            if lo < hi:
                self._grow()

    def _grow(self) -> None:
        self._resize(min(2 * len(self._ts), self.max_size))

    def _resize(self, size: int) -> None:
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        ts, vals = np.zeros(size, dtype=np.int64), np.zeros((size, 4))
        ts[:n] = self._ts[head : head + n]
        vals[:n] = self._vals[head : head + n]
        self._ts, self._vals = ts, vals
        self._meta[_HEAD] = 0

    def evict(self, through: int) -> int:
        """Drop what no lookup at or after ``through`` needs, keeping the newest ``keep``.

        The last tick at or before ``through`` stays. Returns how many ticks went.
        """
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        k = int(np.searchsorted(self._ts[head : head + n], through, side="right")) - 1
        k = min(k, n - self.keep)
        if k <= 0:
            return 0
        self._meta[_FLOOR] = max(int(self._meta[_FLOOR]), int(self._ts[head + k - 1]))
        self._meta[_HEAD] = head + k
        self._meta[_COUNT] = n - k
        if len(self._ts) > 2 * self.keep and 4 * (n - k) < len(self._ts):  # give memory back
            self._resize(min(max(2 * (n - k), 2 * self.keep), self.max_size))
        return k

    def reaches(self, ts: int) -> bool:
        """True when :meth:`as_of` at ``ts`` is exact (no dropped tick could be the answer)."""
        n = int(self._meta[_COUNT])
        if self._meta[_FLOOR] == NO_FLOOR:
            return True
        return n > 0 and ts >= self._ts[self._meta[_HEAD]]

    def as_of(self, ts: int) -> tuple[int, np.ndarray] | None:
        """Event time and values of the last tick at or before ``ts`` (None if none)."""
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        i = int(np.searchsorted(self._ts[head : head + n], ts, side="right"))
        if not i:
            return None
        return int(self._ts[head + i - 1]), self._vals[head + i - 1]

    def oldest(self) -> int | None:
        """Event time of the oldest tick kept (None when empty)."""
        return int(self._ts[self._meta[_HEAD]]) if self._meta[_COUNT] else None

    def __getstate__(self) -> dict[str, Any]:
        head, n = int(self._meta[_HEAD]), int(self._meta[_COUNT])
        return {
            "keep": self.keep,
            "cap": self.cap,
            "floor": int(self._meta[_FLOOR]),
            "ts": self._ts[head : head + n].copy(),
            "vals": self._vals[head : head + n].copy(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        TickHistory.__init__(self, state["keep"], state["cap"])
        n = len(state["ts"])
        while len(self._ts) < n:
            self._grow()
        self._ts[:n] = state["ts"]
        self._vals[:n] = state["vals"]
        self._meta[_COUNT] = n
        self._meta[_FLOOR] = state["floor"]


class BarHistory:
    """Bar-close features by bar end (bars close in order); see the module doc.

    Rows of one float array under the first bar's feature names (264 bytes a bar for 32
    features, against about 1.6 KB for a dict).
    """

    __slots__ = ("_floor", "_head", "_n", "_names", "_ts", "_vals", "cap", "keep")

    def __init__(self, keep: int = 512, cap: int = 16_384) -> None:
        self.keep = keep
        self.cap = max(cap, keep)
        self._names: tuple[str, ...] = ()
        self._ts = np.zeros(0, dtype=np.int64)
        self._vals = np.zeros((0, 0))
        self._head = self._n = 0
        self._floor = NO_FLOOR

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers."""
        return self._ts.nbytes + self._vals.nbytes

    def append(self, end_ns: int, features: dict[str, float]) -> None:
        """Add the features of the bar that ended at ``end_ns`` (the newest bar)."""
        if not self._names:
            self._names = tuple(features)
        if tuple(features) != self._names:
            raise ValueError("bar features changed names")
        if self._n >= self.cap:
            self._drop(self._n - self.cap + 1)
        if self._head + self._n == len(self._ts):
            self._make_room()
        i = self._head + self._n
        self._ts[i] = end_ns
        self._vals[i] = np.fromiter(features.values(), np.float64, len(self._names))
        self._n += 1

    def _make_room(self) -> None:
        size = len(self._ts)
        if self._n * 4 > size * 3 or not size:  # grow; else compact in place
            size = min(max(2 * size, 2 * self.keep), self.cap + max(self.cap // 4, 1))
        self._resize(size)

    def _resize(self, size: int) -> None:
        ts = np.zeros(size, dtype=np.int64)
        vals = np.zeros((size, len(self._names)))
        if self._n:
            live = slice(self._head, self._head + self._n)
            ts[: self._n], vals[: self._n] = self._ts[live], self._vals[live]
        self._ts, self._vals, self._head = ts, vals, 0

    def _drop(self, k: int) -> None:
        self._floor = max(self._floor, int(self._ts[self._head + k - 1]))
        self._head += k
        self._n -= k

    def evict(self, through: int) -> int:
        """Drop bars no lookup at or after ``through`` needs, keeping the newest ``keep``."""
        live = self._ts[self._head : self._head + self._n]
        k = min(int(np.searchsorted(live, through, side="right")) - 1, self._n - self.keep)
        if k <= 0:
            return 0
        self._drop(k)
        if len(self._ts) > 2 * self.keep and 4 * self._n < len(self._ts):  # give memory back
            self._resize(max(2 * self._n, 2 * self.keep))
        return k

    def reaches(self, ts: int) -> bool:
        """True when :meth:`as_of` at ``ts`` is exact (no dropped bar could be the answer)."""
        return self._floor == NO_FLOOR or (self._n > 0 and ts >= self._ts[self._head])

    def as_of(self, ts: int) -> dict[str, float]:
        """Finite features of the last bar that ended at or before ``ts`` ({} if none)."""
        live = self._ts[self._head : self._head + self._n]
        i = int(np.searchsorted(live, ts, side="right"))
        return self._row(i - 1) if i else {}

    def last(self) -> dict[str, float]:
        """Every feature of the newest bar, NaN included ({} before the first bar)."""
        if not self._n:
            return {}
        row = self._vals[self._head + self._n - 1]
        return dict(zip(self._names, row.tolist(), strict=True))

    def last_end(self) -> int | None:
        """End of the newest bar (None before the first bar)."""
        return int(self._ts[self._head + self._n - 1]) if self._n else None

    def _row(self, i: int) -> dict[str, float]:
        row = self._vals[self._head + i].tolist()
        return {k: v for k, v in zip(self._names, row, strict=True) if math.isfinite(v)}

    def __getstate__(self) -> dict[str, Any]:
        live = slice(self._head, self._head + self._n)
        return {
            "keep": self.keep,
            "cap": self.cap,
            "names": self._names,
            "floor": self._floor,
            "ts": self._ts[live].copy(),
            "vals": self._vals[live].copy(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        BarHistory.__init__(self, state["keep"], state["cap"])
        self._names = state["names"]
        self._ts, self._vals = state["ts"], state["vals"]
        self._n = len(self._ts)
        self._floor = state["floor"]
