"""Reading the feature table and refusing bad input before any model runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.types import StructType

from batchscore import storage as st
from batchscore.config import InputTable
from batchscore.errors import InputDataError
from batchscore.sinks.delta import StagedRun, null_count
from batchscore.storage import DEFAULT, Storage

_NUMERIC = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DecimalType)
_KEY_TYPES = (T.StringType, T.IntegerType, T.LongType, T.ShortType, T.ByteType)


@dataclass(frozen=True)
class InputScan:
    """What the score step reads: the input's columns (Spark types) and either the files its
    tasks read themselves (URIs, through :mod:`batchscore.storage`) or Spark's own scan."""

    path: str
    schema: StructType
    files: list[str] | None  # None: Spark's scan (``df``) feeds the model
    df: DataFrame | None = None
    physical: dict[str, str] = field(default_factory=dict)  # logical -> stored name (Delta column mapping)
    delta_version: int | None = None  # the pinned version of a Delta input
    #: file URI -> the sorted row positions its Delta deletion vector removed (numpy int64); the tasks skip them
    deleted: dict[str, Any] = field(default_factory=dict)
    #: file URI -> {column: (arrow type name, value)}: the key/feature columns a Delta table keeps as
    #: partition values, not in its files; the tasks add them (:func:`batchscore.udfs._fragments.plan_fragments`)
    constants: dict[str, dict[str, tuple[str, Any]]] = field(default_factory=dict)

    @property
    def deleted_rows(self) -> int:
        return sum(len(v) for v in self.deleted.values())


# Reader features of a Delta input this reader handles (column mapping: by physical names).
_DELTA_READER_FEATURES = {"columnMapping", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck",
                          "deletionVectors", "variantType", "typeWidening", "typeWidening-preview"}


def open_input(spark: SparkSession, spec: InputTable, *, storage: Storage = DEFAULT,
               source: str = "the model config") -> InputScan:
    """Open the input without reading it: its schema, and its files when the tasks may read them
    (``input.read: auto|files``), else Spark's scan. Object-store inputs are always read by the
    tasks (Spark's Hadoop connectors are not needed); ``read: spark`` on one needs them."""
    where = f"input table {spec.path}"
    remote = not st.is_local(spec.path)
    if not remote and not Path(spec.path).exists():
        raise InputDataError(f"{where} not found; check input.path in {source}")
    st.check_reachable(spec.path, storage, what="read the input")
    if spec.format == "delta":
        return _open_delta(spark, spec, storage, source)
    if spec.read == "spark":
        return _spark_scan(spark, spec, spec.path if not remote else spec.path.replace("s3://", "s3a://", 1))
    files = [u for u, _ in st.list_files(spec.path, storage, suffix=".parquet")] if not st.is_file(spec.path, storage) \
        else [st.normalize(spec.path)]
    if not files:
        raise InputDataError(
            f"{where}: no Parquet files there (empty input or wrong path); check input.path in {source}"
        )
    schema = _arrow_schema(files[0], storage, where)
    missing = [c for c in _needed(spec) if c not in schema.names]
    if missing and not remote and spec.read == "auto":
        return _spark_scan(spark, spec, spec.path)  # hive partition columns: Spark's scan reads them
    if missing and spec.read == "files" and not remote:
        raise InputDataError(
            f"{where}: column(s) {missing} are not stored in its Parquet files "
            f"(partition columns?); set input.read: spark in {source}"
        )
    return InputScan(spec.path, _spark_schema(schema), files)


def _needed(spec: InputTable) -> list[str]:
    return [spec.key, *(spec.features or [str(spec.feature_array)])]


def _arrow_schema(uri: str, storage: Storage, where: str) -> Any:
    try:
        return st.parquet_file(uri, storage).schema_arrow
    except InputDataError as exc:
        raise InputDataError(f"{where}: cannot read as Parquet ({exc})") from None


def _spark_schema(schema: Any) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _spark_scan(spark: SparkSession, spec: InputTable, path: str) -> InputScan:
    try:
        df = spark.read.parquet(path)
    except Exception as exc:
        raise InputDataError(f"input table {spec.path}: cannot read as Parquet ({_first_line(exc)})") from None
    return InputScan(spec.path, df.schema, None, df)


