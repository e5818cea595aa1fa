"""Committing Spark-written Parquet as one Delta version with ``deltalake`` (delta-rs).

The score step's tasks write a run's Parquet under ``<table>/runs/<run_id>/`` (any store:
:mod:`batchscore.storage`), invisible to Delta readers, and the driver records the files of the
successful attempts (``_batchscore_manifest.json``); the run's
*manifest* (:class:`StagedRun`: files, sizes, rows and a content digest) binds validation and
publication to exactly those bytes. One ``create_write_transaction(mode="overwrite")`` then swaps
the whole table to those files in a single commit.

Commits are **compare-and-set on the table version**: the transaction is built on the snapshot
the publisher read under its lock (``expected``) with ``max_commit_retries=0``, so if anyone
committed since (a publisher that lost its lock, a racing retry) delta-rs refuses it. delta-rs
does not enforce app-transaction ids by itself (a second commit with the same id succeeds); the
CAS is what makes "commit once" true. Each commit carries the publication record
(``batchscore.publication``, JSON) and the app transaction ``(batchscore/<model>/<run_id>, 1)``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from batchscore import storage as st
from batchscore.errors import PublishRefusedError
from batchscore.storage import DEFAULT, Storage

MANIFEST = "_batchscore_manifest.json"  # the files a score's successful task attempts wrote


@dataclass(frozen=True)
class StagedRun:
    """A staged run's manifest: its files (relative to the table), sizes, rows and digest."""

    run_path: str  # URI of the run's folder
    relative_files: list[str]
    sizes: list[int]
    rows: list[int]
    schema: Any  # pyarrow.Schema
    digest: str  # sha256 over every file's name, size and bytes
    table: str = ""  # URI of the table root the files are relative to
    stats: list[str] = field(default_factory=list)  # Delta ``stats`` JSON per file (min, max, nullCount)

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def uris(self) -> list[str]:
        return [st.join(self.table, rel) for rel in self.relative_files]


def content_digest(root: str, relative_files: list[str], storage: Storage = DEFAULT) -> str:
    """sha256 over (relative name, size, sha256 of the bytes) of each file, in name order: the
    identity of a staged run's content (the same files committed to Delta hash the same). Reads
    the bytes through the store (an object store: one GET per file)."""
    return _digest({rel: (st.size(st.join(root, rel), storage), st.sha256(st.join(root, rel), storage))
                    for rel in relative_files})


def _digest(files: dict[str, tuple[int, str]]) -> str:
    """sha256 over ``relative name -> (size, sha256 of the bytes)``, in name order."""
    import hashlib

    outer = hashlib.sha256()
    for rel in sorted(files):
        size, sha = files[rel]
        outer.update(f"{rel}\0{size}\0{sha}\n".encode())
    return outer.hexdigest()


def app_id(model: str, run_id: str) -> str:
    return f"batchscore/{model}/{run_id}"


def run_uri(table_path: str, run_id: str) -> str:
    return st.join(table_path, "runs", run_id)


def stage(table_path: str, run_id: str, storage: Storage = DEFAULT, *, writers_hashes: bool = False) -> StagedRun:
    """A run's staged files (its manifest when the score step wrote one: exactly the files of the
    successful task attempts) and their footers (row counts, schema, statistics): no data read
    except for the digest. ``writers_hashes``: take each file's sha256 from the manifest (what its
    task hashed while writing it: the score step, right after) instead of reading the bytes back;
    validate and publish always read them, so what they judge and commit is what is there."""
    return stage_dir(table_path, run_uri(table_path, run_id), storage, writers_hashes=writers_hashes,
                     missing=f"no staged Parquet for run {run_id}; run `batchscore score` first")


def write_manifest(run_path: str, files: dict[str, str], storage: Storage = DEFAULT) -> None:
    """Record ``files`` (names inside ``run_path`` -> the sha256 their writers computed) as the
    run's content, then delete any other Parquet file there (a failed or speculative task
    attempt's): what is staged is what was reported by the attempts Spark kept."""
    keep = set(files)
    st.write_bytes(st.join(run_path, MANIFEST), json.dumps({"files": sorted(files), "sha256": files},
                                                           sort_keys=True).encode(), storage)
    for uri, _ in st.list_files(run_path, storage, suffix=".parquet", recursive=False):
        if uri.rsplit("/", 1)[1] not in keep:
            st.delete_file(uri, storage)


