"""The quarantine Delta table: the rows a run left out (``input.on_invalid: quarantine``).

One partition per run (``run_id=<id>``), holding the key (as text), the reason
(:data:`batchscore.udfs.quarantine.REASONS`), the column at fault, a detail and the row's values
as JSON, plus ``model_version`` and ``scored_at``. The scoring tasks write their rejects as Parquet
under ``<table>/run_id=<id>/<attempt>/`` (invisible until committed); the score step then makes
exactly the files of the task attempts Spark kept the whole content of that run's partition in
one commit carrying the app transaction ``(batchscore-quarantine/<model>/<run id>, n)``. Scoring
a run id again replaces its partition, so a retried run never doubles its rows; a run with no
bad rows leaves its partition empty (and commits nothing while the table does not exist yet).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from batchscore import storage as st
from batchscore.errors import InfrastructureError
from batchscore.sinks.delta import StagedRun, _dt, commit_files, is_table, stage_dir, write_manifest
from batchscore.storage import DEFAULT, Storage

__all__ = ["PARTITION", "attempt_path", "commit_run", "new_attempt", "reason_counts", "table_path"]

PARTITION = "run_id"


def table_path(delta_path: str, configured: str | None) -> str:
    """``outputs.quarantine.path``, else ``<outputs.delta.path>_quarantine``."""
    return configured or f"{delta_path.rstrip('/')}_quarantine"


def new_attempt() -> str:
    return uuid.uuid4().hex[:16]


def attempt_path(table: str, run_id: str, attempt: str) -> str:
    return st.join(table, f"{PARTITION}={run_id}", attempt)


def _app_id(model: str, run_id: str) -> str:
    return f"batchscore-quarantine/{model}/{run_id}"


def reason_counts(staged: StagedRun | None, storage: Storage = DEFAULT) -> dict[str, int]:
    """Rows per reason in the staged rejects (one read of the ``reason`` column)."""
    if staged is None:
        return {}
    counts: Counter[str] = Counter()
    for uri in staged.uris():
        for reason in st.parquet_file(uri, storage).read(columns=["reason"]).column(0).to_pylist():
            counts[str(reason)] += 1
    return dict(sorted(counts.items()))


def stage(table: str, run_id: str, attempt: str, files: dict[str, str], storage: Storage = DEFAULT) -> StagedRun | None:
    """Record the kept attempts' reject files (deleting the others); None when there are none."""
    path = attempt_path(table, run_id, attempt)
    if not files:
        st.delete_dir(path, storage)
        return None
    write_manifest(path, files, storage)
    return stage_dir(table, path, storage, missing=f"no quarantine files for run {run_id}")


def commit_run(table: str, staged: StagedRun | None, *, model: str, run_id: str, model_version: str,
               storage: Storage = DEFAULT) -> int | None:
    """Make ``staged`` the whole of partition ``run_id=<run_id>`` in one commit (an empty partition
    when ``staged`` is None and the table exists); the new table version, or None (no table, nothing to add)."""
    import pyarrow as pa
    from deltalake.exceptions import CommitFailedError

    exists = is_table(table, storage)
    if staged is None and not exists:
        return None
    dt = _dt(table, storage) if exists else None
    txn = 0 if dt is None else int(dt.transaction_version(_app_id(model, run_id)) or 0) + 1
    empty = StagedRun(run_path="", relative_files=[], sizes=[], rows=[], schema=None, digest="", table=table)
    if staged is not None:
        schema: Any = pa.schema([*staged.schema, pa.field(PARTITION, pa.string())])
    else:
        assert dt is not None
        schema = dt.schema().to_arrow()
    with st.guard(table, "commit to the quarantine table", storage):
        try:
            commit_files(table, staged or empty, app=(_app_id(model, run_id), txn),
                         metadata={"run_id": run_id, "model_version": model_version}, dt=dt,
                         partition={PARTITION: run_id}, schema=schema, storage=storage)
        except CommitFailedError as exc:
            raise InfrastructureError(f"{table}: another commit landed while run {run_id}'s quarantined rows were "
                                      "committed; rerun `batchscore score` for that run") from exc
    return int(_dt(table, storage).version())
