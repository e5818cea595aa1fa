"""Scoring straight from the input's Parquet files: Spark schedules, the Python worker reads.

``batchscore score`` normally hands Spark's scan to ``mapInArrow`` (Parquet -> JVM rows -> Arrow
-> Python). For a plain Parquet or Delta table whose files every executor can open, this path
skips the JVM side of the data entirely: the driver lists the files' row groups and cuts them into
fragments of about ``target_bytes`` (like Spark's ``maxPartitionBytes`` splits); each Spark task
gets fragment descriptors (path + row-group ids) and its Python worker reads them with pyarrow
(one thread: the task's CPU budget goes to the model), builds the float32 matrix with
:mod:`udfs.arrow_input`, scores it with the cached model and returns key + scores. Same rows, same
values as the Spark scan path; on a 2-core box it leaves the cores to the model (see
``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

from udfs.arrow_input import Piece, features_matrix
from udfs.model_ref import ModelRef
from udfs.predict_udf import _arrays, output_schema, score_pieces

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
_DESCRIPTOR = StructType([StructField("path", StringType(), False),
                          StructField("row_groups", ArrayType(IntegerType(), False), False)])


@dataclass(frozen=True)
class Fragment:
    """Row groups of one Parquet file, scored by one Spark task."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


def plan_fragments(files: Sequence[str], *, parallelism: int = 1, max_bytes: int = DEFAULT_TARGET_BYTES,
                   min_bytes: int = 4 * 1024 * 1024) -> list[Fragment]:
    """Consecutive row groups of each file, grouped into fragments of about
    ``min(max_bytes, max(min_bytes, total / parallelism))`` bytes (Spark's own split rule, with row
    groups as the unit), so a small table still gives every core a task."""
    metas = [(path, pq.ParquetFile(path).metadata) for path in files]
    total = sum(m.row_group(i).total_byte_size for _, m in metas for i in range(m.num_row_groups))
    target = min(max_bytes, max(min_bytes, total // max(1, parallelism)))
    out: list[Fragment] = []
    for path, meta in metas:
        groups: list[int] = []
        size = rows = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if groups and size + rg.total_byte_size > target:
                out.append(Fragment(path, tuple(groups), rows))
                groups, size, rows = [], 0, 0
            groups.append(i)
            size += rg.total_byte_size
            rows += rg.num_rows
        if groups and rows:
            out.append(Fragment(path, tuple(groups), rows))
    return out


def physical_columns(path: str) -> set[str]:
    """Column names stored in a Parquet file (not hive partition columns from its directory)."""
    return set(pq.read_schema(path).names)


def with_predictions_from_files(
    spark: SparkSession,
    fragments: Sequence[Fragment],
    ref: ModelRef,
    *,
    key: str,
    key_type: Any,
    features: list[str] | None,
    feature_array: str | None,
    columns: list[str],
    batch_size: int,
    loads: Any = None,
    prefetch: int = 2,
) -> DataFrame:
    """``key`` + one float column per output for every row of ``fragments`` (one task each).

    ``key_type``: the key's Spark type as Spark's own scan reports it; the key read by pyarrow is
    cast to it, so both paths give the same schema.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    width = len(features) if features else (ref.n_features or 0)
    read = [key, *(features or [str(feature_array)])]
    key_arrow = to_arrow_type(key_type)
    names = [key, *columns]
    schema = StructType([StructField(key, key_type, True), *output_schema(columns).fields])
    # Each fragment's own read size: the model sees batch_size rows at a time after re-cutting.
    read_rows = max(1024, min(batch_size, 65536))

    def pieces(batches: Iterator[pa.RecordBatch]) -> Iterator[Piece]:
        for b in batches:
            for path, groups in zip(b.column(0).to_pylist(), b.column(1).to_pylist(), strict=True):
                parquet = pq.ParquetFile(path)
                for rb in parquet.iter_batches(batch_size=read_rows, row_groups=groups, columns=read, use_threads=False):
                    keys = rb.column(0)
                    if keys.type != key_arrow:
                        keys = keys.cast(key_arrow)
                    yield keys, features_matrix(rb, features, feature_array, width)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for keys, out in score_pieces(ref, pieces(batches), n_outputs=len(columns), batch_size=batch_size,
                                      loads=loads, prefetch=prefetch):
            yield pa.RecordBatch.from_arrays([keys, *_arrays(out)], names=names)

    rows = [(f.path, list(f.row_groups)) for f in fragments]
    descriptors = spark.createDataFrame(spark.sparkContext.parallelize(rows, max(1, len(rows))), _DESCRIPTOR)
    return descriptors.mapInArrow(score, schema)