def _open_delta(spark: SparkSession, spec: InputTable, storage: Storage, source: str) -> InputScan:
    """A Delta input through delta-rs: the current version pinned, its protocol checked, column
    mapping resolved; the tasks read its files (or Spark's scan reads them when asked)."""
    import pyarrow as pa

    from batchscore.sinks.delta import _dt, is_table

    where = f"input table {spec.path}"
    if not is_table(spec.path, storage):
        raise InputDataError(
            f"{where}: not a Delta table (no _delta_log); check input.path and input.format in {source}"
        )
    fix = (
        "export the features to a plain Parquet or Delta table without them, or set input.read: spark with a "
        f"Delta-capable Spark in {source}"
    )
    try:
        dt = _dt(spec.path, storage)
    except InputDataError as exc:
        if "not supported" not in str(exc).lower() and "unsupported" not in str(exc).lower():
            raise
        detail = str(exc).split("(", 1)[-1].rstrip(")")
        raise InputDataError(
            f"{where}: uses a Delta protocol feature batchscore cannot read ({detail}); {fix}"
        ) from None
    proto = dt.protocol()
    unknown = sorted(set(proto.reader_features or []) - _DELTA_READER_FEATURES)
    if unknown or proto.min_reader_version > 3:
        raise InputDataError(
            f"{where}: uses Delta reader feature(s) {unknown or [f'reader version {proto.min_reader_version}']} "
            f"that batchscore cannot read; {fix}"
        )
    deleted = _deleted_rows(dt, spec, storage) if "deletionVectors" in (proto.reader_features or []) else {}
    version = int(dt.version())
    arrow = pa.schema(dt.schema().to_arrow())  # arro3 -> pyarrow (Arrow C schema interface)
    physical = {
        f.name: f.metadata["delta.columnMapping.physicalName"]
        for f in dt.schema().fields
        if f.metadata.get("delta.columnMapping.physicalName")
    }
    partitions = set(dt.metadata().partition_columns)
    files = [st.normalize(u) for u in dt.file_uris()]
    if not files:
        raise InputDataError(f"{where}: Delta table has no data files (empty input)")
    if spec.read == "spark":
        if deleted:
            raise InputDataError(
                f"{where}: {len(deleted)} file(s) carry deletion vectors, which Spark's Parquet scan would not "
                f"apply; use input.read: auto in {source} (the tasks apply them)"
            )
        if not st.is_local(spec.path) or physical:
            raise InputDataError(
                f"{where}: input.read: spark needs a local Delta table without column mapping; use input.read: auto "
                f"in {source}"
            )
        # exactly the pinned version's files; hive-style partition values from their paths
        df = spark.read.option("basePath", st.normalize(spec.path)).parquet(*files)
        return InputScan(spec.path, df.schema, None, df, delta_version=version)
    needed_parts = [c for c in _needed(spec) if c in partitions]
    constants = _partition_values(dt, spec, needed_parts, arrow, files, physical, source) if needed_parts else {}
    return InputScan(spec.path, _spark_schema(arrow), files, physical=physical, delta_version=version, deleted=deleted,
                     constants=constants)


