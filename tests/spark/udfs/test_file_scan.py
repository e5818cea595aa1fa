"""Scoring straight from the input's Parquet files (``input.read: auto|files``) on real local[2]
Spark: the same rows and bit-identical scores as Spark's scan path, equal to the model's own
outputs; fragments cover every row group once; partition columns and remote paths fall back or
are refused clearly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from batchscore.config import load_model_config
from batchscore.errors import InputDataError
from batchscore.jobs._inputs import direct_files, read_input
from batchscore.jobs.score import scored_frame
from batchscore.testing.demo_data import mlp_forward, mlp_weights
from batchscore.udfs._fragments import plan_fragments
from batchscore.udfs.model_ref import model_ref

pytestmark = pytest.mark.spark
LAYERS = (6, 16, 2)


def write_table(root: Path, *, files: int = 3, rows: int = 1500, row_group: int = 200, key: str = "str") -> np.ndarray:
    """``files`` Parquet files with small row groups; returns the whole feature matrix in key order."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(files):
        x = rng.normal(size=(rows, LAYERS[0])).astype(np.float32)
        ids = np.arange(i * rows, (i + 1) * rows)
        keys = pa.array([f"u{j:06d}" for j in ids]) if key == "str" else pa.array(ids.astype(np.int32))
        cols = {"user_id": keys, **{f"f{j}": pa.array(x[:, j]) for j in range(LAYERS[0])}}
        cols["f2"] = pa.array(x[:, 2].astype(np.float64))  # a double column: cast like Spark's path
        pq.write_table(pa.table(cols), root / f"part-{i}.parquet", row_group_size=row_group)
        parts.append(x)
    (root / "_SUCCESS").write_text("")  # ignored by both readers
    return np.concatenate(parts)


def config(tmp_path: Path, make_config: Any, table: Path, **input_over: Any) -> Any:
    path = make_config(layers=LAYERS, input={"path": str(table), "key": "user_id", **input_over})
    return load_model_config(path)


def staged(spark: Any, cfg: Any) -> Any:
    ref = model_ref(cfg.model_path, "onnx", "cpu", n_features=LAYERS[0])
    df = read_input(spark, cfg.input)
    out = scored_frame(df, cfg, ref, run_id="r", scored_at=datetime(2026, 11, 23, tzinfo=UTC))
    return out, out.toPandas().sort_values("user_id").reset_index(drop=True)


def test_direct_file_read_equals_spark_scan_and_the_model(spark: Any, tmp_path: Path, make_config: Any) -> None:
    table = tmp_path / "features"
    x = write_table(table)
    files_cfg = config(tmp_path, make_config, table)
    spark_cfg = files_cfg.model_copy(update={"input": files_cfg.input.model_copy(update={"read": "spark"})})
    assert direct_files(files_cfg.input) is not None and direct_files(spark_cfg.input) is None

    direct, got = staged(spark, files_cfg)
    via_spark, ref = staged(spark, spark_cfg)
    assert direct.schema == via_spark.schema
    assert direct.rdd.getNumPartitions() >= 2  # a small table still feeds both cores
    assert len(got) == len(x) and got["user_id"].is_unique
    np.testing.assert_array_equal(got["user_id"].to_numpy(), ref["user_id"].to_numpy())
    np.testing.assert_array_equal(got[["s0", "s1"]].to_numpy(), ref[["s0", "s1"]].to_numpy())  # bit-identical
    x64 = x.copy()
    x64[:, 2] = x[:, 2].astype(np.float64).astype(np.float32)
    np.testing.assert_allclose(got[["s0", "s1"]].to_numpy(), mlp_forward(mlp_weights(LAYERS), x64), atol=1e-5)



def test_fragments_cover_every_row_group_once(tmp_path: Path) -> None:
    table = tmp_path / "features"
    write_table(table, files=2, rows=1000, row_group=100)
    files = sorted(str(p) for p in table.glob("*.parquet"))
    for parallelism, min_bytes in ((1, 1), (4, 1), (64, 1), (2, 4 << 20)):
        frags = plan_fragments(files, parallelism=parallelism, min_bytes=min_bytes)
        seen = [(path, g) for f in frags for path, ids in f.parts for g in ids]
        assert seen == [(p, g) for p in files for g in range(10)]  # each once, in file order
        assert sum(f.rows for f in frags) == 2000
    assert len(plan_fragments(files, parallelism=4, min_bytes=1)) == 4
    assert len(plan_fragments(files, parallelism=2, min_bytes=4 << 20)) == 2  # small, but two files: both cores
    assert len(plan_fragments(files, parallelism=64, min_bytes=1)) == 20  # never below one row group
    assert len(plan_fragments(files[:1], parallelism=2, min_bytes=4 << 20)) == 1  # too small to split


def test_fragments_span_files_one_per_core_and_balanced(tmp_path: Path) -> None:
    table = tmp_path / "features"
    write_table(table, files=8, rows=1000, row_group=100)  # 80 row groups of about equal size
    files = sorted(str(p) for p in table.glob("*.parquet"))
    frags = plan_fragments(files, parallelism=2, min_bytes=1)
    assert [f.rows for f in frags] == [4000, 4000]  # one task per core, not one per file
    assert [len(f.parts) for f in frags] == [4, 4] and frags[0].parts[-1][0] != frags[1].parts[0][0]
    size = sum(pq.ParquetFile(p).metadata.row_group(0).total_byte_size for p in files)
    capped = plan_fragments(files, parallelism=2, min_bytes=1, max_bytes=size)  # 8 row groups' bytes each
    assert len(capped) >= 10 and all(f.rows <= 1100 for f in capped)


def test_int_keys_and_delta_input_read_directly(spark: Any, tmp_path: Path, make_config: Any) -> None:
    src = tmp_path / "src"
    write_table(src, files=2, rows=700, key="int")
    table = tmp_path / "delta_in"
    write_deltalake(str(table), pq.read_table(src))
    cfg = config(tmp_path, make_config, table, format="delta")
    assert direct_files(cfg.input)
    direct, got = staged(spark, cfg)
    assert direct.schema["user_id"].dataType.simpleString() == "int"
    np.testing.assert_array_equal(got["user_id"].to_numpy(), np.arange(1400))


def test_partition_columns_fall_back_and_files_mode_explains(spark: Any, tmp_path: Path, make_config: Any) -> None:
    table = tmp_path / "hive"
    for day in ("2026-11-01", "2026-11-02"):
        t = pa.table({"user_id": pa.array([f"{day}-{i}" for i in range(50)]),
                      **{f"f{j}": pa.array(np.ones(50, np.float32)) for j in range(LAYERS[0] - 1)}})
        (table / f"f{LAYERS[0] - 1}=0.5").mkdir(parents=True, exist_ok=True)
        pq.write_table(t, table / f"f{LAYERS[0] - 1}=0.5" / f"{day}.parquet")
    cfg = config(tmp_path, make_config, table)
    assert direct_files(cfg.input) is None  # a feature is a partition column: Spark's scan reads it
    _, got = staged(spark, cfg)
    assert len(got) == 100
    strict = config(tmp_path, make_config, table, read="files")
    with pytest.raises(InputDataError, match=r"not stored in its Parquet files.*input.read: spark"):
        direct_files(strict.input, source="m.yaml")