def _listed(run_path: str, storage: Storage) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """``[(uri, size)]`` of the run's files and the writers' sha256 by name (empty without a manifest)."""
    on_store = dict(st.list_files(run_path, storage, suffix=".parquet", recursive=False))
    manifest = st.join(run_path, MANIFEST)
    if st.is_file(manifest, storage):
        doc = json.loads(st.read_bytes(manifest, storage))
        listed = []
        for n in doc["files"]:
            uri = st.join(run_path, n)
            listed.append((uri, on_store[uri] if uri in on_store else st.size(uri, storage)))
        return listed, dict(doc.get("sha256") or {})
    return [(u, n) for u, n in on_store.items() if u.rsplit("/", 1)[1].startswith("part-")], {}


def stage_dir(table_path: str, run_path: str, storage: Storage = DEFAULT, *, missing: str,
              writers_hashes: bool = False) -> StagedRun:
    """The staged Parquet files under ``run_path`` (paths relative to the table), from their
    footers only; ``missing``: the error (with what to do) when there are none."""
    files, hashes = _listed(run_path, storage)
    if not files:
        raise PublishRefusedError(f"{missing} (nothing under {run_path})")
    rows, sizes, rel, stats = [], [], [], []
    schema = None
    for uri, n in files:
        md = st.parquet_file(uri, storage).metadata
        rows.append(md.num_rows)
        sizes.append(n)
        rel.append(st.relative(table_path, uri))
        stats.append(file_stats(md))
        schema = schema or md.schema.to_arrow_schema()
    known = {st.relative(table_path, st.join(run_path, n)): h for n, h in hashes.items()}
    digest = (_digest({r: (s, known[r]) for r, s in zip(rel, sizes, strict=True)})
              if writers_hashes and all(r in known for r in rel) else content_digest(table_path, rel, storage))
    return StagedRun(
        st.normalize(run_path), rel, sizes, rows, schema, digest, table=st.normalize(table_path), stats=stats
    )


def _stat_value(v: Any) -> Any:
    import datetime as dt

    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[
            :-3
        ] + "Z"
    if isinstance(v, bytes):
        return None
    if isinstance(v, float) and math.isnan(v):  # not a usable bound
        return None
    return v


def file_stats(md: Any) -> str:
    """Delta per-file statistics (``numRecords``, ``minValues``, ``maxValues``, ``nullCount`` of
    every top-level column) from a Parquet footer, so engines can skip files."""
    schema = md.schema.to_arrow_schema()
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for j, name in enumerate(schema.names):
        lo = hi = None
        n_null, complete = 0, True
        for g in range(md.num_row_groups):
            s = md.row_group(g).column(j).statistics
            if s is None or not s.has_min_max:
                complete = complete and (s is not None and s.null_count == md.row_group(g).num_rows)
                n_null += s.null_count if s is not None and s.has_null_count else 0
                continue
            n_null += s.null_count if s.has_null_count else 0
            lo = s.min if lo is None or s.min < lo else lo
            hi = s.max if hi is None or s.max > hi else hi
        nulls[name] = n_null
        if complete and lo is not None and _stat_value(lo) is not None and _stat_value(hi) is not None:
            mins[name], maxs[name] = _stat_value(lo), _stat_value(hi)
    return json.dumps(
        {"numRecords": md.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}, default=str
    )


def add_actions(
    staged: StagedRun, storage: Storage = DEFAULT, *, partition: dict[str, str | None] | None = None
) -> list[Any]:
    """The AddActions that commit ``staged``, each with its statistics; the sizes are checked
    against the store right before (delta-rs does not validate paths or sizes)."""
    from deltalake.transaction import AddAction

    now_ms = int(time.time() * 1000)
    out = []
    for i, (rel, size, n) in enumerate(zip(staged.relative_files, staged.sizes, staged.rows, strict=True)):
        uri = st.join(staged.table, rel)
        if st.size(uri, storage) != size:
            raise PublishRefusedError(f"{uri}: staged file changed size since staging; rerun the score step")
        stats = staged.stats[i] if i < len(staged.stats) else json.dumps({"numRecords": n})
        out.append(AddAction(rel, size, dict(partition or {}), now_ms, True, stats))
    return out


def _dt(table_path: str, storage: Storage, **kw: Any) -> Any:
    from deltalake import DeltaTable

    with st.guard(table_path, "open the Delta table", storage):
        return DeltaTable(table_path, storage_options=storage.options(table_path) or None, **kw)


def is_table(table_path: str, storage: Storage = DEFAULT) -> bool:
    from deltalake import DeltaTable

    with st.guard(table_path, "open the Delta table", storage):
        return bool(DeltaTable.is_deltatable(table_path, storage_options=storage.options(table_path) or None))


