"""``models/artifacts/manifest.json``: what each exported model is, and its sha256."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent.parent / "models" / "artifacts"
MANIFEST = ARTIFACTS / "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape (None for a dynamic axis) of a model input or output."""

    name: str
    dtype: str
    shape: list[int | None]


@dataclass(frozen=True)
class ArtifactEntry:
    """One exported model."""

    name: str
    """Stable model name, e.g. ``regime_tft``."""
    version: str
    file: str
    """File name inside models/artifacts/."""
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float] = field(default_factory=dict)
    """Validation metrics and the ONNX-vs-PyTorch parity error."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything the runtime needs besides tensors (feature names, scalers, classes)."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactEntry:
        """Parse a manifest entry."""
        specs = {k: [TensorSpec(**t) for t in raw[k]] for k in ("inputs", "outputs")}
        return cls(**{**raw, **specs})


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path = MANIFEST) -> dict[str, ArtifactEntry]:
    """Entries by model name (empty when there is no manifest yet)."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: ArtifactEntry.from_dict(entry) for name, entry in raw["models"].items()}


def register(entry: ArtifactEntry, path: Path = MANIFEST) -> None:
    """Add or replace one entry, atomically and safely against concurrent writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".manifest.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        models = {k: asdict(v) for k, v in load_manifest(path).items()}
        models[entry.name] = asdict(entry)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": dict(sorted(models.items()))}, indent=2) + "\n")
        os.replace(tmp, path)
