"""``predict_udf``: the model as a vectorized iterator UDF, applied to columns.

    from batchscore.udfs import predict_udf

    score = predict_udf("models/churn.onnx", columns=["score"], batch_size=4096)
    df.withColumn("score", score(*feature_cols))          # one float column per feature
    df.withColumn("score", score(F.col("features")))      # or one array<float> column

    both = predict_udf("models/two_heads.onnx", columns=["p_churn", "p_upsell"])
    df.withColumn("s", both(F.col("features"))).select("user_id", "s.p_churn", "s.p_upsell")

``kind="pandas"`` (the default) is a real ``pandas_udf`` of ``Iterator[pd.Series] ->
Iterator[pd.Series]`` (one output) or ``Iterator[pd.DataFrame]`` (a struct of several outputs);
several feature columns reach it packed into one ``array<float>`` column (cast to float32 in
Spark), which is one Arrow vector per batch instead of one per column;
``kind="arrow"`` is the same on Spark's ``arrow_udf`` (no pandas conversion, the faster of the two).
Either way the model comes from the Python worker's cache (loaded once per worker, keyed by the
artifact's sha256 + format + device + precision: :mod:`batchscore.udfs.model_cache`), runs on
exactly ``batch_size`` rows at a time whatever Spark's Arrow batch size, on the device each task
is given (``device="auto"``: the task's GPU when Spark assigned one, else CPU with one warning),
in ``precision`` (``fp16``/``bf16`` for torch formats), as ``batchscore score`` does.

The artifact is read once on the driver: hashed (the cache key) and, with ``check=True``, loaded on
CPU and probed with the feature width, so a wrong file, format or width fails at the call site in
one line rather than inside a task. Nulls in feature columns reach the model as NaN; a null or
short feature array fails the task with the column named. ``models:/`` registry URIs are resolved
by the jobs (``batchscore.registry``); here give the artifact's own URI (a path or ``s3://``,
``gs://``, ``abfss://``, ``hdfs://``; credentials from the standard environment variables).
"""

# No ``from __future__ import annotations`` here: pandas_udf reads the real type hints of the
# function it wraps (typing.get_type_hints) to choose the iterator eval type.

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, FloatType, StructField, StructType

from batchscore import storage as st
from batchscore.errors import ConfigError, InputDataError
from batchscore.storage import DEFAULT, Storage
from batchscore.udfs._arrow_input import features_matrix
from batchscore.udfs.model_ref import ModelRef, hash_bytes, read_artifact
from batchscore.udfs.scoring import score_pieces

__all__ = ["FORMATS", "PredictUDF", "predict_udf"]

#: Artifact suffix -> ``format`` when it is not given.
FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".pt2": "torch_export"}
KINDS = ("pandas", "arrow")


@dataclass(frozen=True)
class PredictUDF:
    """What :func:`predict_udf` returns: call it on the feature columns to get the score column."""

    ref: ModelRef
    columns: tuple[str, ...]
    batch_size: int
    kind: str
    prefetch: int | None = None
    loads: Any = None  # an optional Spark accumulator of model loads (model_cache.load_accumulator)

    @property
    def return_type(self) -> DataType:
        """``float`` for one output, a struct of one float field per output otherwise."""
        if len(self.columns) == 1:
            return FloatType()
        return StructType([StructField(c, FloatType(), True) for c in self.columns])

    def __call__(self, *cols: Column | str) -> Column:
        if not cols:
            raise ConfigError("predict_udf(...)(): give the feature columns, e.g. udf(*feature_cols) "
                              "or udf(F.col('features'))")
        arg, label = _feature_arg(cols)
        if self.kind == "pandas":
            return _pandas_udf(self, label)(arg)
        return _arrow_udf(self, label)(arg)


