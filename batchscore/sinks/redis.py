"""Blue/green versions of a model's scores in Redis (driver side): the fenced primitives.

Every side effect here is fenced by the publish lock's token: :meth:`RedisVersions.lock` draws a
fencing token from an ever-growing counter and stores it in the lock; each Lua script below
checks ``GET lock == token`` in the same atomic step as its write, so a publisher that lost its
lock (paused past the TTL, or the server restarted) is refused at its next side effect with
:class:`~batchscore.errors.FencedError`. Bulk deletes (GC, orphans) and executor loads check the
token before each batch; what a stale holder could still write lands only in its own version,
which nothing will ever flip to. With an age limit the expiry of a publication's keys is set the
same way (:meth:`RedisVersions.arm`, then the flip).

The step order of a publication (load, verify, commit, flip, collect) lives in
:mod:`batchscore.sinks.publication`; this module only knows Redis. Works on a standalone server
and on a Cluster: every key a script touches carries the ``{ns}`` hash tag. Keys:
:mod:`batchscore.redis_layout`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from batchscore import redis_layout as layout
from batchscore.errors import FencedError, InfrastructureError, PublishRefusedError

# KEYS: lock, fence counter. ARGV: owner, ttl ms. The lock is free, expired, or held by an
# earlier try of the same owner (orchestrators retry a task only after its attempt died; the old
# attempt, if it is merely paused, is fenced out by the new token).
_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '|' then return false end
local token = ARGV[1] .. '|' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock, meta, run key, versions zset. ARGV: token, identity, number, then meta field/value pairs.
_CREATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
"""

# KEYS: lock, key. ARGV: token, then field/value pairs.
_HSET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""

# KEYS: lock, pointer, publication record, new meta, meta of the version the pointer names now.
# ARGV: token, expected record seq ('' = no record), new seq, new identity, new record JSON, now,
# mode ('forward': the new seq must be higher; 'repair': the leader's record, any seq),
# digest the new version must hold, the identity the pointer is expected to hold ('' = none),
# the new meta's expiry deadline in ms ('' = none: persist it) and the pointer's and record's.
_FLIP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
local rec = redis.call('GET', KEYS[3])
local cur = rec and tonumber(cjson.decode(rec)['seq']) or nil
if ARGV[2] == '' then
  if rec then return 0 end
elseif cur ~= tonumber(ARGV[2]) then
  return 0
end
if ARGV[7] == 'forward' and cur and tonumber(ARGV[3]) <= cur then return 0 end
local pointer = redis.call('GET', KEYS[2])
if (pointer or '') ~= ARGV[9] then return 0 end
local m = redis.call('HMGET', KEYS[4], 'state', 'digest')
if m[1] ~= 'loaded' and m[1] ~= 'published' and m[1] ~= 'retired' then return -1 end
if m[2] ~= ARGV[8] then return -3 end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[4], 'state', 'published', 'published_at', ARGV[6])
if pointer and pointer ~= ARGV[4] and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSET', KEYS[5], 'state', 'retired', 'retired_at', ARGV[6])
end
if ARGV[10] == '' then
  redis.call('PERSIST', KEYS[4])
else
  redis.call('PEXPIREAT', KEYS[4], ARGV[10])
  redis.call('PEXPIREAT', KEYS[2], ARGV[11])
  redis.call('PEXPIREAT', KEYS[3], ARGV[11])
end
return 1
"""

# KEYS: lock, meta, run key. ARGV: token, ttl ms ('' = no expiry), identity. The deadline is the
# server's clock plus the TTL; it is recorded in the meta (``expires_at``, seconds) and set on the
# run key when that still names this version. The meta loses any earlier expiry until the flip
# sets the new one (with the pointer's and the record's): a flip that never comes leaves a meta
# that GC collects, never data without one. Without a TTL every earlier expiry is removed.
_ARM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local owns = redis.call('GET', KEYS[3]) == ARGV[3]
redis.call('PERSIST', KEYS[2])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], 'expires_at')
  if owns then redis.call('PERSIST', KEYS[3]) end
  return 0
end
local t = redis.call('TIME')
local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[2], 'expires_at', string.format('%.3f', at / 1000))
if owns then redis.call('PEXPIREAT', KEYS[3], string.format('%d', at)) end
return at
"""

