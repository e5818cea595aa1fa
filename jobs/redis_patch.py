"""Loading a new Redis version as a patch of the served one, when few entities changed.

A full load writes every entity from the executors. When the served version holds almost the same
content (a nightly run where most entities' scores did not change; an incremental run reuses them
bit for bit), the new version is instead built on the server and from the driver:

1. the served version's buckets are copied server-side into the new version's keys (``COPY``, a
   memory copy of each compact hash; fenced batches, :meth:`RedisVersions.copy_buckets`);
2. the entities whose packed scores differ from the served ones, and the new entities, are
   written (``HSET``, the executor loader's RESP encoder run on the driver, fenced per round);
3. the entities the served version holds but the new content does not are removed (``HDEL``,
   each command fenced);

then the protocol verifies every bucket's size before the Delta commit, as after a full load.

The diff is computed from the files themselves (the served publication's Delta version and the
staged run: keys and packed float32 scores, compared bit for bit), never from what the score step
claims it reused. It applies only on a standalone server, when the served version is complete, is
the Delta head's publication, has the same bucket count and columns, the staged keys are unique
(else the full load runs and reports the duplicates), both snapshots fit the driver
(:data:`PATCH_MAX_ROWS`) and at most :data:`PATCH_MAX_SHARE` of the entities differ; otherwise the
caller loads in full. A version a patch began and a full load then takes over is emptied first, so
entities the patch copied and had not removed yet cannot survive into it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from batchscore import storage as st
from batchscore.sinks import delta
from batchscore.sinks.publication import Target, head
from batchscore.sinks.redis import RedisVersions, Version
from batchscore.storage import Storage

log = logging.getLogger(__name__)

#: The most entities a patch reads on the driver (the served and the new snapshot, keys + scores).
PATCH_MAX_ROWS = 20_000_000
#: Above this share of entities written or removed, a full load from the executors is cheaper.
PATCH_MAX_SHARE = 0.5


@dataclass(frozen=True)
class Patch:
    """What a patch load did."""

    base: str  # the served version it started from
    written: int  # entities new or with other scores
    removed: int  # entities no longer in the content
    counts: dict[int, int]  # bucket -> entities of the new version


@dataclass(frozen=True)
class Base:
    """The served version a patch starts from."""

    version: Version
    files: list[str]  # the Delta files it holds (its publication's Delta version)
    sizes: list[int]  # entities per bucket


def patch_base(store: RedisVersions, target: Target, version: Version) -> Base | None:
    """The served version a load of ``version`` may start from; None when a full load is needed
    (see the module docstring)."""
    from redis.cluster import RedisCluster

    if isinstance(store.r, RedisCluster):
        return None
    pub = head(target.table, target.storage)
    record = store.served_record()
    if pub is None or pub.delta_version is None or record is None or record.get("seq") != pub.seq:
        return None
    base = store.version(pub.redis_version)
    if (base is None or base.state not in ("published", "retired", "loaded") or base.digest != pub.digest
            or store.current() != base.vid or base.buckets != version.buckets or base.vid == version.vid):
        return None
    if store.meta(base.vid).get("columns") != ",".join(target.columns):
        return None
    if base.count > PATCH_MAX_ROWS or version.count > PATCH_MAX_ROWS:
        return None
    sizes = store.bucket_sizes(base.vid, base.buckets)
    if sum(sizes) != base.count:  # not whole (expired, evicted, lost): load in full
        return None
    return Base(base, delta.files_at(target.table, pub.delta_version, target.storage), sizes)


def patch_load(store: RedisVersions, target: Target, version: Version, base: Base, staged_files: list[str], *,
               url: str) -> Patch | None:
    """Build ``version`` as ``base`` patched to the content of ``staged_files`` (steps 1-3 of the
    module docstring); None, with nothing written, when the content differs too much or its keys
    repeat. The counts it returns are the base's plus the new keys' minus the removed ones'; the
    protocol's verification then checks every bucket against them."""
    import numpy as np
    import pyarrow as pa

    from batchscore.udfs._redis_load import bucket_ids, make_loader

    key, cols = target.key, list(target.columns)
    new = _snapshot(staged_files, key, cols, target.storage)
    old = _snapshot(base.files, key, cols, target.storage)
    if new.num_rows != version.count or old.num_rows != base.version.count:
        return None
    if new.schema.field("k").type != old.schema.field("k").type:  # the key's type changed: compare as text
        new, old = (t.set_column(0, "k", t.column(0).cast(pa.string())) for t in (new, old))
    diff = _diff(new, old, cols)
    if diff is None:
        return None  # the staged keys repeat: the full load counts (and names) them
    changed, gone, added = diff
    if changed.num_rows + len(gone) > PATCH_MAX_SHARE * max(1, version.count):
        return None

    store.annotate(version.vid, patch_of=base.version.vid)  # a full load that takes over empties it first
    store.copy_buckets(base.version, version)                                                    # 1. copy
    if changed.num_rows:                                                                         # 2. write
        loader = make_loader(url, store.ns, version.vid, version.buckets, cols, fence=store.fence())
        for _ in loader(iter(changed.to_batches())):
            pass
    removed = 0
    counts = np.asarray(base.sizes, dtype=np.int64)
    if len(gone):                                                                                # 3. remove
        ids = bucket_ids(gone.cast(pa.string()), version.buckets)
        fields: dict[int, list[bytes]] = {}
        for b, k in zip(ids.tolist(), gone.cast(pa.string()).to_pylist(), strict=True):
            fields.setdefault(int(b), []).append(k.encode())
        removed = store.remove_fields(version.vid, fields)
        counts -= np.bincount(ids, minlength=version.buckets)
    if len(added):
        fresh = added.cast(pa.string())
        counts += np.bincount(bucket_ids(fresh, version.buckets), minlength=version.buckets)
    return Patch(base.version.vid, changed.num_rows, removed, {b: int(n) for b, n in enumerate(counts.tolist()) if n})


