"""Online lookup of published scores: the light readers (need only ``redis``), sync and asyncio.

A reader resolves the model's current version from its pointer key ``{ns}:current``, which holds
the version's identity ``"{N}.{epoch}"`` (:mod:`batchscore.redis_layout`), then reads the
entities' bucket hashes of that identity. Versions are immutable once published, so a lookup never
mixes two batches. The pointer is cached for ``pointer_ttl`` seconds. With ``subscribe=True`` a
background listener also drops the cached pointer as soon as a flip is announced on
``{ns}:changed``: the message only invalidates, the next lookup re-reads the pointer from the
reader's own database, so a message (from another database of the same server, a stale publisher
or anyone else) never chooses the version. The listener survives malformed messages and Redis
outages: it reconnects with exponential back-off (capped at 2 s), subscribes again and then drops
every cached pointer, since it may have missed flips meanwhile; while it is cut off, a cached
pointer is trusted at most 1 s (``CUT_OFF_TTL``) whatever ``pointer_ttl`` says.

Per-version metadata (buckets, columns, model_version) is cached (the last 256 versions) under the version's
whole identity, never its number alone: a number repeats after a FLUSHALL or a restart without
persistence, an identity does not. Metadata whose ``epoch`` disagrees with the pointer is treated
as missing. Once both are cached a lookup is one round trip: one ``HGET``, or for a batch one
pipeline of ``HMGET`` per bucket. A replaced version stays readable for the publisher's GC grace
period, which must exceed ``pointer_ttl`` plus the longest request.

Readers use the online connection profile (:mod:`batchscore.redis_conn`): ``timeout=0.25`` s to
connect and per reply and ``retries=1``, so a lookup against a Redis that is down fails fast with
a ``redis.ConnectionError``/``redis.TimeoutError`` instead of stalling the request. A pointer that
is not a version identity (a bare number from the old layout, or garbage) raises
:class:`PointerError` (a ``LookupError`` and a ``ValueError``); missing metadata raises
``LookupError`` (retry the lookup).

**Age.** Every :class:`Score` carries ``published_at`` (the flip that made its version the served
one) and ``scored_at`` (when the scoring run computed it), both from the version's metadata,
cached with it (the metadata of a version is re-read whenever the pointer moves to it, since a
rollback publishes a kept version again). ``max_age`` (seconds) judges ``now - scored_at``: the
age of the scores themselves, which a rollback or a reload from Delta does not make younger
(``published_at`` when the publisher recorded no ``scored_at``; a version with neither is treated
as too old). Past it a lookup returns its scores with ``stale=True`` (``on_stale="mark"``) or
raises :class:`StaleScoreError` (``"raise"``). A publisher with ``outputs.redis.ttl_seconds``
makes Redis forget a publication that long after its flip unless another one follows: lookups
then answer "nothing published" (None), as for a model never published.

>>> reader = ScoreReader("redis://:secret@127.0.0.1:6379/0")  # doctest: +SKIP
>>> reader.get("demo", "42")                                  # doctest: +SKIP
Score(values={'score': 0.73}, model_version='demo-1', version=3, version_id='3.9f3a01bc')
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from batchscore import redis_layout as layout
from batchscore import splits

log = logging.getLogger(__name__)

#: Listener reconnect back-off: first delay and cap, seconds.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
#: Seconds the listener waits for a message per poll (also how fast it notices ``close``).
POLL_SECONDS = 0.5
#: Idle seconds before the listener PINGs its connection; no reply within as long again and it
#: reconnects (a server that hangs without closing the socket).
KEEPALIVE_SECONDS = 5.0
#: While a subscribing reader's listener is cut off (it cannot hear announcements), a cached
#: pointer is trusted at most this long, whatever ``pointer_ttl`` says.
CUT_OFF_TTL = 1.0
#: Seconds a constructor (or ``start``) waits for the first subscription before returning.
SUBSCRIBE_WAIT_SECONDS = 1.0
#: Version metadata entries kept (oldest dropped first).
META_CACHE_SIZE = 256


class PointerError(LookupError, ValueError):
    """The pointer key holds something that is not a version identity ``"{N}.{epoch}"``."""


class StaleScoreError(LookupError):
    """The served version of ``model`` is older than the reader's ``max_age`` (``on_stale="raise"``)."""

    def __init__(self, model: str, version_id: str, age: float | None, max_age: float) -> None:
        self.model, self.version_id, self.age, self.max_age = model, version_id, age, max_age
        how_old = "of unknown age (no scored_at or published_at)" if age is None else f"scored {age:,.0f} s ago"
        super().__init__(f"model '{model}': the served version {version_id} is {how_old}, older than max_age "
                         f"{max_age:g} s; its pipeline has not published since: check it, or raise max_age")


