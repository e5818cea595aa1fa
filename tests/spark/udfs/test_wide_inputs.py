"""Spark's scan feeding ``with_predictions`` on the input shapes the benchmark measures: wide tables
(more float/double feature columns than Spark's ``spark.sql.codegen.maxFields``, nulls, NaN, inf,
doubles beyond float range), mixed column types, ``array<float>``/``array<double>`` columns and a
multi-output model. Scores equal the model run directly with onnxruntime on the same rows, and
the float32 scores of the packed feature column equal those of one Arrow column per feature (the
path before packing) bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchscore.testing.demo_data import write_onnx_mlp
from batchscore.udfs._arrow_input import features_matrix
from batchscore.udfs.model_ref import model_ref
from batchscore.udfs.scoring import output_schema, scored_batches, with_predictions

pytestmark = pytest.mark.spark
ROWS = 3000
WIDE = 240  # > spark.sql.codegen.maxFields (100): Spark's row-by-row scan, as on real wide tables
OUTPUTS = ["a", "b", "c", "d"]


def ort_scores(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float32)


def scored(out: Any, key: str = "k") -> Any:
    return out.toPandas().sort_values(key).reset_index(drop=True)


def per_column_path(df: Any, ref: Any, features: list[str], columns: list[str], batch_size: int) -> Any:
    """The Spark-scan path before packing: one Arrow column per feature, cast in Python."""
    schema = type(output_schema(columns))([df.schema["k"], *output_schema(columns).fields])
    width = len(features)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pieces = ((b.column(0), features_matrix(b, features, None, width)) for b in batches)
        yield from scored_batches(ref, pieces, names=["k", *columns], batch_size=batch_size)

    return df.select("k", *features).mapInArrow(score, schema)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray]:
    """3 Parquet files, ``WIDE`` columns: every third one float64, the rest float32, with nulls,
    NaN, +-inf, float64 values beyond float32 range and below its smallest normal."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(5)
    x64 = rng.normal(size=(ROWS, WIDE))
    x64[7, 3] = 1e300
    x64[8, 3] = -1e300
    x64[9, 3] = 1e-42
    x64[10, 3] = 1.0000000596046448  # halfway between two floats: round to even
    x64[11, 5] = np.inf
    x64[12, 6] = np.nan
    null = rng.random((ROWS, WIDE)) < 0.002
    names = [f"f{j}" for j in range(WIDE)]
    with np.errstate(over="ignore"):  # 1e300 -> inf, as every cast to float32 does
        x32 = x64.astype(np.float32)
    want = x32.copy()
    want[null] = np.nan
    for i, rows in enumerate(np.array_split(np.arange(ROWS), 3)):
        cols: dict[str, pa.Array] = {"k": pa.array(rows.astype(np.int64))}
        for j in range(WIDE):
            values = x64[rows, j] if j % 3 == 0 else x32[rows, j]
            cols[names[j]] = pa.array(values, mask=null[rows, j])
        pq.write_table(pa.table(cols), root / f"part-{i}.parquet", row_group_size=700)
    return root, names, want


@pytest.mark.parametrize("n_outputs", [1, 4])
def test_wide_float_and_double_columns_score_as_the_model_does(
    spark: Any, tmp_path: Path, wide: tuple[Path, list[str], np.ndarray], n_outputs: int
) -> None:
    root, names, x = wide
    model = write_onnx_mlp(tmp_path / "wide.onnx", (WIDE, 16, n_outputs))
    ref = model_ref(str(model), "onnx", "cpu", n_features=WIDE)
    df = spark.read.parquet(str(root))
    columns = OUTPUTS[:n_outputs]
    out = with_predictions(df, ref, key="k", features=names, feature_array=None, columns=columns, batch_size=256)
    assert [f.name for f in out.schema] == ["k", *columns]
    plan = out._jdf.queryExecution().optimizedPlan().toString()
    assert "AS __batchscore_features" in plan and "AS __batchscore_features_" not in plan  # all in one array
    got = scored(out)
    np.testing.assert_array_equal(got["k"].to_numpy(), np.arange(ROWS))
    np.testing.assert_array_equal(got[columns].to_numpy(np.float32), ort_scores(model, x))
    before = scored(per_column_path(df, ref, names, columns, 256))
    np.testing.assert_array_equal(got[columns].to_numpy(np.float32), before[columns].to_numpy(np.float32))