def _partition_values(dt: Any, spec: InputTable, columns: list[str], arrow: Any, files: list[str],
                      physical: dict[str, str], source: str) -> dict[str, dict[str, tuple[str, Any]]]:
    """File URI -> {column: (arrow type name, value)} of the key/feature ``columns`` the Delta table
    keeps as partition values (typed by delta-rs from the log's add actions)."""
    from urllib.parse import unquote

    import pyarrow as pa

    where = f"input table {spec.path}"
    actions = pa.table(dt.get_add_actions(flatten=True))
    root = st.normalize(spec.path)
    paths = [st.normalize(p) if "://" in p or p.startswith("/") else st.join(root, unquote(p))
             for p in actions.column("path").to_pylist()]
    if set(paths) != set(files):  # never guess which file a partition value belongs to
        odd = sorted(set(paths) ^ set(files))[:3]
        raise InputDataError(f"{where}: the Delta log's add actions do not name the same files as its snapshot "
                             f"(e.g. {odd}); keep the key and features as data columns, or set input.read: spark "
                             f"in {source}")
    out: dict[str, dict[str, tuple[str, Any]]] = {p: {} for p in paths}
    for c in columns:
        t = arrow.field(c).type
        try:
            ok = pa.type_for_alias(str(t)) == t
        except ValueError:
            ok = False
        name = next((n for n in (f"partition.{physical.get(c, c)}", f"partition.{c}") if n in actions.column_names),
                    None)
        if not ok or name is None:
            raise InputDataError(
                f"{where}: partition column '{c}' ({t}) cannot be filled in by the scoring tasks; keep it as a "
                f"data column, or set input.read: spark in {source}"
            )
        for p, v in zip(paths, actions.column(name).to_pylist(), strict=True):
            out[p][c] = (str(t), v)
    return out


def _deleted_rows(dt: Any, spec: InputTable, storage: Storage) -> dict[str, Any]:
    """File URI -> the row positions the current version's deletion vectors removed (delta-rs
    decodes them: ``selection_vector`` is the file's keep mask)."""
    import numpy as np

    out: dict[str, Any] = {}
    with st.guard(spec.path, "read deletion vectors", storage):
        for batch in dt.deletion_vectors():
            import pyarrow as pa

            rb = pa.record_batch(batch)
            masks = rb.column("selection_vector")
            for path, mask in zip(rb.column("filepath").to_pylist(), masks, strict=True):
                keep = np.asarray(mask.values.to_numpy(zero_copy_only=False), dtype=bool)
                gone = np.flatnonzero(~keep).astype(np.int64)
                if len(gone):
                    out[st.normalize(path)] = gone
    return out


def input_frame(spark: SparkSession, scan: InputScan, columns: list[str], *, storage: Storage = DEFAULT) -> DataFrame:
    """``columns`` of the input as a DataFrame: Spark's scan, or the tasks reading the files
    themselves (any store) when Spark cannot (:func:`batchscore.udfs._fragments.files_frame`)."""
    if scan.df is not None:
        return scan.df.select(*columns)
    from pyspark.sql.types import StructType as _ST

    from batchscore.udfs._fragments import files_frame

    assert scan.files is not None
    return files_frame(
        spark, scan.files, _ST([scan.schema[c] for c in columns]), storage=storage, physical=scan.physical or None,
        deleted=scan.deleted or None, constants=scan.constants or None,
    )


def read_input(spark: SparkSession, spec: InputTable) -> DataFrame:
    """Spark's scan of a local input (benchmarks, tests); the score step uses :func:`open_input`."""
    if not Path(spec.path).exists():
        raise InputDataError(f"input table {spec.path} not found; check input.path in the model config")
    if spec.format == "delta":
        from deltalake import DeltaTable

        dt = DeltaTable(spec.path)
        _refuse_deletion_vectors(dt, spec)
        return spark.read.parquet(*[st.normalize(u) for u in dt.file_uris()])
    return spark.read.parquet(spec.path)


def _refuse_deletion_vectors(dt: Any, spec: InputTable) -> None:
    """Spark's scan of a Delta table's files would read the rows its deletion vectors removed."""
    if "deletionVectors" in (dt.protocol().reader_features or []) and _deleted_rows(dt, spec, DEFAULT):
        raise InputDataError(
            f"input table {spec.path}: files carry deletion vectors, which a plain Parquet scan does not apply; "
            "open it with batchscore.jobs._inputs.open_input (the scoring tasks apply them)"
        )