@dataclass(frozen=True)
class Score:
    """One entity's published scores and where they came from: ``version`` is the version's
    number, ``version_id`` its identity ``"{N}.{epoch}"``; ``published_at`` the flip that made it
    the served version and ``scored_at`` when its run scored it (UTC; None when the publisher did
    not record it); ``stale`` is True when it is older than the reader's ``max_age``."""

    values: dict[str, float]
    model_version: str
    version: int
    version_id: str = ""
    published_at: datetime | None = None
    scored_at: datetime | None = None
    stale: bool = False
    arm: str = "champion"  # with a split (batchscore.splits): the arm that served this score

    @property
    def value(self) -> float:
        """The score, for a single-output model."""
        if len(self.values) != 1:
            raise ValueError(f"model has {len(self.values)} outputs; use .values")
        return next(iter(self.values.values()))


class _Pointer(NamedTuple):
    vid: str
    number: int


@dataclass(frozen=True)
class _VersionMeta:
    buckets: int
    columns: tuple[str, ...]
    model_version: str
    published_at: datetime | None = None
    scored_at: datetime | None = None


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _when(raw: str | None) -> datetime | None:
    """A meta timestamp (seconds since the epoch) as a UTC datetime; None when absent or unreadable."""
    try:
        return datetime.fromtimestamp(float(raw), UTC) if raw else None
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class _AgeLimit:
    """A reader's ``max_age`` / ``on_stale``: judges a version once per lookup (no I/O)."""

    max_age: float | None = None
    on_stale: str = "mark"

    @classmethod
    def of(cls, max_age: float | None, on_stale: str) -> _AgeLimit:
        if max_age is not None and not max_age > 0:
            raise ValueError(f"max_age must be a number of seconds above 0 (or None for no limit), got {max_age!r}")
        if on_stale not in ("mark", "raise"):
            raise ValueError(f"on_stale must be 'mark' or 'raise', got {on_stale!r}")
        return cls(max_age, on_stale)

    def stale(self, model: str, pointer: _Pointer, meta: _VersionMeta) -> bool:
        """Whether ``meta``'s scores are older than ``max_age`` (raises in ``raise`` mode)."""
        if self.max_age is None:
            return False
        born = meta.scored_at or meta.published_at
        age = None if born is None else time.time() - born.timestamp()
        if age is not None and age <= self.max_age:
            return False
        if self.on_stale == "raise":
            raise StaleScoreError(model, pointer.vid, age, self.max_age)
        return True


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Cache:
    """The pointer and metadata caches and the key planning shared by both readers (no I/O).

    Thread-safe: the sync reader's listener thread invalidates while request threads look up.
    Every invalidation bumps a generation; a pointer read that started before one is returned but
    not cached, so a reply in flight across a flip cannot pin the old version for ``pointer_ttl``.
    """

    def __init__(self, prefix: str, pointer_ttl: float) -> None:
        self.prefix = prefix
        self.ttl = pointer_ttl
        self.pointers: dict[str, tuple[float, _Pointer | None]] = {}
        self.splits: dict[str, tuple[float, splits.Split | None]] = {}  # champion ns -> its split record
        self.metas: dict[tuple[str, str], _VersionMeta] = {}
        self.last_vid: dict[str, str] = {}  # the identity each namespace's pointer named last
        self.generation = 0
        #: None: no listener (``pointer_ttl`` alone); True: subscribed; False: listener cut off.
        self.listening: bool | None = None
        self._lock = threading.Lock()

    def ns(self, model: str) -> str:
        return layout.namespace(self.prefix, model)

    def fresh(self, ns: str) -> tuple[bool, _Pointer | None]:
        cached = self.pointers.get(ns)
        ttl = self.ttl if self.listening is not False else min(self.ttl, CUT_OFF_TTL)
        if cached and time.monotonic() - cached[0] < ttl:
            return True, cached[1]
        return False, None

    def fresh_split(self, ns: str) -> tuple[bool, splits.Split | None]:
        """The cached split record of a champion namespace, trusted as long as a pointer."""
        cached = self.splits.get(ns)
        ttl = self.ttl if self.listening is not False else min(self.ttl, CUT_OFF_TTL)
        if cached and time.monotonic() - cached[0] < ttl:
            return True, cached[1]
        return False, None

    def remember_split(self, ns: str, raw: Any, generation: int) -> splits.Split | None:
        try:
            split = splits.parse(raw)
        except ValueError as exc:
            raise PointerError(f"{splits.split_key(ns)}: {exc}; set it again with `batchscore split`") from None
        with self._lock:
            if generation == self.generation:
                self.splits[ns] = (time.monotonic(), split)
        return split

    @staticmethod
    def arms(model: str, split: splits.Split | None, keys: list[str]) -> dict[str, list[str]]:
        """Arm -> its keys (every key to the champion without a split), in first-seen order."""
        if split is None:
            return {splits.CHAMPION: keys}
        out: dict[str, list[str]] = {}
        for k in keys:
            out.setdefault(splits.assign(split, k), []).append(k)
        return out

    @staticmethod
    def parse_pointer(ns: str, raw: Any) -> _Pointer | None:
        if raw is None:
            return None
        try:
            number, epoch = layout.parse_version_id(raw)
        except (ValueError, UnicodeDecodeError):
            text = _text(raw).strip()
            where = layout.pointer_key(ns)
            if text.isdigit():
                raise PointerError(
                    f"{where} holds {text!r}, a bare version number from the old key layout; this reader "
                    f"reads only \"N.epoch\" identities: republish the model with a current batchscore") from None
            raise PointerError(f"{where} does not hold a version identity \"N.epoch\" "
                               f"(got {text[:40]!r}); republish or roll back the model") from None
        return _Pointer(layout.version_id(number, epoch), number)

    def remember(self, ns: str, raw: Any, generation: int) -> _Pointer | None:
        pointer = self.parse_pointer(ns, raw)
        with self._lock:
            if generation == self.generation:
                self.pointers[ns] = (time.monotonic(), pointer)
            if pointer is not None and self.last_vid.get(ns) != pointer.vid:
                # the pointer moved to this version (again?): its published_at may be new (a rollback)
                self.last_vid[ns] = pointer.vid
                self.metas.pop((ns, pointer.vid), None)
        return pointer

    def invalidate(self, ns: str | None = None) -> None:
        with self._lock:
            self.generation += 1
            if ns is None:
                self.pointers.clear()
                self.splits.clear()
            else:
                self.pointers.pop(ns, None)
                self.splits.pop(ns, None)

    def on_message(self, message: dict[str, Any]) -> None:
        """A flip announcement on ``{ns}:changed``: drop that pointer. The payload is ignored."""
        channel = message.get("channel")
        if not isinstance(channel, (bytes, str)):
            return
        name = _text(channel)
        if name.startswith("{") and name.endswith("}:changed"):
            self.invalidate(name[1 : -len("}:changed")])

    def meta(self, ns: str, pointer: _Pointer) -> _VersionMeta | None:
        return self.metas.get((ns, pointer.vid))

    def parse_meta(self, ns: str, pointer: _Pointer, raw: dict[Any, Any]) -> _VersionMeta:
        m = {_text(k): _text(v) for k, v in (raw or {}).items()}
        epoch = pointer.vid.partition(".")[2]
        problem = None
        if not m:
            problem = "has no metadata (collected?)"
        elif m.get("epoch") != epoch or ("number" in m and m["number"] != str(pointer.number)):
            problem = (f"has metadata of another life of number {pointer.number} "
                       f"(epoch {m.get('epoch', '')[:16]!r})")
        else:
            try:
                meta = _VersionMeta(int(m["buckets"]), tuple(m["columns"].split(",")), m["model_version"],
                                    _when(m.get("published_at")), _when(m.get("scored_at")))
                if meta.buckets < 1 or not all(meta.columns):
                    raise ValueError("empty")
            except (KeyError, ValueError):
                problem = "has malformed metadata"
        if problem is not None:
            self.invalidate(ns)
            raise LookupError(f"{ns}: version {pointer.vid} {problem}; retry the lookup")
        with self._lock:
            self.metas[(ns, pointer.vid)] = meta
            while len(self.metas) > META_CACHE_SIZE:
                self.metas.pop(next(iter(self.metas)))
        return meta

    @staticmethod
    def plan(ns: str, pointer: _Pointer, meta: _VersionMeta, keys: list[str]) -> dict[str, list[str]]:
        """Data key -> the wanted entity keys in that bucket."""
        by_bucket: dict[str, list[str]] = {}
        for k in keys:
            by_bucket.setdefault(layout.data_key(ns, pointer.vid, layout.bucket_of(k, meta.buckets)), []).append(k)
        return by_bucket

    @staticmethod
    def score(meta: _VersionMeta, pointer: _Pointer, raw: bytes | None, stale: bool = False,
              arm: str = splits.CHAMPION) -> Score | None:
        if raw is None:
            return None
        values = layout.decode_scores(raw, len(meta.columns))
        return Score(dict(zip(meta.columns, values, strict=True)), meta.model_version, pointer.number, pointer.vid,
                     meta.published_at, meta.scored_at, stale, arm)

    @staticmethod
    def scores(meta: _VersionMeta, pointer: _Pointer, plan: dict[str, list[str]], replies: list[Any],
               wanted: list[str], stale: bool = False, arm: str = splits.CHAMPION) -> dict[str, Score | None]:
        """The pipelined ``HMGET`` replies of ``plan`` as scores, in ``wanted``'s order."""
        out: dict[str, Score | None] = {}
        for ks, raws in zip(plan.values(), replies, strict=True):
            out.update({k: _Cache.score(meta, pointer, raw, stale, arm) for k, raw in zip(ks, raws, strict=True)})
        return {k: out[k] for k in wanted}

    def pattern(self) -> str:
        return "{" + _glob_escape(self.prefix) + ":*}:changed"


