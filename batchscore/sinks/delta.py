"""Committing Spark-written Parquet as one Delta version with ``deltalake`` (delta-rs).

Spark writes a run's Parquet under ``<table>/runs/<run_id>/``, invisible to Delta readers; its
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchscore.errors import PublishRefusedError


@dataclass(frozen=True)
class StagedRun:
    """A staged run's manifest: its files (relative to the table), sizes, rows and digest."""

    run_path: str
    relative_files: list[str]
    sizes: list[int]
    rows: list[int]
    schema: Any  # pyarrow.Schema
    digest: str  # sha256 over every file's name, size and bytes

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


def content_digest(root: str, relative_files: list[str]) -> str:
    """sha256 over (relative name, size, sha256 of the bytes) of each file, in name order: the
    identity of a staged run's content (the same files committed to Delta hash the same)."""
    import hashlib

    outer = hashlib.sha256()
    for rel in sorted(relative_files):
        inner = hashlib.sha256()
        path = Path(root) / rel
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                inner.update(chunk)
        outer.update(f"{rel}\0{path.stat().st_size}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def app_id(model: str, run_id: str) -> str:
    return f"batchscore/{model}/{run_id}"


def stage(table_path: str, run_id: str) -> StagedRun:
    """List a run's Parquet files and read their footers (row counts, schema): no data is read."""
    return stage_dir(table_path, Path(table_path) / "runs" / run_id,
                     missing=f"no staged Parquet for run {run_id}; run `batchscore score` first")


def stage_dir(table_path: str, run_path: Path, *, missing: str) -> StagedRun:
    """The ``part-*.parquet`` files under ``run_path`` (paths relative to the table), from their
    footers only; ``missing``: the error (with what to do) when there are none."""
    import pyarrow.parquet as pq

    files = sorted(run_path.glob("part-*.parquet"))
    if not files:
        raise PublishRefusedError(f"{missing} (nothing under {run_path})")
    rows, sizes, rel = [], [], []
    schema = None
    for f in files:
        md = pq.read_metadata(f)
        rows.append(md.num_rows)
        sizes.append(f.stat().st_size)
        rel.append(f.relative_to(table_path).as_posix())
        schema = schema or md.schema.to_arrow_schema()
    return StagedRun(str(run_path), rel, sizes, rows, schema, content_digest(table_path, rel))


def null_count(staged: StagedRun, column: str) -> int:
    """Nulls in ``column`` of a staged run, from the Parquet footers' statistics (no data read;
    a row group without statistics is read)."""
    import pyarrow.parquet as pq

    total = 0
    for rel in staged.relative_files:
        f = pq.ParquetFile(Path(staged.run_path).parent.parent / rel)
        idx = f.schema_arrow.get_field_index(column)
        for g in range(f.metadata.num_row_groups):
            stats = f.metadata.row_group(g).column(idx).statistics
            if stats is not None and stats.has_null_count:
                total += stats.null_count
            else:
                total += f.read_row_group(g, columns=[column]).column(0).null_count
    return total


def duplicate_keys(paths: list[str], column: str, *, sample: int = 3) -> tuple[int, list[Any]]:
    """(how many rows repeat a key, a few repeated keys) over the Parquet files ``paths``: one read
    of the key column, run only when a load came up short."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = pa.concat_arrays([c for p in paths for c in pq.read_table(p, columns=[column]).column(0).chunks])
    values, counts = np.unique(keys.to_numpy(zero_copy_only=False), return_counts=True)
    repeated = values[counts > 1]
    return int((counts[counts > 1] - 1).sum()), [v.item() if hasattr(v, "item") else v for v in repeated[:sample]]


def table_version(table_path: str) -> int | None:
    """The table's current version, or None when there is no Delta table yet."""
    from deltalake import DeltaTable

    return DeltaTable(table_path).version() if DeltaTable.is_deltatable(table_path) else None


def committed_version(table_path: str, model: str, run_id: str) -> int | None:
    """The Delta version that committed ``run_id``, or None if it is not committed."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(table_path):
        return None
    dt = DeltaTable(table_path)
    if dt.transaction_version(app_id(model, run_id)) is None:
        return None
    for entry in dt.history():
        if entry.get("batchscore.run_id") == run_id and not entry.get("batchscore.rollback_to"):
            return int(entry["version"])
    raise PublishRefusedError(f"{table_path}: run {run_id} is committed but its commit was not found in the history")


def publications(table_path: str) -> list[dict[str, Any]]:
    """The publication records in the table's log, newest first, each with its ``delta_version``
    (commits without one, e.g. a vacuum, are skipped)."""
    out = []
    for h in history(table_path):
        raw = h.get("batchscore.publication")
        if raw:
            out.append({**json.loads(raw), "delta_version": int(h["version"])})
    return out


class CommitConflict(Exception):
    """The table moved past the expected version: someone else committed first."""


def _cas(expected: int | None, table_path: str, action: str) -> Any:
    """The snapshot a commit builds on: exactly version ``expected`` (None: no table yet)."""
    from deltalake import DeltaTable

    if expected is None:
        if DeltaTable.is_deltatable(table_path):
            raise CommitConflict(f"{table_path}: a table appeared while this publication ran; not {action}")
        return None
    return DeltaTable(table_path, version=expected)


def commit(table_path: str, staged: StagedRun, *, model: str, run_id: str, metadata: dict[str, str],
           expected: int | None = None, check: Any = None) -> int:
    """Make ``staged`` the table's content in one commit on top of version ``expected`` (refused
    with :class:`CommitConflict` when the table moved since); ``check()`` runs right before the
    commit (the fencing-token check). Returns the new version."""
    from deltalake import DeltaTable, Schema, Transaction
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

    now_ms = int(time.time() * 1000)
    actions = []
    for rel, size, n in zip(staged.relative_files, staged.sizes, staged.rows, strict=True):
        # Stat right before commit: delta-rs does not validate paths or sizes.
        real = Path(table_path) / rel
        if real.stat().st_size != size:
            raise PublishRefusedError(f"{real}: staged file changed size since staging; rerun the score step")
        actions.append(AddAction(rel, size, {}, now_ms, True, json.dumps({"numRecords": n})))
    props = CommitProperties(
        custom_metadata={f"batchscore.{k}": v for k, v in {**metadata, "run_id": run_id}.items()},
        app_transactions=[Transaction(app_id=app_id(model, run_id), version=1)], max_commit_retries=0,
    )
    schema = Schema.from_arrow(staged.schema)
    dt = _cas(expected, table_path, "committing")
    if check is not None:
        check()
    try:
        if dt is not None:
            dt.create_write_transaction(actions, "overwrite", schema, commit_properties=props)
        else:
            create_table_with_add_actions(table_path, schema, actions, mode="error", commit_properties=props)
    except CommitFailedError as exc:
        raise CommitConflict(f"{table_path}: version {0 if expected is None else expected + 1} was committed by "
                             "someone else while this publication ran") from exc
    except Exception as exc:  # delta-rs reports "table already exists" for mode="error" as a generic error
        if expected is None and DeltaTable.is_deltatable(table_path):
            raise CommitConflict(f"{table_path}: another publisher created the table first") from exc
        raise
    return (expected + 1) if expected is not None else 0


def history(table_path: str) -> list[dict[str, Any]]:
    """The table's commits, newest first (custom metadata appears as ``batchscore.*`` keys)."""
    from deltalake import DeltaTable

    return DeltaTable(table_path).history() if DeltaTable.is_deltatable(table_path) else []