def null_count(staged: StagedRun, column: str, storage: Storage = DEFAULT) -> int:
    """Nulls in ``column`` of a staged run, from the Parquet footers' statistics (no data read;
    a row group without statistics is read)."""
    total = 0
    for uri in staged.uris():
        f = st.parquet_file(uri, storage)
        idx = f.schema_arrow.get_field_index(column)
        for g in range(f.metadata.num_row_groups):
            stats = f.metadata.row_group(g).column(idx).statistics
            if stats is not None and stats.has_null_count:
                total += stats.null_count
            else:
                total += f.read_row_group(g, columns=[column]).column(0).null_count
    return total


def duplicate_keys(
    paths: list[str], column: str, *, sample: int = 3, storage: Storage = DEFAULT
) -> tuple[int, list[Any]]:
    """(how many rows repeat a key, a few repeated keys) over the Parquet files ``paths``: one read
    of the key column, run only when a load came up short."""
    import numpy as np
    import pyarrow as pa

    keys = pa.concat_arrays(
        [c for p in paths for c in st.parquet_file(p, storage).read(columns=[column]).column(0).chunks]
    )
    values, counts = np.unique(keys.to_numpy(zero_copy_only=False), return_counts=True)
    repeated = values[counts > 1]
    return int((counts[counts > 1] - 1).sum()), [v.item() if hasattr(v, "item") else v for v in repeated[:sample]]


def table_version(table_path: str, storage: Storage = DEFAULT) -> int | None:
    """The table's current version, or None when there is no Delta table yet."""
    return _dt(table_path, storage).version() if is_table(table_path, storage) else None


def committed_version(table_path: str, model: str, run_id: str, storage: Storage = DEFAULT) -> int | None:
    """The Delta version that committed ``run_id``, or None if it is not committed."""
    if not is_table(table_path, storage):
        return None
    dt = _dt(table_path, storage)
    if dt.transaction_version(app_id(model, run_id)) is None:
        return None
    for entry in dt.history():
        if entry.get("batchscore.run_id") == run_id and not entry.get("batchscore.rollback_to"):
            return int(entry["version"])
    raise PublishRefusedError(f"{table_path}: run {run_id} is committed but its commit was not found in the history")


def publications(table_path: str, storage: Storage = DEFAULT) -> list[dict[str, Any]]:
    """The publication records in the table's log, newest first, each with its ``delta_version``
    (commits without one, e.g. a vacuum, are skipped)."""
    out = []
    for h in history(table_path, storage):
        raw = h.get("batchscore.publication")
        if raw:
            out.append({**json.loads(raw), "delta_version": int(h["version"])})
    return out


class CommitConflict(Exception):
    """The table moved past the expected version: someone else committed first."""


def commit_files(
    table_path: str,
    staged: StagedRun,
    *,
    app: tuple[str, int],
    metadata: dict[str, str],
    dt: Any = None,
    partition: dict[str, str] | None = None,
    schema: Any = None,
    storage: Storage = DEFAULT,
) -> None:
    """The one Delta file commit (the published table's and the history table's): ``staged``'s
    files, each with its statistics, become the whole content of the table (of ``partition``,
    when given) in one commit carrying the app transaction ``app`` = (id, version) and
    ``metadata`` (keys prefixed ``batchscore.``). On top of the snapshot ``dt``; with ``dt`` None
    the table is created (``mode="error"``: it must not exist). ``max_commit_retries=0``: a racing
    commit makes this one fail (delta-rs's ``CommitFailedError`` reaches the caller), so two
    attempts' files are never both committed."""
    from deltalake import Schema, Transaction
    from deltalake.transaction import CommitProperties, create_table_with_add_actions

    actions = add_actions(staged, storage, partition=dict(partition) if partition else None)
    props = CommitProperties(
        custom_metadata={f"batchscore.{k}": v for k, v in metadata.items()},
        app_transactions=[Transaction(app_id=app[0], version=app[1])],
        max_commit_retries=0,
    )
    delta_schema = Schema.from_arrow(schema if schema is not None else staged.schema)
    by: dict[str, Any] = {"partition_by": list(partition)} if partition else {}
    if dt is not None:
        where = {"partition_filters": [(k, "=", v) for k, v in partition.items()]} if partition else {}
        dt.create_write_transaction(actions, "overwrite", delta_schema, commit_properties=props, **by, **where)
    else:
        create_table_with_add_actions(table_path, delta_schema, actions, mode="error", commit_properties=props,
                                      storage_options=storage.options(table_path) or None, **by)


def _cas(expected: int | None, table_path: str, action: str, storage: Storage) -> Any:
    """The snapshot a commit builds on: exactly version ``expected`` (None: no table yet)."""
    if expected is None:
        if is_table(table_path, storage):
            raise CommitConflict(f"{table_path}: a table appeared while this publication ran; not {action}")
        return None
    return _dt(table_path, storage, version=expected)


