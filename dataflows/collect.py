"""Garbage collection tuned for a running flow (``riskstream run`` and ``replay``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_GC_THRESHOLD = 10_000
"""Allocations between young-generation collections while a flow runs (Python: 700)."""


@contextmanager
def collect_less() -> Iterator[None]:
    """Cyclic garbage collection that leaves out what exists before the flow starts.

    Modules, models and compiled kernels are never garbage, yet each full collection
    walked all of them (a tenth of a replay's time); a flow makes short-lived objects by
    the million, and fewer young collections find the same garbage.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
