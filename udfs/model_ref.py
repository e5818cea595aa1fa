"""``ModelRef``: the immutable, picklable identity of a model artifact.

The cache key is the artifact's *content* hash (plus backend and device), not the path or the
UDF object: re-creating a UDF, or a second job in the same worker, reuses the loaded model, and a
new artifact at the same path always misses.

``uri`` is always a local (or mounted) file. A registered MLflow model (``models:/...``) is
resolved on the driver by ``batchscore.registry.resolve`` into a content-addressed file first:
executors get that path and its hash and never call the registry (:func:`read_artifact` refuses
a ``models:`` URI rather than guess).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from batchscore.errors import ModelError


@dataclass(frozen=True)
class ModelRef:
    uri: str
    sha256: str
    format: str  # "onnx" | "torchscript" | "torch_export"
    device: str = "cpu"  # as configured: "cpu" | "cuda" | "auto" (resolved per task)
    precision: str = "fp32"
    n_features: int | None = None  # for the warm-up batch at load

    def cache_key(self, device: str) -> tuple[str, str, str, str]:
        """Content hash + backend + *resolved* device + precision."""
        return (self.sha256, self.format, device, self.precision)


def read_artifact(path: str) -> bytes:
    if path.startswith("models:"):
        raise ModelError(f"{path} is a registered MLflow model, not a file: resolve it on the driver first "
                         "(batchscore.registry.resolve, which jobs.score does); executors never call the registry")
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model artifact {path} not found; check model.uri in the model config")
    return p.read_bytes()


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_ref(path: str, fmt: str, device: str = "cpu", n_features: int | None = None) -> ModelRef:
    """Hash the artifact at ``path`` (on the driver) into a :class:`ModelRef`."""
    return ModelRef(uri=path, sha256=hash_bytes(read_artifact(path)), format=fmt, device=device, n_features=n_features)