def _feature_arg(cols: Sequence[Column | str]) -> tuple[Column, str]:
    """The one column a ``predict_udf`` is applied to, and its label for errors: a single column as it
    is (an ``array<float>``, or a one-feature model's column), several packed into one ``array<float>``."""
    if len(cols) == 1:  # an array<float> column (or a one-feature model): passed as it is
        c = cols[0]
        return (F.col(c), c) if isinstance(c, str) else (c, _label(c))
    # Several feature columns travel as one array<float> (cast to float32 in Spark): Spark's
    # Arrow writer costs per row per vector, and Python gets a zero-copy (rows, width)
    # matrix instead of one Series or array per column (benchmarks/README.md, predict_udf).
    if all(isinstance(c, str) and "." not in c for c in cols):  # one SQL expression, not a py4j call
        # per column (a dotted name keeps F.col's struct-field resolution, below)
        return F.expr("array(" + ", ".join(f"CAST({_quoted(str(c))} AS FLOAT)" for c in cols) + ")"), "features"
    return F.array(*[(F.col(c) if isinstance(c, str) else c).cast("float") for c in cols]), "features"


def predict_udf(
    model_uri: str,
    *,
    format: str | None = None,  # noqa: A002 - the name the configs use (model.format)
    columns: Sequence[str] = ("score",),
    batch_size: int = 4096,
    device: str = "auto",
    precision: str = "fp32",
    kind: Literal["pandas", "arrow"] = "pandas",
    n_features: int | None = None,
    prefetch: int | None = None,
    check: bool = True,
    storage: Storage | None = None,
    loads: Any = None,
) -> PredictUDF:
    """A vectorized iterator UDF scoring ``model_uri``; call it on the feature columns.

    ``format``: ``onnx``, ``torchscript`` or ``torch_export`` (default: from the suffix, ``.onnx``,
    ``.pt``, ``.pt2``). ``columns``: the names of the model's outputs (one: a float column; several:
    a struct with these fields). ``device``: ``auto``, ``cpu`` or ``cuda``. ``n_features``: the
    feature width, needed only for the load-time warm-up and check of an array-input model whose
    artifact does not declare it. ``storage``: how executors reach a store URI (default: the
    standard environment variables as the driver sees them, passed to the tasks in the closure).
    """
    fmt = format or FORMATS.get(PurePosixPath(model_uri.split("?")[0]).suffix.lower())
    if fmt is None or fmt not in FORMATS.values():
        raise ConfigError(f"predict_udf({model_uri!r}): format {fmt!r} unknown; give format= one of "
                          f"{', '.join(sorted(set(FORMATS.values())))}")
    if kind not in KINDS:
        raise ConfigError(f"predict_udf: kind {kind!r} unknown; use 'pandas' or 'arrow'")
    if not columns or len(set(columns)) != len(columns):
        raise ConfigError(f"predict_udf: columns {list(columns)!r} must be distinct output names, at least one")
    if batch_size < 1:
        raise ConfigError(f"predict_udf: batch_size {batch_size} must be at least 1")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"predict_udf: device {device!r} unknown; use 'auto', 'cpu' or 'cuda'")
    model_uri = st.normalize(model_uri)
    if st.is_local(model_uri):  # the workers' working directory is not the driver's
        model_uri = str(Path(model_uri).resolve())
    store = (storage or DEFAULT).captured()
    data = read_artifact(model_uri, store)
    if check:
        width = _checked_width(data, fmt=fmt, uri=model_uri, precision=precision, n_features=n_features,
                               n_outputs=len(columns))
        n_features = n_features or width
    ref = ModelRef(uri=model_uri, sha256=hash_bytes(data), format=fmt, device=device, precision=precision,
                   n_features=n_features, storage=store)
    return PredictUDF(ref=ref, columns=tuple(columns), batch_size=batch_size, kind=kind, prefetch=prefetch,
                      loads=loads)