def direct_files(spec: InputTable, *, source: str = "the model config") -> list[str] | None:
    """The input's Parquet files when the scoring tasks may read them themselves, else None
    (``input.read: spark``, or columns stored outside the files). See :func:`open_input`."""
    if spec.read == "spark":
        return None
    where = f"input table {spec.path}"
    path = st.normalize(spec.path)
    if spec.format == "delta":
        from deltalake import DeltaTable

        dt = DeltaTable(path)
        _refuse_deletion_vectors(dt, spec)
        files = [st.normalize(f) for f in dt.file_uris()]
    else:
        files = [u for u, _ in st.list_files(path, suffix=".parquet")] if not st.is_file(path) else [path]
    if not files:
        return None
    from batchscore.udfs._fragments import physical_columns

    missing = [c for c in _needed(spec) if c not in physical_columns(files[0])]
    if missing:
        if spec.read == "files":
            raise InputDataError(
                f"{where}: column(s) {missing} are not stored in its Parquet files "
                f"(partition columns?); set input.read: spark in {source}"
            )
        return None
    return files


def check_input(df: DataFrame | InputScan, spec: InputTable, *, source: str) -> None:
    """Refuse missing/mistyped columns with the column, its type and the fix."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    where = f"input table {spec.path}"
    if spec.key not in fields:
        raise InputDataError(
            f"{where}: key column '{spec.key}' not found (columns: {_names(fields)}); fix input.key in {source}"
        )
    if not isinstance(fields[spec.key], _KEY_TYPES):
        raise InputDataError(
            f"{where}: key column '{spec.key}' has type {fields[spec.key].simpleString()}; use a string or integer key"
        )
    for col in spec.features or []:
        if col not in fields:
            raise InputDataError(
                f"{where}: feature column '{col}' not found; fix input.features in {source} or the table"
            )
        if not isinstance(fields[col], _NUMERIC):
            raise InputDataError(
                f"{where}: feature column '{col}' has type {fields[col].simpleString()}, expected a number; "
                "cast it upstream or drop it from input.features"
            )
    if spec.feature_array:
        col = spec.feature_array
        dtype = fields.get(col)
        if dtype is None:
            raise InputDataError(
                f"{where}: feature array column '{col}' not found; fix input.feature_array in {source}"
            )
        if not (isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _NUMERIC)):
            raise InputDataError(
                f"{where}: feature array column '{col}' has type {dtype.simpleString()}, expected array<float>"
            )


def check_keys(df: DataFrame, spec: InputTable) -> int:
    """Count rows, refusing an empty input or duplicate/null keys (one aggregation pass)."""
    key = F.col(spec.key)
    row = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct(key).alias("keys"),
        F.sum(key.isNull().cast("long")).alias("null_keys"),
    ).first()
    assert row is not None
    rows, keys, null_keys = int(row["rows"]), int(row["keys"]), int(row["null_keys"] or 0)
    if rows == 0:
        raise InputDataError(f"input table {spec.path} is empty; nothing to score (check the upstream job)")
    if null_keys:
        raise InputDataError(
            f"input table {spec.path}: {null_keys} row(s) have a null key in '{spec.key}'; drop or fix them upstream"
        )
    if keys != rows:
        dup = df.groupBy(key).count().where("count > 1").limit(3).collect()
        sample = ", ".join(str(r[0]) for r in dup)
        raise InputDataError(
            f"input table {spec.path}: {rows - keys} duplicate key(s) in '{spec.key}' (e.g. {sample}); "
            "deduplicate upstream: each entity must be scored once"
        )
    return rows


def check_staged_keys(staged: StagedRun, spec: InputTable, storage: Storage = DEFAULT) -> int:
    """The rows of a scored run, refusing an empty input or null keys, from the staged Parquet's
    footers (row counts, null-count statistics): no pass over the input before scoring.
    Duplicate keys are caught by the publish, from the Redis load itself, before the Delta commit
    (:func:`batchscore.sinks.publication.publish`); backfills, which load no Redis, keep
    :func:`check_keys`."""
    rows = staged.total_rows
    if rows == 0:
        raise InputDataError(f"input table {spec.path} is empty; nothing to score (check the upstream job)")
    null_keys = null_count(staged, spec.key, storage)
    if null_keys:
        raise InputDataError(
            f"input table {spec.path}: {null_keys} row(s) have a null key in '{spec.key}'; drop or fix them upstream"
        )
    return rows


def _names(fields: Mapping[str, object]) -> str:
    names = list(fields)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
