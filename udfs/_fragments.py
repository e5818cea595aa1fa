"""Parquet fragments read by the Spark tasks themselves: no Hadoop connector, no JVM rows.

The driver lists the files' row groups and cuts them into fragments of about equal bytes, one per
core (more when they would exceed ≈ 128 MB, Spark's default ``maxPartitionBytes``;
:func:`plan_fragments`). :func:`fragment_frame` gives each Spark task one fragment's descriptor
(paths + row-group ids); inside the task :func:`read_fragments` reads it with pyarrow (one thread:
the task's CPU budget is one core) through any store :mod:`batchscore.storage` reaches.
Rows a Delta deletion vector removed (``deleted``: a file's 0-based row positions) are planned with
their fragment, as positions within its row groups, and dropped as the task reads them. Columns
a file does not store because they are Delta partition columns (``constants``: a file's value of
each, typed by an Arrow type name) travel with the fragment too and are added as constant columns.
:func:`files_frame` is the generic use (a DataFrame of some columns of some files); scoring
straight from files is :mod:`batchscore.udfs.file_scan`, the Redis load reads staged files the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    ArrayType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from batchscore.storage import DEFAULT, Storage

__all__ = ["DEFAULT_TARGET_BYTES", "Fragment", "files_frame", "fragment_frame", "physical_columns", "plan_fragments",
           "read_fragments"]

OUTPUT_ROWS = 65_536  # rows per batch read (large slices: per-batch costs of pyarrow and of what follows add up)
DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
_PART = StructType([StructField("path", StringType(), False),
                    StructField("row_groups", ArrayType(IntegerType(), False), False),
                    StructField("deleted", ArrayType(LongType(), False), True),
                    StructField("constants", StringType(), True)])  # JSON {column: [arrow type, value]}
_DESCRIPTOR = StructType([StructField("parts", ArrayType(_PART, False), False)])


@dataclass(frozen=True)
class Fragment:
    """Consecutive row groups, of one file or of several, scored by one Spark task."""

    parts: tuple[tuple[str, tuple[int, ...]], ...]  # (path, row-group ids), in file order
    rows: int  # the rows read: those of its row groups minus the deleted ones
    #: per part: the positions (0-based, in the concatenation of its row groups) a deletion vector removed
    deleted: tuple[tuple[int, ...], ...] = ()
    #: per part: JSON ``{column: [arrow type name, value]}`` of the columns its file does not store
    #: (Delta partition values), or None
    constants: tuple[str | None, ...] = ()


def plan_fragments(files: Sequence[str], *, parallelism: int = 1, max_bytes: int = DEFAULT_TARGET_BYTES,
                   min_bytes: int = 4 * 1024 * 1024, storage: Storage = DEFAULT,
                   deleted: Mapping[str, Any] | None = None,
                   constants: Mapping[str, Mapping[str, tuple[str, Any]]] | None = None) -> list[Fragment]:
    """The files' row groups, in order, cut into ``n`` fragments of about equal bytes (row groups
    are the unit; a fragment may span files, as Spark packs small files into one partition).

    ``n``: enough that no fragment is much above ``max_bytes`` (Spark's ``maxPartitionBytes``), and
    at least one per core (``parallelism``) unless that would cut fragments below ``min_bytes``
    (a table of several files still gets ``min(parallelism, files)``). Each task costs the JVM and
    the Python worker a fixed set-up, so a task per core beats a task per file (``benchmarks/README.md``).

    ``deleted``: file -> the sorted 0-based row positions a Delta deletion vector removed (numpy
    int64 arrays or sequences); they travel with the fragment holding them and are never read.
    ``constants``: file -> ``{column: (arrow type name, value)}`` of columns the file does not store
    (a Delta table's partition values); the task adds them to every batch of that file.
    """
    import json

    import numpy as np

    groups: list[tuple[str, int, int, int, int]] = []  # path, row group, bytes, rows, first row in the file
    from batchscore.storage import parquet_file

    for path in files:
        meta = parquet_file(path, storage).metadata
        first = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if rg.num_rows:
                groups.append((path, i, rg.total_byte_size, rg.num_rows, first))
            first += rg.num_rows
    gone = {p: np.asarray(v, dtype=np.int64) for p, v in (deleted or {}).items() if len(v)}
    if not groups:
        return []
    total = sum(g[2] for g in groups)
    n = max(-(-total // max_bytes), min(parallelism, max(1, total // min_bytes)), min(parallelism, len(files)))
    n = max(1, min(n, len(groups)))
    buckets: list[list[tuple[str, int, int, int, int]]] = [[] for _ in range(n)]
    start = 0
    for g in groups:  # by the midpoint of its bytes: cuts fall near k * total / n
        buckets[min(n - 1, int((start + g[2] / 2) * n / total))].append(g)
        start += g[2]
    out = []
    for bucket in buckets:
        if not bucket:
            continue
        parts: list[tuple[str, list[int], list[int]]] = []  # path, row groups, part-relative deleted rows
        offset = 0  # rows of the current part before this row group
        for path, i, _, rows, first in bucket:
            if not (parts and parts[-1][0] == path):
                parts.append((path, [], []))
                offset = 0
            parts[-1][1].append(i)
            if path in gone:
                pos = gone[path]
                parts[-1][2].extend((pos[(pos >= first) & (pos < first + rows)] - first + offset).tolist())
            offset += rows
        removed = tuple(tuple(d) for _, _, d in parts)
        consts = tuple(json.dumps({c: list(tv) for c, tv in constants[p].items()}) if constants and constants.get(p)
                       else None for p, _, _ in parts)
        out.append(Fragment(tuple((p, tuple(ids)) for p, ids, _ in parts),
                            sum(g[3] for g in bucket) - sum(len(d) for d in removed),
                            removed if any(removed) else (), consts if any(consts) else ()))
    return out


def physical_columns(path: str, storage: Storage = DEFAULT) -> set[str]:
    """Column names stored in a Parquet file (not hive partition columns from its directory)."""
    from batchscore.storage import parquet_file

    return set(parquet_file(path, storage).schema_arrow.names)


def fragment_frame(spark: SparkSession, fragments: Sequence[Fragment]) -> DataFrame:
    """One row per fragment (its paths and row-group ids), one fragment per partition: map it with
    ``mapInArrow`` and :func:`read_fragments` so each task reads its own fragment."""
    rows = [([(path, list(ids), list(f.deleted[j]) if f.deleted and f.deleted[j] else None,
               f.constants[j] if f.constants else None)
              for j, (path, ids) in enumerate(f.parts)],) for f in fragments]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(1, len(rows))), _DESCRIPTOR)


def read_fragments(descriptors: Iterator[pa.RecordBatch], columns: list[str], *,
                   rows: int = OUTPUT_ROWS, storage: Storage = DEFAULT,
                   physical: dict[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """Inside a task of :func:`fragment_frame`: ``columns`` of every row group its descriptors
    name, in order, ``rows`` at a time (pyarrow, one thread: the task's CPU budget is one core),
    through ``storage`` (local disk or an object store), without the rows a deletion vector
    removed. ``physical``: logical -> stored column name (Delta column mapping); batches carry the
    logical names. A part's ``constants`` (partition values) fill the columns its file lacks.
    Large slices: per-batch costs of pyarrow and of what follows add up at 1k rows."""
    from batchscore.storage import guard, parquet_file

    for b in descriptors:
        for part in (p for parts in b.column(0).to_pylist() for p in parts):
            consts = _constants(part.get("constants"), rows)
            read = [c for c in columns if c not in consts]
            stored = [(physical or {}).get(c, c) for c in read]
            parquet = parquet_file(part["path"], storage)
            keep = _keep_mask(parquet, part["row_groups"], part.get("deleted"))
            at = 0
            with guard(part["path"], "read", storage):
                for rb in parquet.iter_batches(batch_size=rows, row_groups=part["row_groups"], columns=stored,
                                               use_threads=False):
                    if keep is not None:
                        n = rb.num_rows
                        rb, at = rb.filter(pa.array(keep[at : at + n])), at + n
                        if not rb.num_rows:
                            continue
                    if consts:
                        got = dict(zip(read, rb.columns, strict=True))
                        yield pa.RecordBatch.from_arrays(
                            [got[c] if c in got else consts[c].slice(0, rb.num_rows) for c in columns], names=columns)
                    else:
                        yield rb if stored == columns else pa.RecordBatch.from_arrays(rb.columns, names=columns)


def _constants(text: str | None, rows: int) -> dict[str, pa.Array]:
    """A part's constant columns, each ``rows`` long (batches take a slice): its partition values."""
    if not text:
        return {}
    import json

    import numpy as np

    out = {}
    for c, (type_name, value) in json.loads(text).items():
        one = pa.array([value], type=pa.type_for_alias(type_name))
        out[c] = one.take(pa.array(np.zeros(rows, dtype=np.int64)))
    return out


def _keep_mask(parquet: Any, row_groups: Sequence[int], deleted: Sequence[int] | None) -> Any:
    """False at the deleted positions of the row groups' concatenation; None when none is deleted."""
    if not deleted:
        return None
    import numpy as np

    keep = np.ones(sum(parquet.metadata.row_group(i).num_rows for i in row_groups), dtype=bool)
    keep[np.asarray(deleted, dtype=np.int64)] = False
    return keep


def files_frame(spark: SparkSession, files: Sequence[str], schema: StructType, *, storage: Storage = DEFAULT,
                physical: dict[str, str] | None = None, deleted: Mapping[str, Any] | None = None,
                constants: Mapping[str, Mapping[str, tuple[str, Any]]] | None = None) -> DataFrame:
    """A DataFrame of ``schema``'s columns of the Parquet ``files``, read by the tasks themselves
    through ``storage`` (no Hadoop connector: works for any store :mod:`batchscore.storage`
    reaches). For validation and key checks over files Spark cannot read itself."""
    from pyspark.sql.pandas.types import to_arrow_schema

    names = list(schema.names)
    want = to_arrow_schema(schema, timezone="UTC")

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in read_fragments(batches, names, storage=storage, physical=physical):
            yield rb if rb.schema.equals(want) else rb.cast(want)

    frags = plan_fragments(files, parallelism=spark.sparkContext.defaultParallelism, storage=storage, deleted=deleted,
                           constants=constants)
    return fragment_frame(spark, frags).mapInArrow(read, schema)