def test_mixed_column_types_keep_their_positions(spark: Any, tmp_path: Path) -> None:
    """Float and double features are packed, integers and decimals stay columns: the matrix puts
    each back at its position in ``features`` (order here is neither the table's nor by type)."""
    rng = np.random.default_rng(9)
    n = 1000
    floats = rng.normal(size=(n, 4))
    ints = rng.integers(-1000, 1000, size=(n, 2))
    table = pa.table({
        "k": pa.array(np.arange(n, dtype=np.int64)),
        "d0": pa.array(floats[:, 0]),
        "i0": pa.array(ints[:, 0].astype(np.int32)),
        "f1": pa.array(floats[:, 1].astype(np.float32), mask=np.arange(n) % 97 == 0),
        "l1": pa.array(ints[:, 1].astype(np.int64), mask=np.arange(n) % 89 == 0),
        "dec": pa.array([Decimal(f"{v:.2f}") for v in floats[:, 2]], pa.decimal128(10, 2)),
        "f 3 (odd)": pa.array(floats[:, 3].astype(np.float32)),  # quoted in the projection
    })
    pq.write_table(table, tmp_path / "mixed.parquet")
    features = ["f 3 (odd)", "i0", "d0", "dec", "l1", "f1"]
    # decimals: Arrow's cast, as before packing (it is not correctly rounded: 1 ulp off float(Decimal) at times)
    x = np.column_stack([pc.cast(table[c], pa.float32()).to_numpy() if c == "dec"
                         else table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in features])
    model = write_onnx_mlp(tmp_path / "m.onnx", (6, 8, 2))
    ref = model_ref(str(model), "onnx", "cpu", n_features=6)
    df = spark.read.parquet(str(tmp_path / "mixed.parquet"))
    out = with_predictions(df, ref, key="k", features=features, feature_array=None, columns=["a", "b"], batch_size=100)
    got = scored(out)
    np.testing.assert_array_equal(got[["a", "b"]].to_numpy(np.float32), ort_scores(model, x))
    before = scored(per_column_path(df, ref, features, ["a", "b"], 100))
    np.testing.assert_array_equal(got[["a", "b"]].to_numpy(np.float32), before[["a", "b"]].to_numpy(np.float32))


@pytest.mark.parametrize("element", ["float32", "float64"])
def test_array_column_with_a_multi_output_model(spark: Any, tmp_path: Path, element: str) -> None:
    width = 64
    x64 = np.random.default_rng(2).normal(size=(ROWS, width))
    x64[5, 0] = 1e300
    with np.errstate(over="ignore"):
        values, x32 = x64.astype(element), x64.astype(np.float32)
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, ROWS * width + 1, width, dtype=np.int32)),
                                   pa.array(values.ravel()))
    pq.write_table(pa.table({"k": pa.array(np.arange(ROWS, dtype=np.int64)), "emb": emb}), tmp_path / "emb.parquet",
                   row_group_size=1000)
    model = write_onnx_mlp(tmp_path / "m.onnx", (width, 32, 4))
    ref = model_ref(str(model), "onnx", "cpu", n_features=width)
    df = spark.read.parquet(str(tmp_path / "emb.parquet"))
    out = with_predictions(df, ref, key="k", features=None, feature_array="emb", columns=OUTPUTS, batch_size=512)
    got = scored(out)
    np.testing.assert_array_equal(got["k"].to_numpy(), np.arange(ROWS))
    np.testing.assert_array_equal(got[OUTPUTS].to_numpy(np.float32), ort_scores(model, x32))


def test_names_spark_resolves_itself_keep_working(spark: Any, tmp_path: Path) -> None:
    """A struct field (``s.x``) or another case (``F0``) is not a top-level name: those features
    are resolved as ``select`` resolves them, still packed when float or double."""
    rng = np.random.default_rng(4)
    n = 500
    x = rng.normal(size=(n, 3))
    s = pa.StructArray.from_arrays([pa.array(x[:, 1]), pa.array((x[:, 2] * 100).astype(np.int32))], ["x", "y"])
    pq.write_table(pa.table({"k": pa.array(np.arange(n, dtype=np.int64)), "f0": pa.array(x[:, 0].astype(np.float32)),
                             "s": s}),
                   tmp_path / "nested.parquet")
    want = np.column_stack([x[:, 0].astype(np.float32), x[:, 1].astype(np.float32),
                            (x[:, 2] * 100).astype(np.int32)]).astype(np.float32)
    model = write_onnx_mlp(tmp_path / "m.onnx", (3, 8, 1))
    ref = model_ref(str(model), "onnx", "cpu", n_features=3)
    df = spark.read.parquet(str(tmp_path / "nested.parquet"))
    out = with_predictions(df, ref, key="k", features=["F0", "s.x", "s.y"], feature_array=None, columns=["score"],
                           batch_size=64)
    got = scored(out)
    np.testing.assert_array_equal(got["score"].to_numpy(np.float32), ort_scores(model, want)[:, 0])
