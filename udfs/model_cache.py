"""A small, bounded, per-Python-worker cache of loaded models.

Keyed by :attr:`ModelRef.cache_key` (content hash, format, device), so every UDF object and every
job that runs in the same Python worker shares one loaded copy, and a changed artifact always
misses. Bounded by count and by artifact bytes; least recently used entries go first.

Operational preconditions (as for ``pyspark.ml.model_cache``):

* ``spark.python.worker.reuse=true`` (Spark's default) or every task starts with an empty cache;
* Spark kills a Python worker idle for about a minute, and its cache with it;
* each concurrent task has its own worker, so an executor with N task slots holds up to N copies:
  budget ``spark.executor.memoryOverhead`` (or GPU memory) for that.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from udfs.backends import Backend, load_backend, resolve_device
from udfs.model_ref import ModelRef, hash_bytes, read_artifact

from batchscore.errors import ModelError


@dataclass
class CacheStats:
    loads: int = 0
    load_seconds: float = 0.0
    hits: int = 0


class ModelCache:
    def __init__(self, *, max_models: int = 4, max_bytes: int = 4 << 30) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, str, str], tuple[Backend, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> tuple[Backend, float | None]:
        """The loaded model for ``ref`` and, when this call loaded it, the seconds it took."""
        with self._lock:
            hit = self._entries.get(ref.cache_key)
            if hit is not None:
                self._entries.move_to_end(ref.cache_key)
                self.stats.hits += 1
                return hit[0], None
            start = time.perf_counter()
            data = read_artifact(ref.uri)
            if hash_bytes(data) != ref.sha256:
                raise ModelError(
                    f"{ref.uri}: artifact changed after the job started (content hash differs); rerun"
                )
            backend = load_backend(data, fmt=ref.format, uri=ref.uri, device=resolve_device(ref.device))
            seconds = time.perf_counter() - start
            self.stats.loads += 1
            self.stats.load_seconds += seconds
            self._entries[ref.cache_key] = (backend, len(data))
            self._evict()
            return backend, seconds

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self) -> None:
        total = sum(size for _, size in self._entries.values())
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_models or total > self.max_bytes
        ):
            _, (_, size) = self._entries.popitem(last=False)
            total -= size


#: The cache of this Python worker; bounds come from BATCHSCORE_CACHE_MAX_MODELS/_MAX_BYTES.
CACHE = ModelCache(
    max_models=int(os.environ.get("BATCHSCORE_CACHE_MAX_MODELS", "4")),
    max_bytes=int(os.environ.get("BATCHSCORE_CACHE_MAX_BYTES", str(4 << 30))),
)


class LoadStatsParam:
    """Spark ``AccumulatorParam`` adding ``[loads, load_seconds]`` pairs from the executors."""

    def zero(self, value: list[float]) -> list[float]:
        return [0, 0.0]

    def addInPlace(self, a: list[float], b: list[float]) -> list[float]:  # noqa: N802 (Spark API)
        return [a[0] + b[0], a[1] + b[1]]