def commit(
    table_path: str,
    staged: StagedRun,
    *,
    model: str,
    run_id: str,
    metadata: dict[str, str],
    expected: int | None = None,
    check: Any = None,
    storage: Storage = DEFAULT,
) -> int:
    """Make ``staged`` the table's content in one commit on top of version ``expected`` (refused
    with :class:`CommitConflict` when the table moved since); ``check()`` runs right before the
    commit (the fencing-token check). On object stores delta-rs writes the log entry with a
    conditional PUT (create-if-absent), never a rename: a racing commit of the same version loses.
    Returns the new version."""
    from deltalake.exceptions import CommitFailedError

    dt = _cas(expected, table_path, "committing", storage)
    if check is not None:
        check()
    with st.guard(table_path, "commit to the Delta table", storage):  # CommitConflict passes through
        try:
            commit_files(table_path, staged, app=(app_id(model, run_id), 1), metadata={**metadata, "run_id": run_id},
                         dt=dt, storage=storage)
        except CommitFailedError as exc:
            raise CommitConflict(
                f"{table_path}: version {0 if expected is None else expected + 1} was committed by "
                "someone else while this publication ran"
            ) from exc
        except Exception as exc:  # delta-rs reports "table already exists" for mode="error" generically
            if expected is None and is_table(table_path, storage):
                raise CommitConflict(f"{table_path}: another publisher created the table first") from exc
            raise
    return (expected + 1) if expected is not None else 0


def history(table_path: str, storage: Storage = DEFAULT) -> list[dict[str, Any]]:
    """The table's commits, newest first (custom metadata appears as ``batchscore.*`` keys)."""
    return _dt(table_path, storage).history() if is_table(table_path, storage) else []


def commit_info(table_path: str, version: int, storage: Storage = DEFAULT) -> dict[str, Any] | None:
    """The history entry of one version, or None when the table has no such version."""
    return next((h for h in history(table_path, storage) if int(h.get("version", -1)) == version), None)


def files_at(table_path: str, version: int, storage: Storage = DEFAULT) -> list[str]:
    """URIs (absolute paths when local) of the data files of ``version`` (to reload Redis from it)."""
    return [st.normalize(u) for u in _dt(table_path, storage, version=version).file_uris()]


def manifest_at(table_path: str, version: int, storage: Storage = DEFAULT) -> StagedRun:
    """The manifest of the files Delta ``version`` holds (the same digest as the staged run that
    committed them)."""
    import pyarrow as pa

    dt = _dt(table_path, storage, version=version)
    root = st.normalize(dt.table_uri)
    acts = pa.table(dt.get_add_actions(flatten=False)).select(["path", "size_bytes"]).to_pylist()
    rel = sorted(a["path"] for a in acts)
    sizes = {a["path"]: int(a["size_bytes"]) for a in acts}
    mds = [st.parquet_file(st.join(root, r), storage).metadata for r in rel]
    schema = mds[0].schema.to_arrow_schema() if mds else None
    return StagedRun(
        root,
        rel,
        [sizes[r] for r in rel],
        [m.num_rows for m in mds],
        schema,
        content_digest(root, rel, storage),
        table=root,
        stats=[file_stats(m) for m in mds],
    )


def restore(
    table_path: str,
    version: int,
    *,
    metadata: dict[str, str],
    expected: int,
    check: Any = None,
    storage: Storage = DEFAULT,
) -> int:
    """Restore the table to ``version`` in one new commit on top of ``expected`` (compare-and-set,
    as :func:`commit`), carrying ``metadata``; return the new version.

    The restore commit repeats the restored commit's ``batchscore.*`` metadata (so the validation
    reference stays that version's profile) and adds ``batchscore.rollback_to``.
    """
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties

    source = commit_info(table_path, version, storage) or {}
    carried = {k: v for k, v in source.items() if k.startswith("batchscore.") and k != "batchscore.rollback_to"}
    custom = {**carried, **{f"batchscore.{k}": v for k, v in metadata.items()}, "batchscore.rollback_to": str(version)}
    dt = _cas(expected, table_path, "restoring", storage)
    if check is not None:
        check()
    with st.guard(table_path, "restore the Delta table", storage):  # CommitConflict passes through
        try:
            dt.restore(version, commit_properties=CommitProperties(custom_metadata=custom, max_commit_retries=0))
        except CommitFailedError as exc:
            raise CommitConflict(
                f"{table_path}: version {expected + 1} was committed by someone else during the rollback"
            ) from exc
    return expected + 1