# KEYS: lock, then data keys. ARGV: token, deadline ms ('' = remove the expiry).
_EXPIRE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
for i = 2, #KEYS do
  if ARGV[2] == '' then redis.call('PERSIST', KEYS[i]) else redis.call('PEXPIREAT', KEYS[i], ARGV[2]) end
end
return #KEYS - 1
"""

# KEYS: lock, then keys to UNLINK. ARGV: token.
_UNLINK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
for i = 2, #KEYS do redis.call('UNLINK', KEYS[i]) end
return #KEYS - 1
"""

# KEYS: lock. ARGV: token, a version's data key prefix, the first and the last bucket (key names
# built here, as in _HLENS: standalone only). Returns the buckets named.
_UNLINK_BUCKETS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
for b = tonumber(ARGV[3]), tonumber(ARGV[4]) do redis.call('UNLINK', ARGV[2] .. b) end
return tonumber(ARGV[4]) - tonumber(ARGV[3]) + 1
"""


# KEYS: lock. ARGV: token, the source's and the destination's data key prefixes, the first and the
# last bucket (key names built here, as in _HLENS: standalone only). Each destination becomes a
# copy of its source without an expiry (the version is armed later), or is removed when the source
# holds nothing (an empty bucket), so a retried copy leaves the same buckets. Returns the copies made.
_COPY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
local n = 0
for b = tonumber(ARGV[4]), tonumber(ARGV[5]) do
  local dst = ARGV[3] .. b
  if redis.call('COPY', ARGV[2] .. b, dst, 'REPLACE') == 1 then
    redis.call('PERSIST', dst)
    n = n + 1
  else
    redis.call('UNLINK', dst)
  end
end
return n
"""

# KEYS: data keys. Their sizes (read only).
# ARGV: a version's data key prefix, the first and the last bucket. The key names are built here
# (standalone servers only: on a Cluster a version's buckets span slots): sending 8k key names a
# call cost the client more than the server's HLENs.
_HLENS = """
local out = {}
for b = tonumber(ARGV[2]), tonumber(ARGV[3]) do out[#out + 1] = redis.call('HLEN', ARGV[1] .. b) end
return out
"""

# KEYS: lock, a data key. ARGV: token, then the fields to remove.
_HDEL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
return redis.call('HDEL', KEYS[2], unpack(ARGV, 2))
"""


@dataclass(frozen=True)
class Expiry:
    """A publication's expiry deadlines (ms since the epoch, the Redis server's clock): the
    version's data and meta, and the pointer and record (a little earlier, see :meth:`RedisVersions.arm`)."""

    data_ms: int
    pointer_ms: int


class ShortLoad(InfrastructureError):
    """Buckets hold fewer entities than were written: keys repeated within the run (a field
    written twice counts once), or data lost by the server. The caller tells which."""


@dataclass(frozen=True)
class Version:
    """One Redis version: its identity (``number.epoch``), buckets, state and content digest."""

    number: int
    epoch: str
    buckets: int
    state: str  # loading | loaded | published | retired
    digest: str
    count: int

    @property
    def vid(self) -> str:
        return layout.version_id(self.number, self.epoch)


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in raw.items()}


