"""Online lookup of published scores: the light readers (need only ``redis``), sync and asyncio.

A reader resolves the model's current version from its pointer key, then reads the entities'
bucket hashes of that version. Versions are immutable once published, so a lookup never mixes two
batches. The pointer is cached for ``pointer_ttl`` seconds, and with ``subscribe=True`` a flip
announced on the ``{ns}:changed`` channel replaces it at once; per-version metadata is cached for
good (it never changes). Once both are cached a lookup is one round trip: one ``HGET``, or for a
batch one pipeline of ``HMGET`` per bucket. A replaced version stays readable for the publisher's
GC grace period, which must exceed ``pointer_ttl`` plus the longest request.

>>> reader = ScoreReader("redis://:secret@127.0.0.1:6379/0")  # doctest: +SKIP
>>> reader.get("demo", "42")                                  # doctest: +SKIP
Score(values={'score': 0.73}, model_version='demo-1', version=3)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


class _Cache:
    """The pointer and metadata caches and the key planning shared by both readers (no I/O)."""

    def __init__(self, prefix: str, pointer_ttl: float) -> None:
        self.prefix = prefix
        self.ttl = pointer_ttl
        self.pointers: dict[str, tuple[float, int | None]] = {}
        self.metas: dict[tuple[str, int], _VersionMeta] = {}

    def ns(self, model: str) -> str:
        return layout.namespace(self.prefix, model)

    def fresh(self, ns: str) -> tuple[bool, int | None]:
        cached = self.pointers.get(ns)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return True, cached[1]
        return False, None

    def remember(self, ns: str, raw: Any) -> int | None:
        version = int(raw) if raw is not None else None
        self.pointers[ns] = (time.monotonic(), version)
        return version

    def on_message(self, message: dict[str, Any]) -> None:
        """A flip announcement: ``{ns}:changed`` carries the new version number."""
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if channel.startswith("{") and channel.endswith("}:changed"):
            self.remember(channel[1 : -len("}:changed")], message["data"])

    def parse_meta(self, ns: str, version: int, raw: dict[Any, Any]) -> _VersionMeta:
        if not raw:
            self.pointers.pop(ns, None)
            raise LookupError(f"{ns}: version {version} has no metadata (collected?); retry the lookup")
        m = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        meta = _VersionMeta(int(m["buckets"]), tuple(m["columns"].split(",")), m["model_version"])
        self.metas[(ns, version)] = meta
        return meta

    @staticmethod
    def plan(ns: str, version: int, meta: _VersionMeta, keys: list[str]) -> dict[str, list[str]]:
        """Data key -> the wanted entity keys in that bucket."""
        by_bucket: dict[str, list[str]] = {}
        for k in keys:
            by_bucket.setdefault(layout.data_key(ns, version, layout.bucket_of(k, meta.buckets)), []).append(k)
        return by_bucket

    @staticmethod
    def score(meta: _VersionMeta, version: int, raw: bytes | None) -> Score | None:
        if raw is None:
            return None
        values = layout.decode_scores(raw, len(meta.columns))
        return Score(dict(zip(meta.columns, values, strict=True)), meta.model_version, version)

    @staticmethod
    def scores(meta: _VersionMeta, version: int, plan: dict[str, list[str]], replies: list[Any],
               wanted: list[str]) -> dict[str, Score | None]:
        """The pipelined ``HMGET`` replies of ``plan`` as scores, in ``wanted``'s order."""
        out: dict[str, Score | None] = {}
        for ks, raws in zip(plan.values(), replies, strict=True):
            out.update({k: _Cache.score(meta, version, raw) for k, raw in zip(ks, raws, strict=True)})
        return {k: out[k] for k in wanted}

    def pattern(self) -> str:
        return "{" + self.prefix + ":*}:changed"


