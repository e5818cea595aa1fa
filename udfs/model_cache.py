"""A small, bounded, per-Python-worker cache of loaded models.

Keyed by :meth:`ModelRef.cache_key` (content hash, format, resolved device, precision), so every UDF object and every
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
from dataclasses import dataclass, field
from typing import Any

from batchscore.errors import ModelError
from batchscore.udfs.backends import Backend, load_backend, warm_up
from batchscore.udfs.device import resolve_device
from batchscore.udfs.model_ref import ModelRef, hash_bytes, read_artifact


@dataclass
class CacheStats:
    loads: int = 0
    load_seconds: float = 0.0
    hits: int = 0
    evictions: int = 0
    loaded: list[str] = field(default_factory=list)  # "<sha12>@<device>[/<precision>]" per load, in order


class ModelCache:
    """LRU of loaded backends, bounded by ``max_models`` and by total artifact ``max_bytes``
    (the most recent model always stays, even when it alone exceeds ``max_bytes``)."""

    def __init__(self, *, max_models: int = 4, max_bytes: int = 4 << 30) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, ...], tuple[Backend, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> tuple[Backend, float | None]:
        """The loaded model for ``ref`` on this task's device and, when this call loaded it, the
        seconds the load (read, hash check, session build, one warm-up batch) took."""
        device = resolve_device(ref.device, ref.format, uri=ref.uri, warn=False)  # the driver warns once per run
        key = ref.cache_key(device)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return hit[0], None
            start = time.perf_counter()
            data = read_artifact(ref.uri, ref.storage, sha256=ref.sha256)
            if hash_bytes(data) != ref.sha256:
                raise ModelError(
                    f"{ref.uri}: artifact changed after the job started (content hash differs); rerun"
                )
            backend = load_backend(data, fmt=ref.format, uri=ref.uri, device=device, precision=ref.precision)
            if ref.n_features:
                warm_up(backend, ref.n_features)
            seconds = time.perf_counter() - start
            self.stats.loads += 1
            self.stats.load_seconds += seconds
            self.stats.loaded.append(
                f"{ref.sha256[:12]}@{device}" + ("" if ref.precision == "fp32" else f"/{ref.precision}")
            )
            self._entries[key] = (backend, len(data))
            self._evict()
            return backend, seconds

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self) -> None:
        total = self.bytes
        while len(self._entries) > 1 and (len(self._entries) > self.max_models or total > self.max_bytes):
            _, (_, size) = self._entries.popitem(last=False)
            total -= size
            self.stats.evictions += 1


#: The cache of this Python worker; bounds come from BATCHSCORE_CACHE_MAX_MODELS/_MAX_BYTES
#: (set them for executors with ``spark.executorEnv.*``; local mode inherits the driver's env).
CACHE = ModelCache(
    max_models=int(os.environ.get("BATCHSCORE_CACHE_MAX_MODELS", "4")),
    max_bytes=int(os.environ.get("BATCHSCORE_CACHE_MAX_BYTES", str(4 << 30))),
)


def load_event(seconds: float, device: str = "cpu") -> list[Any]:
    """One load as an accumulator update: ``[1, seconds, ["<worker pid>"], ["<device>"]]``."""
    return [1, seconds, [str(os.getpid())], [device]]


def cpu_fallbacks(value: list[Any]) -> int:
    """How many of an accumulator's loads ran on CPU (for the driver's one warning per run when
    ``device: auto`` found no GPU on some executors)."""
    return sum(1 for d in (value[3] if len(value) > 3 else []) if d == "cpu")


class LoadStatsParam:
    """Spark ``AccumulatorParam`` summing ``[loads, load_seconds, worker pids]`` from executors."""

    def zero(self, value: list[Any]) -> list[Any]:
        return [0, 0.0, [], []]

    def addInPlace(self, a: list[Any], b: list[Any]) -> list[Any]:  # noqa: N802 (Spark API)
        pids = list(a[2] if len(a) > 2 else []) + list(b[2] if len(b) > 2 else [])
        devices = list(a[3] if len(a) > 3 else []) + list(b[3] if len(b) > 3 else [])
        return [a[0] + b[0], a[1] + b[1], pids, devices]


def load_accumulator(sc: Any) -> Any:
    """A fresh load counter for one job; ``.value`` is ``[loads, seconds, pids, devices]``."""
    return sc.accumulator([0, 0.0, [], []], LoadStatsParam())