def _checked_width(data: bytes, *, fmt: str, uri: str, precision: str, n_features: int | None,
                   n_outputs: int) -> int | None:
    """Load the artifact on CPU, probe it with ``n_features`` (or the width it declares) and check
    the output count; the width, when known."""
    from batchscore.udfs.backends import check_model, load_backend

    backend = load_backend(data, fmt=fmt, uri=uri, device="cpu",
                           precision="fp32" if fmt == "onnx" else precision)
    width = n_features or backend.n_inputs
    if width is not None:
        check_model(backend, uri=uri, n_features=width, n_outputs=n_outputs)
    return width


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _label(col: Column) -> str:
    text = str(col)  # Column<'features'>
    return text[len("Column<'"):-2] if text.startswith("Column<'") and text.endswith("'>") else text


def _pandas_matrix(batch: Any, label: str, width: int | None) -> np.ndarray:
    """The float32 ``(rows, width)`` matrix of one pandas batch: a Series of arrays (the feature
    array, or the feature columns packed into one), a numeric Series (a one-feature model) or a
    DataFrame (a struct column's fields, in order)."""
    if isinstance(batch, pd.DataFrame):
        x = np.empty((len(batch), batch.shape[1]), dtype=np.float32)
        for j, c in enumerate(batch.columns):
            x[:, j] = batch[c].to_numpy(dtype=np.float32, na_value=np.nan)
        return x
    if batch.dtype != object:
        return batch.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
    values = batch.to_numpy()
    if batch.isna().any():
        raise InputDataError(f"feature array column '{label}' has {int(batch.isna().sum())} null row(s) in a batch; "
                             "fill or drop them upstream")
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    want = width if width is not None else (int(lengths[0]) if len(lengths) else 0)
    if len(lengths) and not (lengths == want).all():
        bad = int(lengths[np.argmax(lengths != want)])
        raise InputDataError(f"feature array column '{label}' has a row of length {bad}, expected {want}; "
                             f"every row must have exactly {want} values")
    if not len(values):
        return np.empty((0, want), dtype=np.float32)
    return np.concatenate(values).astype(np.float32, copy=False).reshape(len(values), want)


def _pandas_udf(u: PredictUDF, label: str) -> Any:
    ref, columns, batch_size, prefetch, loads = u.ref, list(u.columns), u.batch_size, u.prefetch, u.loads
    width = ref.n_features
    multi = len(columns) > 1

    def predict(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        matrices = ((None, _pandas_matrix(b, label, width)) for b in batches)
        for _, out in score_pieces(ref, matrices, n_outputs=len(columns), batch_size=batch_size,
                                   loads=loads, prefetch=prefetch):
            yield pd.DataFrame(out, columns=columns, copy=False) if multi else pd.Series(out[:, 0])

    return F.pandas_udf(predict, u.return_type)  # type: ignore[call-overload]


def _arrow_udf(u: PredictUDF, label: str) -> Any:
    ref, columns, batch_size, prefetch, loads = u.ref, list(u.columns), u.batch_size, u.prefetch, u.loads
    multi = len(columns) > 1
    fields = [pa.field(c, pa.float32()) for c in columns]

    def matrix(a: Any) -> np.ndarray:
        if pa.types.is_struct(a.type):  # a struct column: its fields in order
            names = [a.type.field(i).name for i in range(a.type.num_fields)]
            return features_matrix(a, names, None, len(names))
        if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) or pa.types.is_fixed_size_list(a.type):
            width = ref.n_features or (a.type.list_size if pa.types.is_fixed_size_list(a.type) else
                                       (int(a.value_lengths()[0].as_py()) if len(a) and a.is_valid()[0].as_py() else 0))
            return features_matrix(pa.StructArray.from_arrays([a], [label]), None, label, width)
        return features_matrix(pa.StructArray.from_arrays([a], ["_0"]), ["_0"], None, 1)

    def predict(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        pieces = ((None, matrix(a)) for a in arrays)
        for _, out in score_pieces(ref, pieces, n_outputs=len(columns), batch_size=batch_size, loads=loads,
                                   prefetch=prefetch):
            if multi:
                yield pa.StructArray.from_arrays([pa.array(out[:, j]) for j in range(len(columns))], fields=fields)
            else:
                yield pa.array(out[:, 0], type=pa.float32())

    return F.arrow_udf(predict, u.return_type)  # type: ignore[call-overload]
