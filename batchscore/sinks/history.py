"""The date-partitioned Delta history table that backfills write, one partition per ``run_date``.

The scoring tasks write a date's Parquet (without the partition column) under
``<table>/run_date=<d>/<attempt>/``. One delta-rs ``create_write_transaction(mode="overwrite")``
with ``partition_filters=[("run_date", "=", d)]`` then replaces that date's partition, and only it,
in a single commit carrying the app transaction ``(batchscore-backfill/<model>/<d>, n)``: the
recorded transaction is what makes a rerun of a backfilled date a no-op. Files of replaced
attempts stay on disk until a Delta ``vacuum``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchscore.errors import InfrastructureError, PublishRefusedError
from batchscore.sinks.delta import StagedRun, _dt, commit_files, is_table, stage_dir
from batchscore.storage import DEFAULT, Storage, guard, join

PARTITION = "run_date"


def app_id(model: str, day: str) -> str:
    return f"batchscore-backfill/{model}/{day}"


def attempt_path(table_path: str, day: str, attempt: str) -> str:
    """Where the tasks write one attempt at a date (invisible to Delta readers until committed)."""
    return join(table_path, f"{PARTITION}={day}", attempt)


def date_version(table_path: str, model: str, day: str, storage: Storage = DEFAULT) -> int | None:
    """The app-transaction version recorded for ``day`` (how often it was committed), or None."""
    if not is_table(table_path, storage):
        return None
    version = _dt(table_path, storage).transaction_version(app_id(model, day))
    return None if version is None else int(version)


def table_version(table_path: str, storage: Storage = DEFAULT) -> int | None:
    return _dt(table_path, storage).version() if is_table(table_path, storage) else None


def stage(table_path: str, day: str, attempt: str, storage: Storage = DEFAULT) -> StagedRun:
    """An attempt's Parquet files (its manifest) and their footers (row counts, schema, statistics)."""
    return stage_dir(table_path, attempt_path(table_path, day, attempt), storage,
                     missing=f"no Parquet written for {day}; rerun the backfill for that date")


def _table_schema(staged: StagedRun) -> Any:
    import pyarrow as pa

    fields = [f for f in staged.schema if f.name != PARTITION]
    return pa.schema([*fields, pa.field(PARTITION, pa.string())])


def _check_columns(table_path: str, want: Any, storage: Storage) -> None:
    """Refuse a commit whose columns differ from the table's (e.g. the model's outputs changed)."""
    have = [f.name for f in _dt(table_path, storage).schema().fields]
    if have != want.names:
        raise PublishRefusedError(
            f"history table {table_path} has columns {have} but this backfill writes {want.names}; "
            "set outputs.history.path to a new table for the new layout"
        )


@contextmanager
def _conflict(table_path: str, day: str, failed: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except failed as exc:
        raise InfrastructureError(f"{table_path}: another commit landed while {day} was being committed; rerun the "
                                  "backfill for that date (it commits once)") from exc


def replace_partition(table_path: str, staged: StagedRun, *, model: str, day: str, txn_version: int,
                      metadata: dict[str, str], storage: Storage = DEFAULT) -> int:
    """Make ``staged`` the whole content of partition ``day`` in one commit; return the new version."""
    from deltalake.exceptions import CommitFailedError

    arrow_schema = _table_schema(staged)
    # a racing commit of the same date must fail, not leave both attempts' files (commit_files)
    with guard(table_path, "commit to the history table", storage), _conflict(table_path, day, CommitFailedError):
        dt = None
        if is_table(table_path, storage):
            _check_columns(table_path, arrow_schema, storage)
            dt = _dt(table_path, storage)
        commit_files(table_path, staged, app=(app_id(model, day), txn_version),
                     metadata={**metadata, PARTITION: day}, dt=dt, partition={PARTITION: day}, schema=arrow_schema,
                     storage=storage)
    return int(_dt(table_path, storage).version())