@dataclass(frozen=True)
class _Arm:
    """One arm of a lookup: what it reads (its namespace's served version) and which keys."""

    name: str
    ns: str
    pointer: _Pointer | None
    meta: _VersionMeta | None
    keys: list[str]
    stale: bool = False

    def plan(self) -> dict[str, list[str]]:
        assert self.pointer is not None and self.meta is not None
        return _Cache.plan(self.ns, self.pointer, self.meta, self.keys)


def _arm_model(model: str, arm: str) -> str:
    return model if arm == splits.CHAMPION else f"{model}@{arm}"


def _collect(arms: list[_Arm], plans: list[dict[str, list[str]]], replies: list[Any],
             wanted: list[str]) -> dict[str, Score | None]:
    """Every arm's share of one pipeline's replies as scores, in ``wanted``'s order."""
    out: dict[str, Score | None] = dict.fromkeys(wanted)
    at = 0
    for arm, plan in zip(arms, plans, strict=True):
        if arm.pointer is None or arm.meta is None:
            continue
        mine = replies[at:at + len(plan)]
        at += len(plan)
        out.update(_Cache.scores(arm.meta, arm.pointer, plan, mine, arm.keys, arm.stale, arm.name))
    return {k: out[k] for k in wanted}


class _Subscription:
    """What one listener connection saw; shared by the sync and asyncio loops (no I/O)."""

    def __init__(self, cache: _Cache) -> None:
        self.cache = cache
        self.last = time.monotonic()
        self.pinged = False

    def handle(self, message: dict[str, Any] | None) -> bool:
        """Process one message; True when it confirmed the subscription."""
        now = time.monotonic()
        if message is None:
            return False
        self.last, self.pinged = now, False
        kind = _text(message.get("type", ""))
        if kind == "pmessage":
            try:
                self.cache.on_message(message)
            except Exception:  # noqa: BLE001 - a malformed message must not end the listener
                log.debug("ignored a malformed flip announcement", exc_info=True)
            return False
        if kind == "psubscribe":
            # (Re)subscribed, possibly after redis-py reconnected on its own: flips may have been
            # missed meanwhile, so forget every pointer.
            self.cache.invalidate()
            self.cache.listening = True
            return True
        return False

    def keepalive(self) -> str | None:
        """``"ping"`` when the connection has been idle long enough, ``"dead"`` when a PING went
        unanswered, else None."""
        idle = time.monotonic() - self.last
        if self.pinged and idle > 2 * KEEPALIVE_SECONDS:
            return "dead"
        if not self.pinged and idle > KEEPALIVE_SECONDS:
            self.pinged = True
            return "ping"
        return None


