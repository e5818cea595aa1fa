"""Pre-flight for a Redis load: will the new version fit next to the live ones, and is it safe?

Two calls, made before anything is written::

    est = redis_preflight.estimate(client, rows=n, avg_key_len=k, columns=c)
    redis_preflight.check(client, ns=ns, rows=n, est=est, fraction=0.9,
                          allow_evicting_policy=False, warn=log)

**The estimate** comes from the new version's own shape only (entities, key length, value width
``4 x columns``), never from what an earlier version measured: a live version with fewer columns,
shorter keys or another encoding says nothing about this one. It models how Redis really stores a
version's bucket hashes (:mod:`batchscore.redis_layout`):

* a bucket stays a **listpack** (one allocation: ``key value`` entries of ``header + bytes +
  backlen``) while it holds at most ``hash-max-listpack-entries`` fields and no field or value is
  longer than ``hash-max-listpack-value`` bytes (``hash-max-ziplist-*`` on Redis 6.2); both are
  read with ``CONFIG GET`` on every master (the smallest wins), falling back to Redis' defaults
  (512 entries, 64 bytes: checked on redis-server 7.0.15) where ``CONFIG`` is refused;
* otherwise it is a **hashtable**: per field a ``dictEntry`` plus two sds strings, plus the
  bucket's power-of-two slot table, which costs several times more per entity;
* every allocation is rounded up to its jemalloc size class;
* bucket sizes are not all ``rows / buckets``: ``crc32(key) % buckets`` spreads entities
  binomially (standard deviation ~ sqrt(mean), so with 128 per bucket the largest of a few hundred
  buckets holds ~mean + 3 sqrt(mean)), so the estimate sums both encodings over that distribution
  and a limit near the mean (some buckets listpack, some hashtable) is costed as such;
* plus each bucket's key (``dictEntry``, key string, ``robj``, its main-dict slot) and a safety
  factor (:data:`SAFETY`). Integer-looking keys, which Redis stores more compactly, are costed as
  strings (an over-estimate).

Measured against a real redis-server by ``tests/integration/publish/test_preflight_memory.py``:
the estimate stays above the ``used_memory`` growth of a load and within ~1.6x of it.

**The checks**, per master (a Cluster spreads a version's buckets over every primary's slots):

* ``maxmemory-policy allkeys-*`` refuses the publish (:class:`PublishRefusedError`): Redis would
  evict published scores (of this or any model) to make room; ``allow_evicting_policy`` turns the
  refusal into a warning. ``volatile-*`` and ``noeviction`` are fine: batchscore keys carry no TTL,
  so a volatile policy can never evict them (a full server answers OOM, as with noeviction);
* ``used + this master's share of the estimate > fraction x maxmemory`` refuses, naming used,
  limit and what to do, before anything is written;
* no ``maxmemory``: the fit cannot be checked (the server may be OOM-killed instead): a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from batchscore import redis_layout as layout
from batchscore.errors import PublishRefusedError
from batchscore.redis_conn import memory_of, primaries

#: Redis' compiled-in defaults (7.0.15: ``hash-max-listpack-entries 512``, ``-value 64``), used
#: where ``CONFIG GET`` is refused (some managed services rename or forbid it).
DEFAULT_LISTPACK_ENTRIES = 512
DEFAULT_LISTPACK_VALUE = 64
#: Multiplier over the modelled bytes: allocator fragmentation inside size classes, a main dict
#: caught mid-rehash, key lengths that vary around their mean.
SAFETY = 1.15
#: A data key's name is ``{ns}:v{N}.{epoch}:b{bucket}``; costed at this many bytes.
DATA_KEY_NAME_BYTES = 64
#: Standard deviations above the mean for the largest bucket (reported as ``max_bucket``) and for
#: the number of buckets a Cluster master receives.
SKEW_SIGMAS = 4.0

_PTR = 8
_DICT_ENTRY = 24  # key, value, next
_CLUSTER_DICT_ENTRY = 40  # Redis 7.0 Cluster: + prev/next slot-list pointers in the main dict
_ROBJ = 16
_DICT = 56  # struct dict (two tables' pointers, sizes, rehash state)
_LISTPACK_HEADER = 6 + 1  # total bytes + entry count, end byte (a 6.2 ziplist's is 10 + 1)


@dataclass(frozen=True)
class Estimate:
    """What a new version of ``rows`` entities will add to Redis' ``used_memory``."""

    rows: int
    bytes: int  #: total over all masters
    buckets: int
    key_len: float  #: mean key length (bytes) the estimate used
    longest_key: float  #: the longest key (max_key_len, else the mean)
    value_len: int  #: 4 x columns
    entries_limit: int  #: hash-max-listpack-entries in force (the smallest over the masters)
    value_limit: int  #: hash-max-listpack-value in force
    limits_read: bool  #: False: CONFIG GET was refused and Redis' defaults were assumed
    max_bucket: int  #: entities of the largest bucket to expect (mean + SKEW_SIGMAS sd)
    hashtable_share: float  #: share of the entities in hashtable-encoded buckets (0..1)

    @property
    def bytes_per_entity(self) -> float:
        return self.bytes / max(1, self.rows)

    @property
    def encoding(self) -> str:
        if self.hashtable_share >= 0.995:
            return "hashtable"
        return "listpack" if self.hashtable_share <= 0.005 else f"{self.hashtable_share:.0%} hashtable"

    def total(self, rows: int) -> int:
        """Bytes for ``rows`` entities (``self.bytes`` for the rows it was made for)."""
        return self.bytes if rows == self.rows else int(rows * self.bytes_per_entity)

    def describe(self) -> str:
        """``"30,000 entities x ~256 B, hashtable: 160-byte values > hash-max-listpack-value 64"``."""
        why = ""
        if self.hashtable_share > 0.005:
            if self.value_len > self.value_limit:
                why = f": {self.value_len}-byte values > hash-max-listpack-value {self.value_limit}"
            elif self.longest_key > self.value_limit:
                why = f": {self.longest_key:.0f}-byte keys > hash-max-listpack-value {self.value_limit}"
            else:
                why = f": buckets of up to ~{self.max_bucket} > hash-max-listpack-entries {self.entries_limit}"
        return f"{self.rows:,} entities x ~{self.bytes_per_entity:.0f} B, {self.encoding}{why}"


