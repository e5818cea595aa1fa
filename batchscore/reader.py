"""Online lookup of published scores: the light reader (needs only ``redis``).

A reader resolves the model's current version from its pointer key, then reads the entity's
bucket hash of that version. Versions are immutable once published, so a lookup never mixes two
batches. The pointer is cached for ``pointer_ttl`` seconds (one round trip per lookup while it is
fresh); per-version metadata is cached for good since it never changes.

>>> reader = ScoreReader("redis://127.0.0.1:6379/0")          # doctest: +SKIP
>>> reader.get("demo", "42")                                  # doctest: +SKIP
Score(values={'score': 0.73}, model_version='demo-1', version=3)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from batchscore import redis_layout as layout


@dataclass(frozen=True)
class Score:
    """One entity's published scores and where they came from."""

    values: dict[str, float]
    model_version: str
    version: int

    @property
    def value(self) -> float:
        """The score, for a single-output model."""
        if len(self.values) != 1:
            raise ValueError(f"model has {len(self.values)} outputs; use .values")
        return next(iter(self.values.values()))


@dataclass(frozen=True)
class _VersionMeta:
    buckets: int
    columns: tuple[str, ...]
    model_version: str


class ScoreReader:
    """Reads the current published scores of models from Redis.

    Args:
        url: a ``redis://`` or ``rediss://`` URL (password in the URL is never logged).
        prefix: the ``outputs.redis.key_prefix`` of the models' configs.
        pointer_ttl: seconds a resolved current version is reused before re-reading the pointer.
        client: an existing redis-py client to use instead of ``url``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "bs",
        pointer_ttl: float = 1.0,
        client: redis.Redis | None = None,
    ) -> None:
        if client is None and not url:
            raise ValueError("ScoreReader needs a Redis URL or a client")
        self._r = client if client is not None else redis.Redis.from_url(url)  # type: ignore[arg-type]
        self._prefix = prefix
        self._ttl = pointer_ttl
        self._pointers: dict[str, tuple[float, int | None]] = {}
        self._metas: dict[tuple[str, int], _VersionMeta] = {}

    def current_version(self, model: str) -> int | None:
        """The published version of ``model``, or None when nothing is published yet."""
        ns = layout.namespace(self._prefix, model)
        cached = self._pointers.get(ns)
        now = time.monotonic()
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        raw = self._r.get(layout.pointer_key(ns))
        version = int(raw) if raw is not None else None
        self._pointers[ns] = (now, version)
        return version

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached pointers (all, or one model's) so the next lookup re-reads them."""
        if model is None:
            self._pointers.clear()
        else:
            self._pointers.pop(layout.namespace(self._prefix, model), None)

    def get(self, model: str, key: Any) -> Score | None:
        """The current score of one entity, or None when it is not in the published version."""
        return self.get_many(model, [key])[str(key)]

    def get_many(self, model: str, keys: Iterable[Any]) -> dict[str, Score | None]:
        """Current scores of many entities in one pipelined round trip (keys returned as str)."""
        ns = layout.namespace(self._prefix, model)
        version = self.current_version(model)
        wanted = [str(k) for k in keys]
        if version is None:
            return dict.fromkeys(wanted)
        meta = self._meta(ns, version)
        pipe = self._r.pipeline(transaction=False)
        for k in wanted:
            pipe.hget(layout.data_key(ns, version, layout.bucket_of(k, meta.buckets)), k)
        out: dict[str, Score | None] = {}
        for k, raw in zip(wanted, pipe.execute(), strict=True):
            if raw is None:
                out[k] = None
                continue
            values = layout.decode_scores(raw, len(meta.columns))
            out[k] = Score(dict(zip(meta.columns, values, strict=True)), meta.model_version, version)
        return out

    def _meta(self, ns: str, version: int) -> _VersionMeta:
        meta = self._metas.get((ns, version))
        if meta is None:
            raw = self._r.hgetall(layout.meta_key(ns, version))
            if not raw:
                raise LookupError(f"{ns}: version {version} is current but has no metadata")
            m = {k.decode(): v.decode() for k, v in raw.items()}
            meta = _VersionMeta(int(m["buckets"]), tuple(m["columns"].split(",")), m["model_version"])
            self._metas[(ns, version)] = meta
        return meta