def _s(raw: Any) -> str | None:
    return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisVersions:
    """The versions of one model namespace ``ns`` on a client (standalone or Cluster)."""

    def __init__(self, client: Any, ns: str) -> None:
        self.r = client
        self.ns = ns
        self.token: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()

    # -- reading -------------------------------------------------------------------------------

    def current(self) -> str | None:
        """The identity the pointer names (None when nothing is served)."""
        return _s(self.r.get(layout.pointer_key(self.ns)))

    def served_record(self) -> dict[str, Any] | None:
        """The publication record readers are served (the JSON the last flip wrote), or None."""
        raw = _s(self.r.get(layout.publication_key(self.ns)))
        return json.loads(raw) if raw else None

    def meta(self, vid: str) -> dict[str, str]:
        """A version's metadata ({} when it does not exist, e.g. collected)."""
        return _text(self.r.hgetall(layout.meta_key(self.ns, vid)))

    def version(self, vid: str | None) -> Version | None:
        """``vid`` as a :class:`Version`, or None when Redis does not hold its metadata."""
        meta = self.meta(vid) if vid else {}
        if not meta or "epoch" not in meta:
            return None
        return Version(int(meta["number"]), meta["epoch"], int(meta["buckets"]), meta["state"],
                       meta.get("digest", ""), int(meta["count"]))

    def version_of_run(self, run_id: str) -> str | None:
        return _s(self.r.get(layout.run_key(self.ns, run_id)))

    def known_versions(self) -> list[str]:
        """Identities in the versions set, oldest first."""
        return [_s(v) or "" for v in self.r.zrange(layout.versions_key(self.ns), 0, -1)]

    def bucket_sizes(self, vid: str, buckets: int) -> list[int]:
        """``HLEN`` of every bucket of a version: 4096 buckets per (read-only) script on a
        standalone server, pipelined on a Cluster (a version's buckets span its slots)."""
        from redis.cluster import RedisCluster

        if isinstance(self.r, RedisCluster):
            pipe = self.r.pipeline(transaction=False)
            for b in range(buckets):
                pipe.hlen(layout.data_key(self.ns, vid, b))
            return [int(n) for n in pipe.execute()]
        out: list[int] = []
        prefix = layout.data_prefix(self.ns, vid)
        for lo in range(0, buckets, 4096):
            out.extend(int(n) for n in self.r.eval(_HLENS, 0, prefix, lo, min(buckets, lo + 4096) - 1))
        return out

    def complete(self, vid: str | None, digest: str) -> Version | None:
        """``vid`` when Redis holds all of it (loaded or served, every bucket full) with content
        ``digest``, else None: the only versions a flip may (re)use."""
        v = self.version(vid)
        if v is None or v.state not in ("loaded", "published", "retired") or v.digest != digest:
            return None
        return v if sum(self.bucket_sizes(v.vid, v.buckets)) == v.count else None

    # -- fenced writes -------------------------------------------------------------------------

    def _eval(self, script: str, numkeys: int, *args: Any) -> Any:
        """Run a Lua script; a server out of memory is bad input (exit 2), never a retry."""
        import redis

        try:
            return self.r.eval(script, numkeys, *args)
        except redis.exceptions.OutOfMemoryError:
            raise PublishRefusedError(
                f"{self.ns}: Redis is out of memory (maxmemory); nothing more was written and the served version is "
                "untouched: raise maxmemory, or lower outputs.redis.keep_versions and run `batchscore gc`") from None

    def _fenced(self, result: Any, what: str) -> Any:
        if result == -2:
            self.lost.set()
            raise FencedError(f"{self.ns}: this publisher lost the publish lock (it expired or another try took "
                              f"it over) before it could {what}; nothing more was changed, rerun the command")
        return result

    def check_fence(self, what: str) -> None:
        """Raise :class:`FencedError` unless this publisher still holds the lock."""
        if self.token is None or _s(self.r.get(layout.lock_key(self.ns))) != self.token:
            self._fenced(-2, what)

    def fence(self) -> tuple[str, str]:
        """What executor loads check before each write: (lock key, token)."""
        assert self.token is not None, "take the lock first"
        return layout.lock_key(self.ns), self.token

    def allocate(self, *, run_id: str, rows: int, columns: list[str], model_version: str, digest: str,
                 extra: dict[str, str] | None = None, near: str | None = None) -> Version:
        """A fresh version (a new number and epoch) in state ``loading``; with ``near`` (the served
        version) its bucket count when :func:`layout.bucket_count` keeps it."""
        known = [int(v.partition(".")[0]) for v in self.known_versions() if v.partition(".")[0].isdigit()]
        n = int(self.r.incr(layout.seq_key(self.ns)))
        while n <= max(known, default=0):  # the counter was lost (restored server)
            n = int(self.r.incr(layout.seq_key(self.ns)))
        epoch = secrets.token_hex(4)
        vid = layout.version_id(n, epoch)
        served = self.version(near) if near else None
        buckets = layout.bucket_count(rows, keep=served.buckets if served else None)
        fields = {"number": n, "epoch": epoch, "state": "loading", "count": rows, "buckets": buckets,
                  "columns": ",".join(columns), "model_version": model_version, "run_id": run_id,
                  "digest": digest, "created_at": time.time(), **(extra or {})}
        flat = [str(x) for kv in fields.items() for x in kv]
        created = self._fenced(self._eval(
            _CREATE, 4, layout.lock_key(self.ns), layout.meta_key(self.ns, vid), layout.run_key(self.ns, run_id),
            layout.versions_key(self.ns), self.token or "", vid, str(n), *flat), "allocate a Redis version")
        if created != 1:
            raise InfrastructureError(f"{self.ns}: version identity {vid} already exists; rerun the publish")
        return Version(n, epoch, buckets, "loading", digest, rows)

    def resume(self, *, run_id: str, digest: str, columns: list[str]) -> Version | None:
        """The version an earlier try of this run began, when it holds the same content (digest)
        and columns; a version of other content is never reused."""
        vid = self.version_of_run(run_id)
        meta = self.meta(vid) if vid else {}
        if not meta or meta.get("digest") != digest or meta.get("columns") != ",".join(columns):
            return None
        if meta.get("state") not in ("loading", "loaded"):
            return None
        return self.version(vid)

    def annotate(self, vid: str, **fields: Any) -> None:
        flat = [str(x) for kv in fields.items() for x in (kv[0], kv[1])]
        self._fenced(self._eval(_HSET, 2, layout.lock_key(self.ns), layout.meta_key(self.ns, vid),
                                 self.token or "", *flat), f"annotate version {vid}")

    def verify(self, version: Version, expected: dict[int, int]) -> Version:
        """Every bucket holds exactly the expected number of entities (absent = 0), and the
        expected counts add up to the version's row count; then mark it loaded."""
        where = f"Redis version {version.vid} of {self.ns}"
        if sum(expected.values()) != version.count:
            raise InfrastructureError(f"{where}: the load wrote {sum(expected.values())} entities but the "
                                      f"staged run has {version.count}; rerun the publish to reload it")
        got = self.bucket_sizes(version.vid, version.buckets)
        bad = [(b, n, expected.get(b, 0)) for b, n in enumerate(got) if n != expected.get(b, 0)]
        if bad:
            b, n, want = bad[0]
            error = ShortLoad if all(n <= w for _, n, w in bad) else InfrastructureError
            raise error(f"{where}: bucket {b} holds {n} entities, expected {want} "
                        f"({len(bad)} bucket(s) differ); rerun the publish to reload it")
        self.annotate(version.vid, state="loaded")
        return Version(version.number, version.epoch, version.buckets, "loaded", version.digest, version.count)

    def flip(self, version: Version, *, expected_seq: int | None, expected_pointer: str | None,
             record: dict[str, Any], mode: str = "forward", expiry: Expiry | None = None) -> None:
        """Compare-and-set the pointer and the publication record: from the record whose seq is
        ``expected_seq`` (None: no record) and the pointer ``expected_pointer``, to ``version``
        and ``record``. ``forward`` only ever moves to a higher seq; ``repair`` writes the Delta
        leader's record whatever Redis holds (after a restore of the table). ``expiry`` (from
        :meth:`arm`): the deadlines the same atomic step puts on the new meta, the pointer and the
        record; None leaves the pointer and record without one and removes the meta's."""
        ok = self._eval(
            _FLIP, 5, layout.lock_key(self.ns), layout.pointer_key(self.ns), layout.publication_key(self.ns),
            layout.meta_key(self.ns, version.vid), layout.meta_key(self.ns, expected_pointer or "none"),
            self.token or "", "" if expected_seq is None else str(expected_seq), str(record["seq"]), version.vid,
            json.dumps(record, sort_keys=True), str(time.time()), mode, version.digest, expected_pointer or "",
            "" if expiry is None else str(expiry.data_ms), "" if expiry is None else str(expiry.pointer_ms),
        )
        self._fenced(ok, f"flip the pointer to {version.vid}")
        if ok == -1:
            raise InfrastructureError(f"{self.ns}: version {version.vid} is not fully loaded; rerun the publish")
        if ok == -3:
            raise InfrastructureError(f"{self.ns}: version {version.vid} does not hold the content of publication "
                                      f"{record['seq']}; rerun `batchscore reconcile`")
        if ok != 1:
            raise FencedError(f"{self.ns}: the served publication changed while this one ran (expected seq "
                              f"{expected_seq}, pointer {expected_pointer}); not flipping, rerun the command")
        self.r.publish(layout.channel(self.ns), "flip")

    def arm(self, version: Version, ttl_s: float | None, *, lead_s: float = 0.0) -> Expiry | None:
        """Before a flip to ``version``: put the publication's expiry on its keys (``ttl_s`` from
        now on the server's clock; None removes an expiry an earlier publication left). The data
        buckets and the run key get the deadline here, in fenced steps; the meta, the pointer and
        the record get it from the flip itself (the pointer and record ``lead_s`` earlier, so a
        reader that read the pointer just before it expired still finds the whole version). The
        data are armed before the meta: a crash in between leaves data that expire under a meta
        that stays (GC collects it, a retry reloads it), never data that outlive their meta.

        A version that already had an expiry (a kept version a rollback serves again) is checked
        complete after its renewal: it could have expired in between."""
        meta = self.meta(version.vid)
        if not meta:
            raise InfrastructureError(f"{self.ns}: Redis version {version.vid} expired or was collected before it "
                                      "could be served; rerun the command to reload it")
        renewing = "expires_at" in meta
        if ttl_s is None and not renewing:
            return None  # never armed: nothing to remove, no round trip
        ttl_ms = "" if ttl_s is None else str(max(1, int(ttl_s * 1000)))
        at = int(self._fenced(self._eval(
            _ARM, 3, layout.lock_key(self.ns), layout.meta_key(self.ns, version.vid),
            layout.run_key(self.ns, meta.get("run_id", "")), self.token or "", ttl_ms, version.vid),
            f"set the expiry of version {version.vid}"))
        if at == -1:
            raise InfrastructureError(f"{self.ns}: Redis version {version.vid} expired before it could be served; "
                                      "rerun the command to reload it")
        deadline = "" if ttl_s is None else str(at)
        keys = [layout.data_key(self.ns, version.vid, b) for b in range(version.buckets)]
        self._batched(keys, _EXPIRE, [deadline], lambda pipe, k: pipe.pexpireat(k, int(at)) if deadline
                      else pipe.persist(k), what=f"set the expiry of version {version.vid}")
        if renewing and self.complete(version.vid, version.digest) is None:
            raise InfrastructureError(f"{self.ns}: Redis version {version.vid} expired while it was being served "
                                      "again; rerun the command to reload it")
        if ttl_s is None:
            return None
        return Expiry(data_ms=at, pointer_ms=at - int(lead_s * 1000))

    def unlink(self, keys: list[str], *, what: str) -> int:
        """``UNLINK`` ``keys`` in fenced batches of 500."""
        return self._batched(keys, _UNLINK, [], lambda pipe, k: pipe.unlink(k), what=what)

    def unlink_buckets(self, vid: str, buckets: int, *, what: str) -> int:
        """``UNLINK`` every data key of ``vid``: fenced batches of 4096 buckets named server-side on
        a standalone server, :meth:`unlink` of the listed keys on a Cluster."""
        from redis.cluster import RedisCluster

        if isinstance(self.r, RedisCluster):
            return self.unlink([layout.data_key(self.ns, vid, b) for b in range(buckets)], what=what)
        prefix, done = layout.data_prefix(self.ns, vid), 0
        for lo in range(0, buckets, 4096):
            hi = min(buckets, lo + 4096) - 1
            done += int(self._fenced(self._eval(_UNLINK_BUCKETS, 1, layout.lock_key(self.ns), self.token or "",
                                                prefix, lo, hi), what))
        return done

    def _batched(self, keys: list[str], script: str, args: list[str], command: Callable[[Any, str], Any], *,
                 what: str) -> int:
        """Run ``script`` (KEYS: lock + a batch; ARGV: token + ``args``) over ``keys`` in fenced
        batches of 500 on a standalone server; on a Cluster (data keys span slots) a token check,
        then ``command`` for each key of the batch in one pipeline."""
        from redis.cluster import RedisCluster

        done = 0
        for i in range(0, len(keys), 500):
            batch = keys[i : i + 500]
            if isinstance(self.r, RedisCluster):
                self.check_fence(what)
                pipe = self.r.pipeline(transaction=False)
                for k in batch:
                    command(pipe, k)
                done += sum(int(n) for n in pipe.execute())
            else:
                done += int(self._fenced(self._eval(script, 1 + len(batch), layout.lock_key(self.ns), *batch,
                                                     self.token or "", *args), what))
        return done

    def copy_buckets(self, src: Version, dst: Version) -> int:
        """Make every bucket of ``dst`` a server-side copy of ``src``'s (the same bucket count), in
        fenced batches; standalone servers only (a Cluster spreads a version's buckets over slots,
        and ``COPY`` stays within one). Returns the buckets copied (empty ones are absent)."""
        assert src.buckets == dst.buckets
        done = 0
        frm, to = layout.data_prefix(self.ns, src.vid), layout.data_prefix(self.ns, dst.vid)
        for lo in range(0, src.buckets, 250):
            hi = min(lo + 250, src.buckets) - 1
            done += int(self._fenced(self._eval(_COPY, 1, layout.lock_key(self.ns), self.token or "", frm, to, lo, hi),
                                     f"copy version {src.vid} into {dst.vid}"))
        return done

    def remove_fields(self, vid: str, fields: dict[int, list[bytes]]) -> int:
        """``HDEL`` entities from buckets of ``vid`` (bucket -> entity keys), each command fenced,
        pipelined 500 buckets at a time. Returns the entities removed."""
        lock, token, done = layout.lock_key(self.ns), self.token or "", 0
        items = [(b, f) for b, f in fields.items() if f]
        for lo in range(0, len(items), 500):
            pipe = self.r.pipeline(transaction=False)
            for b, f in items[lo : lo + 500]:
                pipe.eval(_HDEL, 2, lock, layout.data_key(self.ns, vid, b), token, *f)
            for n in pipe.execute():
                done += int(self._fenced(n, f"remove entities from version {vid}"))
        return done

    def delete(self, vid: str, meta: dict[str, str]) -> None:
        """UNLINK one version's buckets (listed from its metadata, no SCAN), then its control keys."""
        self.unlink_buckets(vid, int(meta.get("buckets", 0)), what=f"delete version {vid}")
        from batchscore.testing import crashpoint

        crashpoint.reached("during_gc")
        control = [layout.meta_key(self.ns, vid)]
        if meta.get("run_id") and self.version_of_run(meta["run_id"]) == vid:
            control.append(layout.run_key(self.ns, meta["run_id"]))
        self.check_fence(f"delete version {vid}")
        self.r.zrem(layout.versions_key(self.ns), vid)
        self.unlink(control, what=f"delete version {vid}")

    # -- the publish lock ----------------------------------------------------------------------

    @contextmanager
    def locked(self, owner: str, *, ttl_s: int) -> Iterator[str]:
        """Hold the model's publish lock (and its fencing token) for the block."""
        token = self.lock(owner=owner, ttl_s=ttl_s)
        try:
            yield token
        finally:
            self.unlock()

    def lock(self, *, owner: str, ttl_s: int = 120) -> str:
        """Take the model's publish lock or refuse clearly (exit 4: retry later).

        The lock expires after ``ttl_s`` unless renewed (a background thread renews it every third
        of that); a crashed holder blocks others for at most ``ttl_s``. A retry of the same owner
        (run id) takes it over at once; the old attempt's token is then stale and every side effect
        it still tries is refused.
        """
        key = layout.lock_key(self.ns)
        ms = ttl_s * 1000
        token = _s(self._eval(_LOCK, 2, key, layout.fence_key(self.ns), owner, str(ms)))
        if token is None:
            holder = _s(self.r.get(key)) or "?|"
            raise InfrastructureError(
                f"{self.ns}: {holder.split('|')[0]} holds the publish lock (expires in {self.r.ttl(key)} s); wait "
                "for it to finish: one publish, rollback, gc or reconcile per model at a time")
        self.token = token
        self.lost.clear()
        self._stop.clear()
        threading.Thread(target=self._renew, args=(token, ms), daemon=True, name="batchscore-lock").start()
        return token

    def _renew(self, token: str, ms: int) -> None:
        while not self._stop.wait(ms / 3000):
            try:
                if not self._eval(_RENEW, 1, layout.lock_key(self.ns), token, str(ms)):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a transient error: the next beat retries; writes check the token
                continue

    def unlock(self) -> None:
        self._stop.set()
        if self.token is not None:
            try:
                self._eval(_UNLOCK, 1, layout.lock_key(self.ns), self.token)
            except Exception:  # noqa: BLE001 - the lock expires by itself
                pass
            finally:
                self.token = None