def _diff(new: Any, old: Any, cols: list[str]) -> tuple[Any, Any, Any] | None:
    """(rows of ``new`` that are new or whose scores differ bit for bit from ``old``'s, keys of
    ``old`` absent from ``new``, keys of ``new`` absent from ``old``); None when ``new``'s keys
    repeat. One hash table, of ``old``'s keys (unique: a whole published version): two equal keys
    of ``new`` either land on the same ``old`` row or are both absent from it."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pd.Index(old.column("k").to_numpy(zero_copy_only=False))
    if not index.is_unique:
        return None
    pos = index.get_indexer(new.column("k").to_numpy(zero_copy_only=False))
    matched = pos >= 0
    hits = np.bincount(pos[matched], minlength=old.num_rows)
    added = new.column("k").filter(pa.array(~matched)).combine_chunks()
    if (hits > 1).any() or len(pc.unique(added)) != len(added):
        return None
    differs = ~matched
    for c in cols:
        differs[matched] |= _bits(new.column(c))[matched] != _bits(old.column(c))[pos[matched]]
    gone = old.column("k").filter(pa.array(hits == 0)).combine_chunks()
    return new.filter(pa.array(differs)).select(["k", *cols]), gone, added


def clear(store: RedisVersions, version: Version) -> None:
    """Empty ``version``'s buckets (fenced) before a full load takes over a patch."""
    store.unlink_buckets(version.vid, version.buckets, what=f"empty version {version.vid} before a full load")


def _snapshot(files: list[str], key: str, cols: list[str], storage: Storage) -> Any:
    """Key (renamed ``k``, its own type) and score columns of ``files`` as one Arrow table."""
    import pyarrow as pa

    if not files:
        return pa.table({"k": pa.array([], pa.string()), **{c: pa.array([], pa.float32()) for c in cols}})
    return st.read_parquet(files, [key, *cols], storage).rename_columns(["k", *cols]).combine_chunks()


def _bits(col: Any) -> Any:
    """A float column's values as their float32 bit patterns (NaN == NaN, -0.0 != 0.0: what Redis holds)."""
    import numpy as np

    return np.ascontiguousarray(col.to_numpy(zero_copy_only=False), dtype="<f4").view(np.int32)


