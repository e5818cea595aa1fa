"""The date-partitioned Delta history table that backfills write, one partition per ``run_date``.

Spark writes a date's Parquet (without the partition column) under
``<table>/run_date=<d>/<attempt>/``. One delta-rs ``create_write_transaction(mode="overwrite")``
with ``partition_filters=[("run_date", "=", d)]`` then replaces that date's partition, and only it,
in a single commit carrying the app transaction ``(batchscore-backfill/<model>/<d>, n)``: the
recorded transaction is what makes a rerun of a backfilled date a no-op. Files of replaced
attempts stay on disk until a Delta ``vacuum``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from batchscore.errors import PublishRefusedError
from batchscore.sinks.delta import StagedRun, stage_dir

PARTITION = "run_date"


def app_id(model: str, day: str) -> str:
    return f"batchscore-backfill/{model}/{day}"


def attempt_path(table_path: str, day: str, attempt: str) -> str:
    """Where Spark writes one attempt at a date (invisible to Delta readers until committed)."""
    return f"{table_path.rstrip('/')}/{PARTITION}={day}/{attempt}"


def date_version(table_path: str, model: str, day: str) -> int | None:
    """The app-transaction version recorded for ``day`` (how often it was committed), or None."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(table_path):
        return None
    return DeltaTable(table_path).transaction_version(app_id(model, day))


def table_version(table_path: str) -> int | None:
    from deltalake import DeltaTable

    return DeltaTable(table_path).version() if DeltaTable.is_deltatable(table_path) else None


def stage(table_path: str, day: str, attempt: str) -> StagedRun:
    """List an attempt's Parquet files and read their footers (row counts, schema): no data is read."""
    return stage_dir(table_path, Path(attempt_path(table_path, day, attempt)),
                     missing=f"no Parquet written for {day}; rerun the backfill for that date")


def _table_schema(staged: StagedRun) -> Any:
    import pyarrow as pa

    fields = [f for f in staged.schema if f.name != PARTITION]
    return pa.schema([*fields, pa.field(PARTITION, pa.string())])


def _check_columns(table_path: str, want: Any) -> None:
    """Refuse a commit whose columns differ from the table's (e.g. the model's outputs changed)."""
    from deltalake import DeltaTable

    have = [f.name for f in DeltaTable(table_path).schema().fields]
    if have != want.names:
        raise PublishRefusedError(
            f"history table {table_path} has columns {have} but this backfill writes {want.names}; "
            "set outputs.history.path to a new table for the new layout"
        )


def replace_partition(table_path: str, staged: StagedRun, *, model: str, day: str, txn_version: int,
                      metadata: dict[str, str]) -> int:
    """Make ``staged`` the whole content of partition ``day`` in one commit; return the new version."""
    from deltalake import DeltaTable, Schema, Transaction
    from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

    now_ms = int(time.time() * 1000)
    actions = []
    for rel, size, n in zip(staged.relative_files, staged.sizes, staged.rows, strict=True):
        if (Path(table_path) / rel).stat().st_size != size:  # delta-rs does not check paths or sizes
            raise PublishRefusedError(f"{table_path}/{rel}: file changed size since it was written; rerun the date")
        actions.append(AddAction(rel, size, {PARTITION: day}, now_ms, True, json.dumps({"numRecords": n})))
    props = CommitProperties(
        custom_metadata={f"batchscore.{k}": v for k, v in {**metadata, PARTITION: day}.items()},
        app_transactions=[Transaction(app_id=app_id(model, day), version=txn_version)],
        max_commit_retries=0,  # a racing commit of the same date must fail, not leave both attempts' files
    )
    arrow_schema = _table_schema(staged)
    schema = Schema.from_arrow(arrow_schema)
    if DeltaTable.is_deltatable(table_path):
        _check_columns(table_path, arrow_schema)
        DeltaTable(table_path).create_write_transaction(
            actions, "overwrite", schema, partition_by=[PARTITION],
            partition_filters=[(PARTITION, "=", day)], commit_properties=props,
        )
    else:
        create_table_with_add_actions(table_path, schema, actions, mode="error", partition_by=[PARTITION],
                                      commit_properties=props)
    return int(DeltaTable(table_path).version())
