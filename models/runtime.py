"""ONNX Runtime sessions for exported models, refused unless the artifact's hash matches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, load_manifest, sha256_file
from operators.errors import RiskstreamError


class ArtifactError(RiskstreamError):
    """A model artifact is missing, unknown, or does not match its manifest hash."""


@dataclass
class LoadedModel:
    """An ONNX Runtime session and the manifest entry it was verified against."""

    entry: ArtifactEntry
    session: Any

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; outputs by name."""
        names = [o.name for o in self.entry.outputs]
        return dict(zip(names, self.session.run(names, inputs), strict=True))


def load_model(
    name: str, manifest: Path = MANIFEST, artifacts: Path = ARTIFACTS, threads: int = 1
) -> LoadedModel:
    """Load ``name`` from the manifest, verifying the file's sha256 first."""
    import onnxruntime as ort

    entries = load_manifest(manifest)
    entry = entries.get(name)
    if entry is None:
        raise ArtifactError(f"model {name!r} is not in {manifest}; known: {sorted(entries)}")
    path = artifacts / entry.file
    if not path.exists():
        raise ArtifactError(f"model {name!r}: artifact {path} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ArtifactError(
            f"model {name!r}: {path.name} has sha256 {actual[:12]}..., the manifest says"
            f" {entry.sha256[:12]}...; refusing to load it"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
    return LoadedModel(entry, session)
