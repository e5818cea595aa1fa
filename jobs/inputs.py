"""Reading the feature table and refusing bad input before any model runs."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batchscore.config import InputTable
from batchscore.errors import ConfigError, InputDataError
from batchscore.sinks.delta import StagedRun, null_count

_NUMERIC = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DecimalType)
_KEY_TYPES = (T.StringType, T.IntegerType, T.LongType, T.ShortType, T.ByteType)


def read_input(spark: SparkSession, spec: InputTable) -> DataFrame:
    local = "://" not in spec.path
    if local and not Path(spec.path).exists():
        raise InputDataError(f"input table {spec.path} not found; check input.path in the model config")
    if spec.format == "delta":
        return _read_delta(spark, spec.path)
    try:
        return spark.read.parquet(spec.path)
    except Exception as exc:
        raise InputDataError(f"input table {spec.path}: cannot read as Parquet ({_first_line(exc)})") from None


def _read_delta(spark: SparkSession, path: str) -> DataFrame:
    """Read the current version of a Delta table through delta-rs (no Delta jars needed)."""
    from deltalake import DeltaTable

    try:
        files = DeltaTable(path).file_uris()
    except Exception as exc:
        raise InputDataError(f"input table {path}: not a Delta table ({_first_line(exc)})") from None
    if not files:
        raise InputDataError(f"input table {path}: Delta table has no data files (empty input)")
    return spark.read.parquet(*files)


def direct_files(spec: InputTable, *, source: str = "the model config") -> list[str] | None:
    """The input's Parquet files when the scoring tasks may read them themselves, else None.

    ``input.read: auto`` reads the files directly when the path is local (or ``file://``, i.e. a
    mount every executor shares) and every needed column is stored in the files (not a hive
    partition column); ``files`` insists (a clear error otherwise); ``spark`` never does.
    """
    if spec.read == "spark":
        return None
    where = f"input table {spec.path}"
    if "://" in spec.path and not spec.path.startswith("file://"):
        if spec.read == "files":
            raise ConfigError(f"{source}: input.read: files needs a local or mounted path, got {spec.path}; use read: spark")
        return None
    path = spec.path.removeprefix("file://")
    if spec.format == "delta":
        from deltalake import DeltaTable

        files = [f.removeprefix("file://") for f in DeltaTable(path).file_uris()]
    else:
        import pyarrow.dataset as ds

        files = list(ds.dataset(path, format="parquet").files)
    if not files:
        return None
    from udfs.file_scan import physical_columns

    needed = [spec.key, *(spec.features or [str(spec.feature_array)])]
    missing = [c for c in needed if c not in physical_columns(files[0])]
    if missing:
        if spec.read == "files":
            raise InputDataError(f"{where}: column(s) {missing} are not stored in its Parquet files "
                                 f"(partition columns?); set input.read: spark in {source}")
        return None
    return files


def check_input(df: DataFrame, spec: InputTable, *, source: str) -> None:
    """Refuse missing/mistyped columns with the column, its type and the fix."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    where = f"input table {spec.path}"
    if spec.key not in fields:
        raise InputDataError(f"{where}: key column '{spec.key}' not found (columns: {_names(fields)}); fix input.key in {source}")
    if not isinstance(fields[spec.key], _KEY_TYPES):
        raise InputDataError(f"{where}: key column '{spec.key}' has type {fields[spec.key].simpleString()}; use a string or integer key")
    for col in spec.features or []:
        if col not in fields:
            raise InputDataError(f"{where}: feature column '{col}' not found; fix input.features in {source} or the table")
        if not isinstance(fields[col], _NUMERIC):
            raise InputDataError(
                f"{where}: feature column '{col}' has type {fields[col].simpleString()}, expected a number; "
                "cast it upstream or drop it from input.features"
            )
    if spec.feature_array:
        col = spec.feature_array
        dtype = fields.get(col)
        if dtype is None:
            raise InputDataError(f"{where}: feature array column '{col}' not found; fix input.feature_array in {source}")
        if not (isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _NUMERIC)):
            raise InputDataError(f"{where}: feature array column '{col}' has type {dtype.simpleString()}, expected array<float>")


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
        raise InputDataError(f"input table {spec.path}: {null_keys} row(s) have a null key in '{spec.key}'; drop or fix them upstream")
    if keys != rows:
        dup = df.groupBy(key).count().where("count > 1").limit(3).collect()
        sample = ", ".join(str(r[0]) for r in dup)
        raise InputDataError(
            f"input table {spec.path}: {rows - keys} duplicate key(s) in '{spec.key}' (e.g. {sample}); "
            "deduplicate upstream: each entity must be scored once"
        )
    return rows


def check_staged_keys(staged: StagedRun, spec: InputTable) -> int:
    """The rows of a scored run, refusing an empty input or null keys, from the staged Parquet's
    footers (row counts, null-count statistics): no pass over the input before scoring.
    Duplicate keys are caught by the publish, from the Redis load itself, before the Delta commit
    (:func:`batchscore.sinks.publication.publish`); backfills, which load no Redis, keep
    :func:`check_keys`."""
    rows = staged.total_rows
    if rows == 0:
        raise InputDataError(f"input table {spec.path} is empty; nothing to score (check the upstream job)")
    null_keys = null_count(staged, spec.key)
    if null_keys:
        raise InputDataError(f"input table {spec.path}: {null_keys} row(s) have a null key in '{spec.key}'; drop or fix them upstream")
    return rows


def _names(fields: dict[str, object]) -> str:
    names = list(fields)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