def estimate(client: Any, *, rows: int, avg_key_len: float, columns: int,
             max_key_len: float | None = None) -> Estimate:
    """The ``used_memory`` a version of ``rows`` entities with keys of ``avg_key_len`` UTF-8 bytes
    and ``columns`` float32 scores will take, under the hash encoding limits of ``client``'s
    masters (read with ``CONFIG GET``; Redis' defaults if refused).

    ``max_key_len`` (optional): the longest key, when known; a bucket holding a key longer than
    ``hash-max-listpack-value`` is a hashtable, and without it the average decides."""
    entries_limit, value_limit, read = listpack_limits(client)
    return model(rows=rows, avg_key_len=avg_key_len, columns=columns, max_key_len=max_key_len,
                 entries_limit=entries_limit, value_limit=value_limit, limits_read=read,
                 cluster=_is_cluster(client))


def model(*, rows: int, avg_key_len: float, columns: int, entries_limit: int, value_limit: int,
          max_key_len: float | None = None, limits_read: bool = True, cluster: bool = False) -> Estimate:
    """:func:`estimate` without a server: the limits are given."""
    rows = max(0, int(rows))
    key_len = max(1.0, float(avg_key_len))
    longest = max(key_len, float(max_key_len or 0))
    width = 4 * int(columns)
    buckets = layout.bucket_count(rows)
    mean = rows / buckets
    too_long = width > value_limit or longest > value_limit

    per_key = (_je(_CLUSTER_DICT_ENTRY if cluster else _DICT_ENTRY) + _je(_sds(DATA_KEY_NAME_BYTES)) + _je(_ROBJ)
               + 2 * _PTR * 1.5)  # its main-dict slot (table 1-2x the keys), 1.5x while rehashing
    lp_pair = _lp_entry(key_len) + _lp_entry(width)
    ht_pair = _je(_DICT_ENTRY) + _je(_sds(key_len)) + _je(_sds(width))

    def bucket_bytes(k: int) -> float:
        if k == 0:
            return 0.0
        if too_long or k > entries_limit:
            return _je(_DICT) + _je(_PTR * _pow2(k)) + k * ht_pair
        return float(_je(int(_LISTPACK_HEADER + k * lp_pair)))

    data = 0.0
    in_ht = 0.0
    for k, p in _bucket_sizes(rows, buckets):
        data += p * bucket_bytes(k)
        if too_long or k > entries_limit:
            in_ht += p * k
    total = buckets * (data + per_key) * SAFETY if rows else 0.0
    sd = math.sqrt(mean * (1 - 1 / buckets)) if buckets > 1 else 0.0
    return Estimate(rows=rows, bytes=int(math.ceil(total)), buckets=buckets, key_len=key_len, longest_key=longest,
                    value_len=width,
                    entries_limit=entries_limit, value_limit=value_limit, limits_read=limits_read,
                    max_bucket=min(rows, int(math.ceil(mean + SKEW_SIGMAS * sd))),
                    hashtable_share=min(1.0, buckets * in_ht / rows) if rows else 0.0)


