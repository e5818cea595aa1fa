"""The publication protocol: one record per model, fenced side effects, Delta leads, Redis follows.

A **publication** is one Delta commit that carries its record (``batchscore.publication``):
``seq`` (one more than the previous publication's), run id, run date, the content digest of the
staged run, the Redis version identity loaded for it and its kind (``publish`` or ``rollback``).
The Delta log is the durable source of truth: a publication *happens* when its commit lands.
Redis follows: ``{ns}:publication`` holds the record readers are served, and it and the pointer
move together in one compare-and-set (:meth:`RedisVersions.flip`) that only ever goes to a higher
seq. Between the commit and the flip Delta readers already see the new batch and Redis readers the
previous one; :func:`reconcile` (run at the start of every publish, rollback and gc, and by
``batchscore reconcile``) finishes such a half-done publication deterministically, reloading
Redis from Delta when the version it named is gone (a Redis restarted without persistence).

Every step below runs under the model's publish lock and is fenced by its token: a publisher
that lost its lock stops before its next side effect. The steps of :func:`publish`, in order:

1. **fence**   take the lock (a fresh fencing token);
2. **repair**  reconcile a half-finished publication;
3. **decide**  refuse a run that was published and superseded, or older than the served run date;
4. **load**    reuse this run's Redis version only when it holds the same digest, else allocate a
               fresh identity, pre-flight its memory, load it from the executors (token-checked);
5. **verify**  every bucket's count, then mark it loaded;
6. **commit**  one Delta commit, compare-and-set on the version read in step 3, token checked first;
7. **flip**    pointer + record, compare-and-set on the served record; with ``ttl_seconds`` the
               version's keys, its meta, the pointer and the record get their expiry first
               (:meth:`RedisVersions.arm`) and with the flip, counted from it, renewed by each;
8. **collect** old versions past ``keep_versions`` and their grace period.

**Age limits.** With ``Target.ttl_seconds`` a publication stops being served that long after its
flip unless another one follows (a pipeline that stopped publishing serves nothing rather than
stale scores). Redis then looks like a server restarted without persistence, with one difference
that reconcile knows of: a Delta head whose lifetime is over (its commit time plus the TTL) is
*expired*, not lost, and is never reloaded into Redis (a ``gc`` or ``reconcile`` must not revive
scores the TTL retired); the next publish, or a rollback to an older version, serves again.

The loader is a parameter (the jobs pass a Spark one; tests and the fault campaign can load
in-process), so this module needs neither Spark nor a JVM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from batchscore.errors import (
    FencedError,
    InfrastructureError,
    InputDataError,
    PublishRefusedError,
    SupersededError,
)
from batchscore.sinks import delta
from batchscore.sinks.redis import Expiry, RedisVersions, ShortLoad, Version
from batchscore.sinks.redis_gc import collect
from batchscore.storage import DEFAULT, Storage
from batchscore.testing import crashpoint

#: ``loader(paths, version, fence) -> {bucket: entities}``: load Parquet ``paths`` into ``version``.
Loader = Callable[[list[str], Version, tuple[str, str]], dict[int, int]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Publication:
    """One publication record (the Delta commit's ``batchscore.publication`` and Redis's copy)."""

    seq: int
    run_id: str
    run_date: str | None
    digest: str
    redis_version: str
    kind: str = "publish"  # publish | rollback | promote (a challenger's publication served as the champion's)
    rows: int = 0
    rollback_to: int | None = None
    delta_version: int | None = None  # known once committed
    scored_at: str | None = None  # ISO 8601 UTC: when the served scores were computed (score.json)

    def record(self) -> dict[str, Any]:
        """The record as JSON-able fields; ``scored_at`` only when known (records written before
        it existed, and their test vectors, keep their exact shape)."""
        out = asdict(self)
        if out["scored_at"] is None:
            del out["scored_at"]
        return out

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Publication | None:
        if not raw:
            return None
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class Target:
    """Where and what a model publishes (from its config)."""

    model: str
    table: str
    key: str
    columns: list[str]
    model_version: str
    keep_versions: int
    gc_grace_seconds: float
    lock_ttl_seconds: int
    storage: Storage = DEFAULT  # how the table's store is reached (variable names only)
    ttl_seconds: int | None = None  # outputs.redis.ttl_seconds: a publication's lifetime in Redis (None: forever)


@dataclass(frozen=True)
class Outcome:
    """What a publish, rollback or reconcile did."""

    publication: Publication | None
    action: str  # published | already-published | rolled-back | in-sync | repaired | nothing-published | expired
    previous_redis_version: str | None = None
    reloaded: bool = False
    collected: list[str] = field(default_factory=list)


# -- reading the record --------------------------------------------------------------------------

def head(table: str, storage: Storage = DEFAULT) -> Publication | None:
    """The newest publication in the Delta log (the leader's record)."""
    pubs = delta.publications(table, storage)
    return Publication.of(pubs[0]) if pubs else None


def served(store: RedisVersions) -> Publication | None:
    """The publication Redis readers are served, when the pointer agrees with the record."""
    return _agreed(Publication.of(store.served_record()), store.current())


def _agreed(rec: Publication | None, pointer: str | None) -> Publication | None:
    """The record, when the pointer names its version (a legacy pointer without one: None)."""
    return rec if rec is not None and pointer == rec.redis_version else None


def reference(table: str, served_pub: Publication | None, storage: Storage = DEFAULT) -> Publication | None:
    """The validation reference: the last *completed* publication (committed and served). When
    Redis serves nothing (a fresh or wiped server), the Delta head (reconcile restores it)."""
    pubs = [Publication.of(p) for p in delta.publications(table, storage)]
    if served_pub is None:
        return pubs[0] if pubs else None
    return next((p for p in pubs if p is not None and p.seq <= served_pub.seq), None)


# -- the protocol --------------------------------------------------------------------------------

def publish(store: RedisVersions, target: Target, staged: delta.StagedRun, *, run_id: str, run_date: str | None,
            validated_digest: str, metadata: dict[str, str], loader: Loader,
            preflight: Callable[[], None] = lambda: None, allow_older: bool = False,
            log: Log = lambda _m: None, scored_at: str | None = None, kind: str = "publish") -> Outcome:
    """Publish the staged run ``run_id`` (validated as ``validated_digest``, scored at
    ``scored_at``, ISO 8601, recorded with the publication and in the version's meta): steps 1-8."""
    if staged.digest != validated_digest:
        raise PublishRefusedError(
            f"run {run_id} of '{target.model}': the staged files (digest {staged.digest[:12]}) are not the ones "
            f"validation judged ({validated_digest[:12]}); run `batchscore validate --run-id {run_id}` again")
    with store.locked(run_id, ttl_s=target.lock_ttl_seconds):                      # 1. fence
        repaired = _reconcile(store, target, loader, log)                          # 2. repair
        current = head(target.table, target.storage)                                               # 3. decide
        before, pointer = Publication.of(store.served_record()), store.current()
        done = _already(target, run_id, current, staged.digest)
        if done is not None:  # a retry after the flip: only the collection may be left to do
            log(f"{store.ns}: run {run_id} is already the latest publication {done.seq}"
                + (" (expired: outputs.redis.ttl_seconds; score a new run to serve again)"
                   if repaired.action == "expired" else "") + "; nothing to publish")
            dropped = collect(store, keep=target.keep_versions, grace_s=target.gc_grace_seconds)
            return Outcome(served(store) or done, "already-published", collected=dropped)
        if (not allow_older and current is not None and current.run_date and run_date
                and run_date < current.run_date):
            raise PublishRefusedError(
                f"run {run_id} is for {run_date}, older than the published run {current.run_id} ({current.run_date}); "
                "pass --allow-older to replace newer scores with older ones, or backfill it into the history table")
        expected_dv = delta.table_version(target.table, target.storage)
        version = store.resume(run_id=run_id, digest=staged.digest, columns=target.columns)   # 4. load
        if version is not None and version.state == "loaded" and store.complete(version.vid, version.digest) is None:
            version = replace(version, state="loading")  # some of it expired or was lost since: load it again
        if version is None:
            preflight()
            version = store.allocate(run_id=run_id, rows=staged.total_rows, columns=target.columns,
                                     model_version=target.model_version, digest=staged.digest,
                                     extra=_scored_meta(scored_at), near=pointer)
        if version.state == "loading":
            log(f"{store.ns}: loading {staged.total_rows:,} entities into Redis version {version.vid}")
            version = _load_verified(store, target, loader, staged.uris(), version)  # 5. verify
        else:
            log(f"{store.ns}: Redis version {version.vid} already holds this content; reusing it")
        crashpoint.reached("after_redis_load")
        pub = Publication(seq=(current.seq if current else 0) + 1, run_id=run_id, run_date=run_date,
                          digest=staged.digest, redis_version=version.vid, rows=staged.total_rows,
                          scored_at=scored_at, kind=kind)
        dv = _commit(target, staged, pub, metadata, expected_dv, store)            # 6. commit
        log(f"{store.ns}: committed publication {pub.seq} as Delta version {dv} at {target.table}")
        pub = replace(pub, delta_version=dv)
        crashpoint.reached("after_delta_commit")
        _flip(store, target, version, expected_seq=before.seq if before else None,  # 7. flip
              expected_pointer=pointer, record=pub.record())
        crashpoint.reached("after_flip")
        dropped = collect(store, keep=target.keep_versions, grace_s=target.gc_grace_seconds)  # 8. collect
    return Outcome(pub, "published", before.redis_version if before else None, collected=dropped)


def rollback(store: RedisVersions, target: Target, *, to_version: int, loader: Loader,
             log: Log = lambda _m: None) -> Outcome:
    """A new publication whose content is Delta version ``to_version``'s: Redis ready (the kept
    version with the same digest, else reloaded from Delta) -> one restore commit -> flip."""
    with store.locked(f"rollback-to-{to_version}", ttl_s=target.lock_ttl_seconds):
        pubs = {p["delta_version"]: Publication.of(p) for p in delta.publications(target.table, target.storage)}
        old = pubs.get(to_version)
        if old is None:
            raise PublishRefusedError(
                f"{target.table}: Delta version {to_version} is not a publication; `batchscore history` lists them")
        current = head(target.table, target.storage)
        assert current is not None
        if old.digest == current.digest:  # the latest publication has that content already (a rerun
            # after a crash between restore and flip, or a rollback to the head): finish serving it
            log(f"{store.ns}: the latest publication ({current.seq}) holds Delta version {to_version}'s content "
                "already; making sure Redis serves it")
            out = _reconcile(store, target, loader, log)
            if out.action == "expired":
                raise PublishRefusedError(
                    f"{store.ns}: Delta version {to_version}'s content is the latest publication ({current.seq}), "
                    f"which expired (outputs.redis.ttl_seconds = {target.ttl_seconds}); a rollback serves another "
                    "version's content: publish a new run, or roll back to an earlier version")
            return out
        before, pointer = Publication.of(store.served_record()), store.current()
        expected_dv = delta.table_version(target.table, target.storage)
        assert expected_dv is not None
        version, reloaded = _ready(store, target, old, to_version, loader, owner=f"rollback-to-{to_version}")
        pub = Publication(seq=current.seq + 1, run_id=old.run_id, run_date=old.run_date, digest=old.digest,
                          redis_version=version.vid, kind="rollback", rows=old.rows, rollback_to=to_version,
                          scored_at=old.scored_at)
        try:
            dv = delta.restore(target.table, to_version, expected=expected_dv, storage=target.storage,
                               check=lambda: store.check_fence("restore the Delta table"),
                               metadata={"publication": json.dumps(pub.record(), sort_keys=True),
                                         "redis_version": version.vid})
        except delta.CommitConflict as exc:
            raise InfrastructureError(f"{exc}; rerun the rollback") from exc
        pub = replace(pub, delta_version=dv)
        crashpoint.reached("rollback_after_restore")
        _flip(store, target, version, expected_seq=before.seq if before else None, expected_pointer=pointer,
              record=pub.record())
        log(f"{store.ns}: rolled back to Delta version {to_version} as publication {pub.seq} (Delta version {dv}); "
            f"Redis version {version.vid} ({'reloaded from Delta' if reloaded else 'kept'})")
    return Outcome(pub, "rolled-back", before.redis_version if before else None, reloaded)


def reconcile(store: RedisVersions, target: Target, *, loader: Loader, log: Log = lambda _m: None) -> Outcome:
    """Make Redis serve the Delta head's publication (under the lock): ``batchscore reconcile``."""
    with store.locked("reconcile", ttl_s=target.lock_ttl_seconds):
        return _reconcile(store, target, loader, log)


def gc(store: RedisVersions, target: Target, *, keep: int, grace_s: float, loader: Loader,
       log: Log = lambda _m: None) -> list[str]:
    """Reconcile, then collect old versions (under the lock)."""
    with store.locked("gc", ttl_s=target.lock_ttl_seconds):
        _reconcile(store, target, loader, log)
        return collect(store, keep=keep, grace_s=grace_s)


# -- the steps -----------------------------------------------------------------------------------

def _reconcile(store: RedisVersions, target: Target, loader: Loader, log: Log) -> Outcome:
    leader = head(target.table, target.storage)
    rec, pointer = Publication.of(store.served_record()), store.current()
    now = _agreed(rec, pointer)
    if leader is None:
        return Outcome(None, "nothing-published")
    if now is not None and now.seq == leader.seq and now.digest == leader.digest \
            and store.complete(now.redis_version, now.digest) is not None:
        return Outcome(now, "in-sync")
    if _expired(target, leader):
        return _left_expired(store, target, leader, rec, pointer, log)
    mode = "repair" if rec is not None and rec.seq >= leader.seq else "forward"
    assert leader.delta_version is not None
    version, reloaded = _ready(store, target, leader, leader.delta_version, loader, owner=f"reconcile-{leader.seq}")
    pub = replace(leader, redis_version=version.vid)
    if _expired(target, leader):  # the reload took the rest of its lifetime
        return _left_expired(store, target, leader, rec, pointer, log)
    _flip(store, target, version, expected_seq=rec.seq if rec else None, expected_pointer=pointer,
          record=pub.record(), mode=mode, ttl_s=_lifetime_left(target, leader))
    log(f"{store.ns}: reconciled Redis to publication {leader.seq} (run {leader.run_id}, Delta version "
        f"{leader.delta_version}); Redis version {version.vid} ({'reloaded from Delta' if reloaded else 'kept'}; "
        f"Redis served {f'publication {rec.seq}' if rec else 'nothing'})")
    return Outcome(pub, "repaired", rec.redis_version if rec else None, reloaded)


def _ready(store: RedisVersions, target: Target, pub: Publication, delta_version: int, loader: Loader,
           *, owner: str) -> tuple[Version, bool]:
    """A complete Redis version holding ``pub``'s content: its own when Redis still has all of it
    (same identity and digest), else a fresh one loaded from Delta ``delta_version``'s files."""
    kept = store.complete(pub.redis_version, pub.digest)
    if kept is not None:
        return kept, False
    manifest = delta.manifest_at(target.table, delta_version, target.storage)
    if manifest.digest != pub.digest:
        raise PublishRefusedError(f"{target.table}: Delta version {delta_version}'s files do not match its "
                                  "publication record (digest); the table was changed outside batchscore")
    version = store.resume(run_id=owner, digest=pub.digest, columns=target.columns)
    if version is None or version.state != "loaded" or store.complete(version.vid, version.digest) is None:
        version = store.allocate(run_id=owner, rows=manifest.total_rows, columns=target.columns,
                                 model_version=target.model_version, digest=pub.digest,
                                 extra={"restored_from_delta": str(delta_version), **_scored_meta(pub.scored_at)})
        paths = manifest.uris()
        version = _load_verified(store, target, loader, paths, version)
    return version, True


def _flip(store: RedisVersions, target: Target, version: Version, *, expected_seq: int | None,
          expected_pointer: str | None, record: dict[str, Any], mode: str = "forward",
          ttl_s: float | None = None) -> None:
    """Step 7: arm the version's expiry (``ttl_s`` from now, default the target's full TTL), then
    flip. The pointer and record expire :func:`_lead` seconds before the data and meta."""
    ttl = target.ttl_seconds if ttl_s is None else ttl_s
    expiry: Expiry | None = store.arm(version, ttl, lead_s=_lead(target))
    try:
        store.flip(version, expected_seq=expected_seq, expected_pointer=expected_pointer, record=record, mode=mode,
                   expiry=expiry)
    except FencedError:
        if not _lapsed_meanwhile(store, target, expected_seq):
            raise
        # The served publication expired while this one got ready: nothing is served, nothing replaced.
        store.flip(version, expected_seq=None, expected_pointer=None, record=record, mode=mode, expiry=expiry)


def _lapsed_meanwhile(store: RedisVersions, target: Target, expected_seq: int | None) -> bool:
    """A refused flip whose only cause is the TTL: the lock is still ours, a record was expected
    and Redis now serves nothing."""
    return (target.ttl_seconds is not None and expected_seq is not None and not store.lost.is_set()
            and store.served_record() is None and store.current() is None)


def _expired(target: Target, pub: Publication) -> bool:
    """Whether ``pub``'s lifetime (``ttl_seconds`` from its commit, less the pointer's lead) is over."""
    left = _lifetime_left(target, pub)
    return left is not None and left <= _lead(target)


def _left_expired(store: RedisVersions, target: Target, leader: Publication, rec: Publication | None,
                  pointer: str | None, log: Log) -> Outcome:
    """Reconcile's answer for a Delta head past its lifetime: leave Redis as it is, never revive it."""
    log(f"{store.ns}: publication {leader.seq} (run {leader.run_id}) expired (outputs.redis.ttl_seconds = "
        f"{target.ttl_seconds}); Redis serves {pointer or 'nothing'}; not reloading it: publish a new run")
    return Outcome(leader, "expired", rec.redis_version if rec else None)


def _lead(target: Target) -> float:
    """Seconds the pointer and record expire before the version's data and meta: the GC grace a
    replaced version gets too (at most half the TTL), so a reader holding a cached pointer when
    the pointer expires still reads a whole version."""
    return min(target.gc_grace_seconds, (target.ttl_seconds or 0) / 2)


def _lifetime_left(target: Target, pub: Publication) -> float | None:
    """Seconds left of ``pub``'s data lifetime (its Delta commit time plus the TTL), None without
    a TTL. A reconcile serves what is left of it, never a fresh lifetime."""
    if target.ttl_seconds is None or pub.delta_version is None:
        return None
    info = delta.commit_info(target.table, pub.delta_version, target.storage) or {}
    committed = float(info.get("timestamp", time.time() * 1000)) / 1000
    return committed + target.ttl_seconds - time.time()


def _scored_meta(scored_at: str | None) -> dict[str, str]:
    """The version meta's ``scored_at`` (a timestamp, seconds) from an ISO 8601 time, when known."""
    if not scored_at:
        return {}
    when = datetime.fromisoformat(scored_at)
    return {"scored_at": str((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())}


def _load_verified(store: RedisVersions, target: Target, loader: Loader, paths: list[str],
                   version: Version) -> Version:
    """Load ``paths`` into ``version`` and verify every bucket. Bad input found on the way (Redis
    full; duplicate keys, seen as buckets holding fewer entities than were written) removes the
    partial version and is refused with exit 2: there is no pre-pass over the keys, and this runs
    before the Delta commit, so neither store ever receives a run with duplicate keys."""
    try:
        try:
            return store.verify(version, loader(paths, version, store.fence()))
        except ShortLoad:
            repeated, sample = delta.duplicate_keys(paths, target.key, storage=target.storage)
            if not repeated:
                raise  # lost by the server, not repeated: a reload fixes it
            raise InputDataError(
                f"run of '{target.model}': {repeated} duplicate key(s) in '{target.key}' (e.g. "
                f"{', '.join(map(str, sample))}); deduplicate the input upstream: each entity must be scored once; "
                "nothing was published") from None
    except (PublishRefusedError, InputDataError):
        store.delete(version.vid, store.meta(version.vid))
        raise


def _already(target: Target, run_id: str, current: Publication | None, digest: str) -> Publication | None:
    """The served publication of ``run_id`` when it is the current one with this content; refuse a
    superseded one, or the same run id with other content."""
    found = (Publication.of(p) for p in delta.publications(target.table, target.storage))
    mine = [p for p in found if p is not None and p.run_id == run_id and p.kind == "publish"]
    if not mine:
        return None
    if mine[0].digest != digest:
        raise PublishRefusedError(
            f"run {run_id} of '{target.model}' was published as publication {mine[0].seq} with other content (digest "
            f"{mine[0].digest[:12]}, staged now {digest[:12]}); a run id is published once: score a new --run-id")
    if current is not None and current.seq == mine[0].seq:
        return current
    assert current is not None
    by = f"rollback to Delta version {current.rollback_to}" if current.kind == "rollback" else f"run {current.run_id}"
    raise SupersededError(
        f"run {run_id} of '{target.model}' was published as publication {mine[0].seq} (Delta version "
        f"{mine[0].delta_version}) and since superseded by publication {current.seq} ({by}); not publishing it "
        f"again. To serve its scores again run `batchscore rollback --to-version {mine[0].delta_version}`; "
        "to publish new scores, score a new --run-id")


def _commit(target: Target, staged: delta.StagedRun, pub: Publication, metadata: dict[str, str],
            expected: int | None, store: RedisVersions) -> int:
    meta = {**metadata, "publication": json.dumps(pub.record(), sort_keys=True), "redis_version": pub.redis_version,
            "rows": str(staged.total_rows), "digest": staged.digest}
    try:
        return delta.commit(target.table, staged, model=target.model, run_id=pub.run_id, metadata=meta,
                            expected=expected, check=lambda: store.check_fence("commit to Delta"),
                            storage=target.storage)
    except delta.CommitConflict as exc:
        raise InfrastructureError(f"{exc}; nothing was served from this try, rerun the publish") from exc

