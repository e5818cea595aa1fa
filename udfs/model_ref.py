"""``ModelRef``: the immutable, picklable identity of a model artifact.

The cache key is the artifact's *content* hash (plus backend and device), not the path or the
UDF object: re-creating a UDF, or a second job in the same worker, reuses the loaded model, and a
new artifact at the same path always misses.

``uri`` is a local file or a URI on a store (``s3://``, ``gs://``, ``abfss://``, ``hdfs://``): each
executor fetches it once into a local content-addressed cache (:func:`read_artifact`,
``$BATCHSCORE_ARTIFACT_CACHE``, default ``~/.cache/batchscore/artifacts``), named by its sha256
and checked against it, so a second job with the same artifact reuses the file and a changed
object at the same URI is refused. A registered MLflow model (``models:/...``) is
resolved on the driver by ``batchscore.registry.resolve`` into a content-addressed file first:
executors get that path and its hash and never call the registry (:func:`read_artifact` refuses
a ``models:`` URI rather than guess).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchscore.errors import ModelError
from batchscore.storage import DEFAULT, Storage


@dataclass(frozen=True)
class ModelRef:
    uri: str
    sha256: str
    format: str  # "onnx" | "torchscript" | "torch_export"
    device: str = "cpu"  # as configured: "cpu" | "cuda" | "auto" (resolved per task)
    precision: str = "fp32"
    n_features: int | None = None  # for the warm-up batch at load
    storage: Storage = DEFAULT  # how executors reach ``uri`` (variable names only)

    def cache_key(self, device: str) -> tuple[str, str, str, str]:
        """Content hash + backend + *resolved* device + precision."""
        return (self.sha256, self.format, device, self.precision)


def read_artifact(path: str, storage: Storage = DEFAULT, *, sha256: str | None = None) -> bytes:
    """The artifact's bytes: a local file read; a store URI fetched (once per machine, when
    ``sha256`` is known: the cached ``<sha256>`` file is used if its content still hashes so)."""
    from batchscore import storage as st

    if path.startswith("models:"):
        raise ModelError(f"{path} is a registered MLflow model, not a file: resolve it on the driver first "
                         "(batchscore.registry.resolve, which jobs.score does); executors never call the registry")
    if st.is_local(path):
        p = Path(st.normalize(path))
        if not p.is_file():
            raise ModelError(f"model artifact {path} not found; check model.uri in the model config")
        return p.read_bytes()
    cached = Path(st.artifact_cache_dir()) / sha256 if sha256 else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        if hash_bytes(data) == sha256:
            return data
    if not st.is_file(path, storage):
        st.check_reachable(path, storage, what="fetch the model artifact")
        raise ModelError(f"model artifact {path} not found; check model.uri in the model config")
    data = st.read_bytes(path, storage)
    if cached is not None and hash_bytes(data) == sha256:  # only verified bytes enter the cache
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".fetch-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, cached)
        except OSError:  # an unwritable cache only costs the next job a fetch (set BATCHSCORE_ARTIFACT_CACHE)
            pass
    return data


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_ref(path: str, fmt: str, device: str = "cpu", n_features: int | None = None,
              storage: Storage = DEFAULT) -> ModelRef:
    """Hash the artifact at ``path`` (on the driver) into a :class:`ModelRef`."""
    return ModelRef(uri=path, sha256=hash_bytes(read_artifact(path, storage)), format=fmt, device=device,
                    n_features=n_features, storage=storage)
