"""Recovery snapshots of operator state: pickled bytes, an immutable copy made at C speed.

Bytewax asks every stateful step for a snapshot at each epoch, recovery on or off, so the
copy must be cheap; ``pickle.dumps`` is several times faster than ``copy.deepcopy`` on
the ring buffers the steps keep.
"""

from __future__ import annotations

import pickle
from typing import TypeVar

T = TypeVar("T")


def freeze(state: object, keep: bool = True) -> bytes:
    """An immutable copy of ``state`` for Bytewax to store; nothing when not ``keep``.

    Without recovery no snapshot is ever read back, so none is worth its copy.
    """
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL) if keep else b""


def thaw(snapshot: bytes | T, kind: type[T]) -> T:
    """The state back from a snapshot (or the state itself, when given one)."""
    if isinstance(snapshot, bytes):
        snapshot = pickle.loads(snapshot)  # our own snapshot, never data from the network
    if not isinstance(snapshot, kind):
        raise TypeError(f"snapshot holds a {type(snapshot).__name__}, not a {kind.__name__}")
    return snapshot
