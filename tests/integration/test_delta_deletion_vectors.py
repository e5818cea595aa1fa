"""A Delta input whose files carry deletion vectors: the scoring tasks skip the deleted rows, so
what is published (Delta and Redis) equals the model run on exactly the rows delta-rs's own reader
returns; incremental runs see the deleted keys as dropped. The vectors are written by
:mod:`batchscore.testing.delta_dv` (no Delta writer here produces them) and checked by delta-rs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable, QueryBuilder, WriterProperties, write_deltalake

from batchscore.config import load_model_config
from batchscore.errors import InputDataError
from batchscore.jobs import score as score_job
from batchscore.testing.delta_dv import delete_rows
from batchscore.testing.demo_data import write_onnx_mlp
from tests.integration.test_incremental import FEATS, WIDTH, Table, _check, _run

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _write_delta(table: Table, path: Path, *, partition_by: list[str] | None = None) -> None:
    """The table as a Delta table of two commits (two files, or one per partition value and
    commit), row groups of 700 rows."""
    keys = sorted(table.rows)
    x = np.stack([table.rows[k] for k in keys])
    arrow = pa.table({"user_id": pa.array(keys, pa.int64()), **{f: pa.array(x[:, j]) for j, f in enumerate(FEATS)}})
    props = WriterProperties(max_row_group_size=700)
    half = arrow.num_rows // 2
    write_deltalake(str(path), arrow.slice(0, half), writer_properties=props, partition_by=partition_by)
    write_deltalake(str(path), arrow.slice(half), mode="append", writer_properties=props)


def _delete(table: Table, path: Path, per_file: dict[int, list[int]] | None = None, *, storage_type: str = "u",
            seed: int = 0) -> int:
    """Delete rows of each data file (a seeded choice spanning its row groups, or ``per_file``: file
    index -> positions, some maybe deleted before) and drop their keys from ``table``; return how
    many rows went now."""
    dt = DeltaTable(str(path))
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {}
    before = len(table.rows)
    for i, uri in enumerate(sorted(dt.file_uris())):
        ids = pq.read_table(uri.removeprefix("file://"), columns=["user_id"])["user_id"].to_pylist()
        pos = (per_file or {}).get(i) if per_file is not None else sorted(
            rng.choice(len(ids), size=len(ids) // 20, replace=False).tolist())
        if not pos:
            continue
        chosen[uri] = pos
        for p in pos:
            table.rows.pop(ids[p], None)
    delete_rows(str(path), chosen, storage_type=storage_type)
    kept = QueryBuilder().register("t", DeltaTable(str(path))).execute("select user_id from t").read_all()
    assert sorted(kept["user_id"].to_pylist()) == sorted(table.rows)  # delta-rs applies them the same way
    return before - len(table.rows)


def _config(tmp: Path, delta_input: Path, model: Path, *, incremental: bool, read: str = "files") -> Path:
    cfg = {
        "name": "inc",
        "model": {"uri": str(model), "format": "onnx", "version": "v1"},
        "input": {"path": str(delta_input), "format": "delta", "key": "user_id", "features": FEATS, "read": read},
        "outputs": {"delta": {"path": str(tmp / "pred")}, "redis": {"key_prefix": "inc", "gc_grace_seconds": 0}},
        "scoring": {"batch_size": 300, "device": "cpu", "incremental": incremental},
        "validation": {"drift": {"enabled": False}, "row_count": {"tolerance": 1.0}},
        "runtime": {"report_dir": str(tmp / "runs")},
    }
    path = tmp / "inc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("incremental", [False, True])
def test_rows_deleted_by_deletion_vectors_are_never_scored_or_published(
        spark: Any, redis_url: str, tmp_path: Path, incremental: bool) -> None:
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=31)
    table = Table(5000, seed=3)
    src = tmp_path / "features"
    _write_delta(table, src)
    cfg_path = _config(tmp_path, src, model, incremental=incremental)
    first = _run(spark, cfg_path, redis_url, "d0")
    assert first.input_deleted_rows == 0 and first.input_rows == 5000
    _check(spark, cfg_path, model, table, redis_url)

    gone = _delete(table, src, seed=1)  # ~5 % of each file, across its row groups
    rep = _run(spark, cfg_path, redis_url, "d1")
    assert rep.input_delta_version == 2 and rep.input_deleted_rows == gone
    assert rep.input_rows == rep.staged_rows == 5000 - gone
    if incremental:
        assert rep.scoring_mode == "incremental" and rep.rows_dropped == gone and rep.rows_rescored == 0
    _check(spark, cfg_path, model, table, redis_url)  # Delta and Redis: the model's scores of the kept rows only

    # A second delete on the same file (the vectors are merged), inline this time; the first and
    # last row of a file and a whole row group (positions 700..1399) among them.
    more = _delete(table, src, {0: [0, 2499, *range(700, 1400)]}, storage_type="i")
    rep = _run(spark, cfg_path, redis_url, "d2")
    assert rep.input_deleted_rows == gone + more and rep.staged_rows == 5000 - gone - more
    _check(spark, cfg_path, model, table, redis_url)


def test_a_feature_kept_as_a_partition_column_is_filled_in_by_the_tasks(
        spark: Any, redis_url: str, tmp_path: Path) -> None:
    """A feature the Delta table keeps as a partition value (not in its files): the tasks add it
    from the log's add actions, with deletion vectors applied and incremental runs reusing rows."""
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=33)
    table = Table(3000, seed=7)
    for k in table.rows:  # the last feature takes 3 values: one partition each
        table.rows[k][-1] = np.float32(k % 3 - 1.5)
    src = tmp_path / "features"
    _write_delta(table, src, partition_by=[FEATS[-1]])
    dt = DeltaTable(str(src))
    assert dt.metadata().partition_columns == [FEATS[-1]] and len(dt.file_uris()) == 6  # 3 values x 2 commits
    assert FEATS[-1] not in pq.read_schema(dt.file_uris()[0].removeprefix("file://")).names
    cfg_path = _config(tmp_path, src, model, incremental=True)
    first = _run(spark, cfg_path, redis_url, "p0")
    assert first.input_rows == first.staged_rows == 3000
    _check(spark, cfg_path, model, table, redis_url)  # Delta and Redis equal ONNX Runtime bit for bit

    gone = _delete(table, src, {0: [0, 5, 6], 2: list(range(10, 60))})
    rep = _run(spark, cfg_path, redis_url, "p1")
    assert rep.input_deleted_rows == gone == 53 and rep.scoring_mode == "incremental"
    assert rep.rows_dropped == gone and rep.rows_rescored == 0 and rep.rows_reused == 3000 - gone
    _check(spark, cfg_path, model, table, redis_url)


def test_spark_scan_of_a_table_with_deletion_vectors_is_refused(spark: Any, tmp_path: Path) -> None:
    """Spark's own Parquet scan would read the deleted rows: refused with the fix, nothing staged."""
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=32)
    table = Table(1000, seed=5)
    src = tmp_path / "features"
    _write_delta(table, src)
    _delete(table, src, {1: [3, 4, 5]})
    cfg = load_model_config(_config(tmp_path, src, model, incremental=False, read="spark"))
    with pytest.raises(InputDataError, match=r"1 file\(s\) carry deletion vectors.*use input.read: auto"):
        score_job.score(spark, cfg, run_id="s0", run_date="2026-12-02")
    assert not (tmp_path / "pred").exists()