class ScoreReader:
    """Reads the current published scores of models from Redis (standalone or Cluster).

    Args:
        url: a ``redis://`` or ``rediss://`` URL (a password in it is never printed).
        prefix: the ``outputs.redis.key_prefix`` of the models' configs.
        pointer_ttl: seconds a resolved current version is reused before re-reading the pointer.
        cluster: the URL is a Redis Cluster node (uses ``redis.cluster.RedisCluster``).
        subscribe: listen for flip announcements (a background thread) to refresh pointers at once.
        client: an existing redis-py client to use instead of ``url``.
    """

    def __init__(self, url: str | None = None, *, prefix: str = "bs", pointer_ttl: float = 1.0,
                 cluster: bool = False, subscribe: bool = False, client: Any = None) -> None:
        if client is None and not url:
            raise ValueError("ScoreReader needs a Redis URL or a client")
        if client is None:
            from batchscore.redis_conn import client_for

            client = client_for(str(url), cluster=cluster)
        self._r = client
        self._c = _Cache(prefix, pointer_ttl)
        self._listener: Any = None
        if subscribe:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            pubsub.psubscribe(**{self._c.pattern(): self._c.on_message})
            self._listener = pubsub.run_in_thread(sleep_time=0.2, daemon=True)

    def current_version(self, model: str) -> int | None:
        """The published version of ``model``, or None when nothing is published yet."""
        ns = self._c.ns(model)
        ok, version = self._c.fresh(ns)
        return version if ok else self._c.remember(ns, self._r.get(layout.pointer_key(ns)))

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached pointers (all, or one model's) so the next lookup re-reads them."""
        if model is None:
            self._c.pointers.clear()
        else:
            self._c.pointers.pop(self._c.ns(model), None)

    def get(self, model: str, key: Any) -> Score | None:
        """The current score of one entity (one ``HGET``), or None when it is not published."""
        ns, version, meta = self._resolve(model)
        if version is None or meta is None:
            return None
        k = str(key)
        return _Cache.score(meta, version, self._r.hget(layout.data_key(ns, version, layout.bucket_of(k, meta.buckets)), k))

    def get_many(self, model: str, keys: Iterable[Any]) -> dict[str, Score | None]:
        """Current scores of many entities in one pipelined round trip (keys returned as str)."""
        wanted = [str(k) for k in keys]
        ns, version, meta = self._resolve(model)
        if version is None or meta is None:
            return dict.fromkeys(wanted)
        plan = _Cache.plan(ns, version, meta, wanted)
        pipe = self._r.pipeline(transaction=False)
        for data_key, ks in plan.items():
            pipe.hmget(data_key, ks)
        return _Cache.scores(meta, version, plan, pipe.execute(), wanted)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener.join(timeout=2)  # it closes its own connection when it exits
        self._r.close()

    def _resolve(self, model: str) -> tuple[str, int | None, _VersionMeta | None]:
        ns = self._c.ns(model)
        version = self.current_version(model)
        if version is None:
            return ns, None, None
        meta = self._c.metas.get((ns, version))
        if meta is None:
            meta = self._c.parse_meta(ns, version, self._r.hgetall(layout.meta_key(ns, version)))
        return ns, version, meta


class AsyncScoreReader:
    """The asyncio twin of :class:`ScoreReader` (``redis.asyncio``); same arguments.

    With ``subscribe=True`` call ``await reader.start()`` (or use ``async with``) to begin
    listening for flips.
    """

    def __init__(self, url: str | None = None, *, prefix: str = "bs", pointer_ttl: float = 1.0,
                 cluster: bool = False, subscribe: bool = False, client: Any = None) -> None:
        if client is None and not url:
            raise ValueError("AsyncScoreReader needs a Redis URL or a client")
        if client is None:
            if cluster:
                from redis.asyncio.cluster import RedisCluster

                client = RedisCluster.from_url(str(url))
            else:
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(str(url))
        self._r = client
        self._c = _Cache(prefix, pointer_ttl)
        self._subscribe = subscribe
        self._task: Any = None

    async def start(self) -> AsyncScoreReader:
        if self._subscribe and self._task is None:
            import asyncio

            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            await pubsub.psubscribe(self._c.pattern())
            self._task = asyncio.create_task(self._listen(pubsub))
        return self

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message and message.get("type") == "pmessage":
                self._c.on_message(message)

    async def current_version(self, model: str) -> int | None:
        ns = self._c.ns(model)
        ok, version = self._c.fresh(ns)
        return version if ok else self._c.remember(ns, await self._r.get(layout.pointer_key(ns)))

    def invalidate(self, model: str | None = None) -> None:
        if model is None:
            self._c.pointers.clear()
        else:
            self._c.pointers.pop(self._c.ns(model), None)

    async def get(self, model: str, key: Any) -> Score | None:
        ns, version, meta = await self._resolve(model)
        if version is None or meta is None:
            return None
        k = str(key)
        raw = await self._r.hget(layout.data_key(ns, version, layout.bucket_of(k, meta.buckets)), k)
        return _Cache.score(meta, version, raw)

    async def get_many(self, model: str, keys: Iterable[Any]) -> dict[str, Score | None]:
        wanted = [str(k) for k in keys]
        ns, version, meta = await self._resolve(model)
        if version is None or meta is None:
            return dict.fromkeys(wanted)
        plan = _Cache.plan(ns, version, meta, wanted)
        pipe = self._r.pipeline(transaction=False)
        for data_key, ks in plan.items():
            pipe.hmget(data_key, ks)
        return _Cache.scores(meta, version, plan, await pipe.execute(), wanted)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._r.aclose()

    async def __aenter__(self) -> AsyncScoreReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _resolve(self, model: str) -> tuple[str, int | None, _VersionMeta | None]:
        ns = self._c.ns(model)
        version = await self.current_version(model)
        if version is None:
            return ns, None, None
        meta = self._c.metas.get((ns, version))
        if meta is None:
            meta = self._c.parse_meta(ns, version, await self._r.hgetall(layout.meta_key(ns, version)))
        return ns, version, meta
