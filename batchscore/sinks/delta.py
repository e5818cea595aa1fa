"""Committing Spark-written Parquet as one Delta version with ``deltalake`` (delta-rs).

Spark writes a run's Parquet under ``<table>/runs/<run_id>/``, invisible to Delta readers. One
``create_write_transaction(mode="overwrite")`` then swaps the whole table to those files in a
single commit that carries an app transaction ``(batchscore/<model>/<run_id>, 1)``, so a retried
publish of the same run never commits twice.
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
    run_path: str
    relative_files: list[str]
    sizes: list[int]
    rows: list[int]
    schema: Any  # pyarrow.Schema

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


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
    return StagedRun(str(run_path), rel, sizes, rows, schema)


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


def commit(table_path: str, staged: StagedRun, *, model: str, run_id: str, metadata: dict[str, str]) -> int:
    """Make ``staged`` the table's content in one commit; return the new version."""
    from deltalake import DeltaTable, Schema, Transaction
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
        app_transactions=[Transaction(app_id=app_id(model, run_id), version=1)],
    )
    schema = Schema.from_arrow(staged.schema)
    if DeltaTable.is_deltatable(table_path):
        dt = DeltaTable(table_path)
        dt.create_write_transaction(actions, "overwrite", schema, commit_properties=props)
        return int(DeltaTable(table_path).version())
    create_table_with_add_actions(table_path, schema, actions, mode="error", commit_properties=props)
    return int(DeltaTable(table_path).version())


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


def restore(table_path: str, version: int, *, metadata: dict[str, str]) -> int:
    """Restore the table to ``version`` in one new commit carrying ``metadata``; return the new version.

    The restore commit repeats the restored commit's ``batchscore.*`` metadata (so the validation
    reference stays that version's profile) and adds ``batchscore.rollback_to``.
    """
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties

    source = commit_info(table_path, version) or {}
    carried = {k: v for k, v in source.items() if k.startswith("batchscore.") and k != "batchscore.rollback_to"}
    custom = {**carried, **{f"batchscore.{k}": v for k, v in metadata.items()}, "batchscore.rollback_to": str(version)}
    DeltaTable(table_path).restore(version, commit_properties=CommitProperties(custom_metadata=custom))
    return int(DeltaTable(table_path).version())