def listpack_limits(client: Any) -> tuple[int, int, bool]:
    """``(entries, value bytes, read)``: the smallest ``hash-max-listpack-*`` (Redis 7) or
    ``hash-max-ziplist-*`` (6.2) over every master; Redis' defaults and ``read=False`` where
    ``CONFIG GET`` is refused or answers nothing usable."""
    entries: list[int] = []
    values: list[int] = []
    read = True
    for node in primaries(client):
        try:
            raw = node.config_get("hash-max-*")
        except redis.ResponseError:  # CONFIG renamed or forbidden (managed services): assume the defaults
            read = False
            continue
        conf = {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
                for k, v in dict(raw or {}).items()}
        e = conf.get("hash-max-listpack-entries", conf.get("hash-max-ziplist-entries"))
        v = conf.get("hash-max-listpack-value", conf.get("hash-max-ziplist-value"))
        try:
            entries.append(int(e))  # type: ignore[arg-type]
            values.append(int(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            read = False
    return (min(entries) if entries else DEFAULT_LISTPACK_ENTRIES,
            min(values) if values else DEFAULT_LISTPACK_VALUE, read and bool(entries))


def check(client: Any, *, ns: str, rows: int, est: Estimate, fraction: float,
          allow_evicting_policy: bool = False, warn: Callable[[str], None]) -> None:
    """Refuse (:class:`PublishRefusedError`, before anything is written) when a master evicts
    keys of every kind (``allkeys-*``, unless ``allow_evicting_policy``) or would go past
    ``fraction x maxmemory`` with its share of ``est``; ``warn`` the risks that do not refuse."""
    nodes = primaries(client)
    need = est.total(rows)
    if not est.limits_read:
        warn(f"could not read hash-max-listpack-entries/-value from Redis (CONFIG GET refused); the memory estimate "
             f"assumes Redis' defaults ({est.entries_limit} entries, {est.value_limit} bytes)")
    mems = [(node, memory_of(node)) for node in nodes]
    for node, mem in mems:
        policy = mem["policy"]
        if policy.startswith("allkeys-"):
            text = (f"{ns}: Redis {_where(node)} has maxmemory-policy {policy}: to make room it may evict published "
                    "scores (and the versions' metadata)")
            if not allow_evicting_policy:
                raise PublishRefusedError(
                    f"{text}; run `CONFIG SET maxmemory-policy noeviction` there (and in its config file), or set "
                    "outputs.redis.allow_evicting_policy: true to accept that Redis may evict published scores; "
                    "nothing was written")
            warn(f"{text}; publishing anyway (outputs.redis.allow_evicting_policy: true)")
        elif policy not in ("noeviction",) and not policy.startswith("volatile-"):
            warn(f"{ns}: Redis {_where(node)} has maxmemory-policy {policy}, which batchscore does not know; "
                 "noeviction is the safe setting")
    slots = _slot_shares(client, nodes)
    for node, mem in mems:
        share = _share(need, est.buckets, slots.get(_where(node), 1 / len(nodes)))
        where = _where(node)
        if mem["max"] == 0:
            warn(f"{ns}: Redis {where} has no maxmemory: cannot check that the new version (~{_mb(share)}"
                 f"{' of its ' + _mb(need) if len(nodes) > 1 else ''}) fits; set maxmemory (and maxmemory-policy "
                 "noeviction) to have publish refuse a version that would not")
            continue
        limit = int(mem["max"] * fraction)
        if mem["used"] + share > limit:
            raise PublishRefusedError(
                f"{ns}: the new version needs ~{_mb(share)} on Redis {where}"
                f"{f' (its share of {_mb(need)})' if len(nodes) > 1 else ''} ({est.describe()}) but "
                f"{_mb(mem['used'])} is used and the limit is {_mb(limit)} ({fraction:.0%} of maxmemory "
                f"{_mb(mem['max'])}); raise maxmemory, or lower outputs.redis.keep_versions and run `batchscore gc`; "
                "nothing was written")


# --- the allocation model ---------------------------------------------------------------------


def _je(n: float) -> int:
    """jemalloc's size class of an ``n``-byte allocation (what ``used_memory`` counts): 8, then
    multiples of 16 up to 128, then four classes per doubling."""
    n = int(math.ceil(n))
    if n <= 8:
        return 8
    if n <= 128:
        return (n + 15) // 16 * 16
    spacing = 1 << ((n - 1).bit_length() - 3)
    return (n + spacing - 1) // spacing * spacing


def _sds(length: float) -> float:
    """Bytes of an sds string: header (sdshdr5/8/16/32) + bytes + NUL."""
    header = 1 if length < 32 else 3 if length < 256 else 5 if length < 65536 else 9
    return header + length + 1


def _lp_entry(length: float) -> float:
    """Bytes of a string entry in a listpack: encoding header + bytes + back-length."""
    header = 1 if length <= 63 else 2 if length <= 4095 else 5
    body = header + length
    return body + (1 if body <= 127 else 2 if body < 16383 else 3 if body < 2097151 else 4)


def _pow2(k: int) -> int:
    """Slots of a dict holding ``k`` entries (it grows to the next power of two once full)."""
    return 1 << max(2, (k - 1).bit_length())


def _bucket_sizes(rows: int, buckets: int) -> list[tuple[int, float]]:
    """``(entities, probability)`` of one bucket's size: Binomial(rows, 1 / buckets), the spread of
    ``crc32(key) % buckets`` (checked in the tests against real keys)."""
    if buckets <= 1:
        return [(rows, 1.0)]
    p = 1 / buckets
    mean = rows * p
    sd = math.sqrt(rows * p * (1 - p))
    lo, hi = max(0, int(mean - 12 * sd) - 1), min(rows, int(mean + 12 * sd) + 2)
    lp, lq, lf = math.log(p), math.log1p(-p), math.lgamma(rows + 1)
    out = [(k, math.exp(lf - math.lgamma(k + 1) - math.lgamma(rows - k + 1) + k * lp + (rows - k) * lq))
           for k in range(lo, hi + 1)]
    norm = sum(q for _, q in out)
    return [(k, q / norm) for k, q in out]


# --- where the buckets go ---------------------------------------------------------------------


def _is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _slot_shares(client: Any, nodes: list[Any]) -> dict[str, float]:
    """``host:port`` -> share of the 16384 slots it owns (empty: spread evenly)."""
    if not _is_cluster(client):
        return {}
    owned: dict[str, int] = {}
    try:
        for holders in client.nodes_manager.slots_cache.values():
            if holders:
                owned[str(holders[0].name)] = owned.get(str(holders[0].name), 0) + 1
    except AttributeError:
        return {}
    total = sum(owned.values())
    return {name: n / total for name, n in owned.items()} if total else {}


def _share(need: int, buckets: int, p: float) -> int:
    """Bytes a master owning share ``p`` of the slots gets: its expected buckets plus
    :data:`SKEW_SIGMAS` standard deviations (a bucket lands on one master whole)."""
    if p >= 1:
        return need
    expected = buckets * p + SKEW_SIGMAS * math.sqrt(buckets * p * (1 - p))
    return int(need * min(1.0, expected / max(1, buckets))) + 1


def _where(node: Any) -> str:
    """``host:port`` of a node client (no credentials), or its unix socket path."""
    kw = getattr(getattr(node, "connection_pool", None), "connection_kwargs", {}) or {}
    if kw.get("path"):
        return str(kw["path"])
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