def commit_info(table_path: str, version: int) -> dict[str, Any] | None:
    """The history entry of one version, or None when the table has no such version."""
    return next((h for h in history(table_path) if int(h.get("version", -1)) == version), None)


def files_at(table_path: str, version: int) -> list[str]:
    """Absolute paths of the data files of ``version`` (to reload Redis from it)."""
    from deltalake import DeltaTable

    return [u.removeprefix("file://") for u in DeltaTable(table_path, version=version).file_uris()]


def manifest_at(table_path: str, version: int) -> StagedRun:
    """The manifest of the files Delta ``version`` holds (the same digest as the staged run that
    committed them)."""
    import pyarrow.parquet as pq

    root = Path(table_path).resolve()
    files = sorted(Path(f).resolve() for f in files_at(table_path, version))
    rel = [f.relative_to(root).as_posix() for f in files]
    mds = [pq.read_metadata(f) for f in files]
    schema = mds[0].schema.to_arrow_schema() if mds else None
    return StagedRun(str(root), rel, [f.stat().st_size for f in files], [m.num_rows for m in mds], schema,
                     content_digest(str(root), rel))


def restore(table_path: str, version: int, *, metadata: dict[str, str], expected: int, check: Any = None) -> int:
    """Restore the table to ``version`` in one new commit on top of ``expected`` (compare-and-set,
    as :func:`commit`), carrying ``metadata``; return the new version.

    The restore commit repeats the restored commit's ``batchscore.*`` metadata (so the validation
    reference stays that version's profile) and adds ``batchscore.rollback_to``.
    """
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties

    source = commit_info(table_path, version) or {}
    carried = {k: v for k, v in source.items() if k.startswith("batchscore.") and k != "batchscore.rollback_to"}
    custom = {**carried, **{f"batchscore.{k}": v for k, v in metadata.items()}, "batchscore.rollback_to": str(version)}
    dt = _cas(expected, table_path, "restoring")
    if check is not None:
        check()
    try:
        dt.restore(version, commit_properties=CommitProperties(custom_metadata=custom, max_commit_retries=0))
    except CommitFailedError as exc:
        raise CommitConflict(f"{table_path}: version {expected + 1} was committed by someone else during the "
                             "rollback") from exc
    return expected + 1