def _log_loss(exc: BaseException, delay: float, *, was_subscribed: bool) -> None:
    """A warning when a working subscription breaks, debug for each failed reconnect after it."""
    (log.warning if was_subscribed else log.debug)(
        "batchscore reader: flip listener lost its subscription (%s); reconnecting in %.2f s "
        "(cached pointers trusted at most %.0f s meanwhile)", type(exc).__name__, delay, CUT_OFF_TTL)


class _Listener:
    """The sync reader's daemon thread (instead of redis-py's ``run_in_thread``, which dies on the
    first error): subscribe, invalidate on every announcement, and on any error close the
    connection, forget every pointer, back off (doubling, capped) and reconnect."""

    def __init__(self, open_pubsub: Callable[[], Any], cache: _Cache) -> None:
        self._open = open_pubsub
        self._cache = cache
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self.thread = threading.Thread(target=self._run, name="batchscore-reader-listener", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        delay = BACKOFF_BASE
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._open()
                pubsub.psubscribe(self._cache.pattern())
                self.connects += 1
                sub = _Subscription(self._cache)
                while not self._stop.is_set():
                    if sub.handle(pubsub.get_message(timeout=POLL_SECONDS)):
                        self.subscribed.set()
                        delay = BACKOFF_BASE
                    state = sub.keepalive()
                    if state == "ping":
                        pubsub.ping()
                    elif state == "dead":
                        raise TimeoutError("no reply to PING on the subscription")
            except Exception as exc:  # noqa: BLE001 - whatever broke, the loop reconnects
                _log_loss(exc, delay, was_subscribed=self.subscribed.is_set())
            finally:
                self.subscribed.clear()
                self._cache.listening = False
                self._cache.invalidate()
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_CAP)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.subscribed.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.thread.join(timeout)


