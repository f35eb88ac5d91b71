"""ONNX Runtime sessions for exported models, refused unless the artifact's hash matches.

A *model set* is a directory with a ``manifest.json`` and the artifacts it names. Switching
the live models is a configuration change: point ``RISKSTREAM_MODEL_DIR`` at another set
and, to be sure of what runs, pin its manifest with ``RISKSTREAM_MODEL_MANIFEST_SHA256``;
:func:`verify_model_set` refuses a set whose manifest or artifacts do not match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, load_manifest, sha256_file
from operators.errors import RiskstreamError

DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
"""Graph rewrites left out of every served session: the fused SkipLayerNormalization is
slower than the plain Add + LayerNormalization on the regime TFT's 64-wide rows (batch 1:
about 20 % when the batch dimension is pinned, 2 % when it is free, measured on one core)."""
BATCH_DIM = "batch"
"""The artifacts' free batch dimension (``dynamic_axes`` at export)."""


class ArtifactError(RiskstreamError):
    """A model artifact is missing, unknown, or does not match its manifest hash."""


@dataclass
class LoadedModel:
    """ONNX Runtime sessions and the manifest entry they were verified against.

    ``session`` takes any batch size; ``single``, when set, is a session of the same
    artifact with the batch dimension pinned to 1 (shape arithmetic folded into
    constants), used for batch-1 calls: one bar close at a time, the live case.
    """

    entry: ArtifactEntry
    session: Any
    single: Any = None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; outputs by name."""
        names = [o.name for o in self.entry.outputs]
        one = self.single is not None and all(len(x) == 1 for x in inputs.values())
        session = self.single if one else self.session
        return dict(zip(names, session.run(names, inputs), strict=True))


def verify_model_set(
    artifacts: Path, manifest: Path | None = None, expected_sha256: str | None = None
) -> dict[str, ArtifactEntry]:
    """The manifest's entries once the manifest and every artifact match their hashes.

    ``expected_sha256`` pins the manifest file itself (None: any manifest). Raises
    :class:`ArtifactError` naming the file and both hashes on any mismatch.
    """
    path = manifest or artifacts / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"model set {artifacts}: no manifest at {path}")
    actual = sha256_file(path)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise ArtifactError(
            f"model set {artifacts}: {path.name} has sha256 {actual}, the configuration pins"
            f" {expected_sha256}; refusing to use it"
        )
    try:
        entries = load_manifest(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model set {artifacts}: cannot read {path}: {exc!r}") from None
    if not entries:
        raise ArtifactError(f"model set {artifacts}: {path} lists no models")
    for name, entry in sorted(entries.items()):
        check_artifact(name, entry, artifacts)
    return entries


def check_artifact(name: str, entry: ArtifactEntry, artifacts: Path) -> Path:
    """The artifact's path, if it exists and its sha256 is the manifest's."""
    path = artifacts / entry.file
    if not path.exists():
        raise ArtifactError(f"model {name!r}: artifact {path} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ArtifactError(
            f"model {name!r}: {path} has sha256 {actual[:12]}..., the manifest says"
            f" {entry.sha256[:12]}...; refusing to load it"
        )
    return path


def session_options(threads: int = 1, batch: int | None = None) -> Any:
    """ONNX Runtime options of every served model: small graphs, latency first.

    All graph optimisations (the artifacts are portable ONNX; fusions happen at load),
    ``threads`` intra-op threads that do not spin while idle (the flow shares its cores),
    one inter-op thread and sequential execution: the graphs are chains of small nodes
    with nothing to run in parallel, so a scheduler would only add overhead. ``batch``
    pins the free batch dimension (None: any batch size).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if batch is not None:
        options.add_free_dimension_override_by_name(BATCH_DIM, batch)
    return options


def inference_session(model: bytes, threads: int = 1, batch: int | None = None) -> Any:
    """A CPU session of ``model`` with the served options (:func:`session_options`)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        model,
        session_options(threads, batch),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def load_model(
    name: str, manifest: Path = MANIFEST, artifacts: Path = ARTIFACTS, threads: int = 1
) -> LoadedModel:
    """Load ``name`` from the manifest, verifying the file's sha256 first.

    Two sessions of the verified bytes: any batch size, and batch 1 (:class:`LoadedModel`).
    """
    entries = load_manifest(manifest)
    entry = entries.get(name)
    if entry is None:
        raise ArtifactError(f"model {name!r} is not in {manifest}; known: {sorted(entries)}")
    model = check_artifact(name, entry, artifacts).read_bytes()
    return LoadedModel(
        entry, inference_session(model, threads), inference_session(model, threads, 1)
    )