def _online(url: str, cluster: bool, timeout: float, retries: int, *, asyncio: bool) -> Any:
    from batchscore.redis_conn import async_client_for, client_for

    make = async_client_for if asyncio else client_for
    return make(str(url), cluster=cluster, retries=retries, timeout=timeout)


class ScoreReader:
    """Reads the current published scores of models from Redis (standalone or Cluster).

    Args:
        url: a ``redis://`` or ``rediss://`` URL (a password in it is never printed).
        prefix: the ``outputs.redis.key_prefix`` of the models' configs.
        pointer_ttl: seconds a resolved current version is reused before re-reading the pointer.
        cluster: the URL is a Redis Cluster node (uses ``redis.cluster.RedisCluster``).
        subscribe: listen for flip announcements (a background thread) to drop pointers at once;
            the constructor waits up to 1 s for the first subscription (not failing without it).
        client: an existing redis-py client to use instead of ``url`` (its own timeouts apply).
        timeout: seconds to connect and to wait for each reply (online default 0.25).
        retries: retries of a command after a connection error or timeout (online default 1).
        max_age: seconds; a lookup whose version was scored longer ago (``now - scored_at``) is
            stale (None: no limit). The reader's clock against the publisher's: skew counts.
        on_stale: ``"mark"``: stale scores come back with ``stale=True``; ``"raise"``: the lookup
            raises :class:`StaleScoreError` (a ``LookupError``) naming the model, version and age.
    """

    def __init__(self, url: str | None = None, *, prefix: str = "bs", pointer_ttl: float = 1.0,
                 cluster: bool = False, subscribe: bool = False, client: Any = None,
                 timeout: float = 0.25, retries: int = 1, max_age: float | None = None,
                 on_stale: Literal["mark", "raise"] = "mark") -> None:
        if client is None and not url:
            raise ValueError("ScoreReader needs a Redis URL or a client")
        self._age = _AgeLimit.of(max_age, on_stale)
        if client is None:
            client = _online(str(url), cluster, timeout, retries, asyncio=False)
        self._r = client
        self._c = _Cache(prefix, pointer_ttl)
        self._listener: _Listener | None = None
        self._node = 0
        if subscribe:
            self._c.listening = False
            self._listener = _Listener(self._pubsub, self._c)
            self._listener.subscribed.wait(SUBSCRIBE_WAIT_SECONDS)

    def _pubsub(self) -> Any:
        """A pub/sub on a plain connection: the client's own, or (Cluster) one node's, taking the
        next node at each reconnect (a PUBLISH reaches every node of a Cluster)."""
        from redis.cluster import RedisCluster

        if isinstance(self._r, RedisCluster):
            nodes = self._r.get_nodes()
            if not nodes:
                raise ConnectionError("the Redis Cluster has no known nodes")
            node = nodes[self._node % len(nodes)]
            self._node += 1
            return self._r.get_redis_connection(node).pubsub()
        return self._r.pubsub()

    @property
    def listener_alive(self) -> bool:
        """True while the flip listener runs and holds a confirmed subscription (False without
        ``subscribe``, and while it reconnects after an outage)."""
        return self._listener is not None and self._listener.alive

    def current_version(self, model: str) -> int | None:
        """The published version number of ``model``, or None when nothing is published yet."""
        pointer = self._pointer(model)
        return pointer.number if pointer else None

    def current_version_id(self, model: str) -> str | None:
        """The published version identity ``"N.epoch"`` of ``model``, or None."""
        pointer = self._pointer(model)
        return pointer.vid if pointer else None

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached pointers (all, or one model's) so the next lookup re-reads them."""
        self._c.invalidate(None if model is None else self._c.ns(model))

    def get(self, model: str, key: Any) -> Score | None:
        """The current score of one entity (one ``HGET`` once cached), or None when it is not
        published (or its publication expired). With a split (``batchscore split``) the key's arm
        serves it (:attr:`Score.arm`). Raises :class:`StaleScoreError` past ``max_age`` with
        ``on_stale="raise"``."""
        k = str(key)
        split = self._split(model)
        arm = splits.CHAMPION if split is None else splits.assign(split, k)
        ns, pointer, meta = self._resolve(_arm_model(model, arm))
        if pointer is None or meta is None:
            return None
        stale = self._age.stale(model, pointer, meta)
        raw = self._r.hget(layout.data_key(ns, pointer.vid, layout.bucket_of(k, meta.buckets)), k)
        return _Cache.score(meta, pointer, raw, stale, arm)

    def get_many(self, model: str, keys: Iterable[Any]) -> dict[str, Score | None]:
        """Current scores of many entities in one pipelined round trip (keys returned as str),
        every arm of a split in the same pipeline; each arm reads one version."""
        wanted = [str(k) for k in keys]
        arms = []
        for name, ks in _Cache.arms(model, self._split(model), wanted).items():
            ns, pointer, meta = self._resolve(_arm_model(model, name))
            stale = self._age.stale(model, pointer, meta) if pointer is not None and meta is not None else False
            arms.append(_Arm(name, ns, pointer, meta, ks, stale))
        plans = [a.plan() if a.pointer is not None and a.meta is not None else {} for a in arms]
        if not any(plans):
            return dict.fromkeys(wanted)
        pipe = self._r.pipeline(transaction=False)
        for plan in plans:
            for data_key, ks in plan.items():
                pipe.hmget(data_key, ks)
        return _collect(arms, plans, pipe.execute(), wanted)

    def split(self, model: str) -> splits.Split | None:
        """The model's traffic split as this reader sees it (cached like a pointer), or None."""
        return self._split(model)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()  # it closes its own connection when it exits
        self._r.close()

    def __enter__(self) -> ScoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pointer(self, model: str) -> _Pointer | None:
        ns = self._c.ns(model)
        ok, pointer = self._c.fresh(ns)
        if ok:
            return pointer
        generation = self._c.generation
        return self._c.remember(ns, self._r.get(layout.pointer_key(ns)), generation)

    def _split(self, model: str) -> splits.Split | None:
        """The split record, re-read together with the champion's pointer (one ``MGET``: the
        same hash tag) when both are stale, as after a flip announcement."""
        ns = self._c.ns(model)
        ok, split = self._c.fresh_split(ns)
        if ok:
            return split
        generation = self._c.generation
        if self._c.fresh(ns)[0]:
            return self._c.remember_split(ns, self._r.get(splits.split_key(ns)), generation)
        raw_split, raw_pointer = self._r.mget([splits.split_key(ns), layout.pointer_key(ns)])
        self._c.remember(ns, raw_pointer, generation)
        return self._c.remember_split(ns, raw_split, generation)

    def _resolve(self, model: str) -> tuple[str, _Pointer | None, _VersionMeta | None]:
        ns = self._c.ns(model)
        pointer = self._pointer(model)
        if pointer is None:
            return ns, None, None
        meta = self._c.meta(ns, pointer)
        if meta is None:
            meta = self._c.parse_meta(ns, pointer, self._r.hgetall(layout.meta_key(ns, pointer.vid)))
        return ns, pointer, meta


class AsyncScoreReader:
    """The asyncio twin of :class:`ScoreReader` (``redis.asyncio``); same arguments.

    With ``subscribe=True`` call ``await reader.start()`` (or use ``async with``) to begin
    listening for flips (a task). On a Cluster the listener subscribes through a plain
    connection to one node (a PUBLISH reaches every node), the next node at each reconnect.
    """

    def __init__(self, url: str | None = None, *, prefix: str = "bs", pointer_ttl: float = 1.0,
                 cluster: bool = False, subscribe: bool = False, client: Any = None,
                 timeout: float = 0.25, retries: int = 1, max_age: float | None = None,
                 on_stale: Literal["mark", "raise"] = "mark") -> None:
        if client is None and not url:
            raise ValueError("AsyncScoreReader needs a Redis URL or a client")
        self._age = _AgeLimit.of(max_age, on_stale)
        if client is None:
            client = _online(str(url), cluster, timeout, retries, asyncio=True)
        self._r = client
        self._c = _Cache(prefix, pointer_ttl)
        self._subscribe = subscribe
        self._task: Any = None
        self._subscribed: Any = None  # an asyncio.Event, made in start() (inside the loop)
        self._node = 0
        self.connects = 0

    async def start(self) -> AsyncScoreReader:
        if self._subscribe and self._task is None:
            import asyncio

            self._subscribed = asyncio.Event()
            self._c.listening = False
            self._task = asyncio.create_task(self._listen(), name="batchscore-reader-listener")
            try:
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)
            except TimeoutError:
                pass  # Redis is down or slow: the listener keeps trying in the background
        return self

    @property
    def listener_alive(self) -> bool:
        """True while the flip listener task runs and holds a confirmed subscription."""
        return (self._task is not None and not self._task.done() and self._subscribed is not None
                and self._subscribed.is_set())

    async def _open_pubsub(self) -> tuple[Any, Any]:
        """``(pubsub, its own client to close or None)``."""
        from redis.asyncio.cluster import RedisCluster

        if not isinstance(self._r, RedisCluster):
            return self._r.pubsub(), None
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        await self._r.initialize()
        nodes = self._r.get_nodes()
        if not nodes:
            raise ConnectionError("the Redis Cluster has no known nodes")
        node = nodes[self._node % len(nodes)]
        self._node += 1
        # redis.asyncio's RedisCluster has no usable pub/sub: a plain client on the node's own
        # connection settings (address, credentials, TLS, timeouts); the loop does the retrying.
        kwargs = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        pool = redis.asyncio.ConnectionPool(connection_class=node.connection_class, max_connections=2, **kwargs)
        owner = redis.asyncio.Redis(connection_pool=pool)
        return owner.pubsub(), owner

    async def _listen(self) -> None:
        import asyncio

        delay = BACKOFF_BASE
        while True:
            pubsub = owner = None
            try:
                pubsub, owner = await self._open_pubsub()
                await pubsub.psubscribe(self._c.pattern())
                self.connects += 1
                sub = _Subscription(self._c)
                while True:
                    if sub.handle(await pubsub.get_message(timeout=POLL_SECONDS)):
                        self._subscribed.set()
                        delay = BACKOFF_BASE
                    state = sub.keepalive()
                    if state == "ping":
                        await pubsub.ping()
                    elif state == "dead":
                        raise TimeoutError("no reply to PING on the subscription")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke, the loop reconnects
                _log_loss(exc, delay, was_subscribed=self._subscribed.is_set())
            finally:
                self._subscribed.clear()
                self._c.listening = False
                self._c.invalidate()
                for closing in (pubsub, owner):
                    if closing is not None:
                        try:
                            await closing.aclose()
                        except Exception:  # noqa: BLE001
                            pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)

    async def current_version(self, model: str) -> int | None:
        """The published version number of ``model``, or None when nothing is published yet."""
        pointer = await self._pointer(model)
        return pointer.number if pointer else None

    async def current_version_id(self, model: str) -> str | None:
        """The published version identity ``"N.epoch"`` of ``model``, or None."""
        pointer = await self._pointer(model)
        return pointer.vid if pointer else None

    def invalidate(self, model: str | None = None) -> None:
        self._c.invalidate(None if model is None else self._c.ns(model))

    async def get(self, model: str, key: Any) -> Score | None:
        k = str(key)
        split = await self._split(model)
        arm = splits.CHAMPION if split is None else splits.assign(split, k)
        ns, pointer, meta = await self._resolve(_arm_model(model, arm))
        if pointer is None or meta is None:
            return None
        stale = self._age.stale(model, pointer, meta)
        raw = await self._r.hget(layout.data_key(ns, pointer.vid, layout.bucket_of(k, meta.buckets)), k)
        return _Cache.score(meta, pointer, raw, stale, arm)

    async def get_many(self, model: str, keys: Iterable[Any]) -> dict[str, Score | None]:
        wanted = [str(k) for k in keys]
        arms = []
        for name, ks in _Cache.arms(model, await self._split(model), wanted).items():
            ns, pointer, meta = await self._resolve(_arm_model(model, name))
            stale = self._age.stale(model, pointer, meta) if pointer is not None and meta is not None else False
            arms.append(_Arm(name, ns, pointer, meta, ks, stale))
        plans = [a.plan() if a.pointer is not None and a.meta is not None else {} for a in arms]
        if not any(plans):
            return dict.fromkeys(wanted)
        pipe = self._r.pipeline(transaction=False)
        for plan in plans:
            for data_key, ks in plan.items():
                pipe.hmget(data_key, ks)
        return _collect(arms, plans, await pipe.execute(), wanted)

    async def split(self, model: str) -> splits.Split | None:
        return await self._split(model)

    async def _split(self, model: str) -> splits.Split | None:
        ns = self._c.ns(model)
        ok, split = self._c.fresh_split(ns)
        if ok:
            return split
        generation = self._c.generation
        if self._c.fresh(ns)[0]:
            return self._c.remember_split(ns, await self._r.get(splits.split_key(ns)), generation)
        raw_split, raw_pointer = await self._r.mget([splits.split_key(ns), layout.pointer_key(ns)])
        self._c.remember(ns, raw_pointer, generation)
        return self._c.remember_split(ns, raw_split, generation)

    async def close(self) -> None:
        if self._task is not None:
            import asyncio

            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
        await self._r.aclose()

    async def __aenter__(self) -> AsyncScoreReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _pointer(self, model: str) -> _Pointer | None:
        ns = self._c.ns(model)
        ok, pointer = self._c.fresh(ns)
        if ok:
            return pointer
        generation = self._c.generation
        return self._c.remember(ns, await self._r.get(layout.pointer_key(ns)), generation)

    async def _resolve(self, model: str) -> tuple[str, _Pointer | None, _VersionMeta | None]:
        ns = self._c.ns(model)
        pointer = await self._pointer(model)
        if pointer is None:
            return ns, None, None
        meta = self._c.meta(ns, pointer)
        if meta is None:
            meta = self._c.parse_meta(ns, pointer, await self._r.hgetall(layout.meta_key(ns, pointer.vid)))
        return ns, pointer, meta
