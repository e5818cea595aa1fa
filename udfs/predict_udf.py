"""The prediction UDF: a vectorized iterator ``pandas_udf`` over the feature columns.

The model comes from the worker's :data:`udfs.model_cache.CACHE` (loaded once per Python worker,
not per task or batch); the closure captures only the picklable :class:`ModelRef`. Each Arrow
batch becomes one contiguous float32 matrix, scored in chunks of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import FloatType, StructField, StructType

from batchscore.errors import ModelError
from udfs import model_cache
from udfs.model_ref import ModelRef


def output_schema(columns: list[str]) -> StructType:
    return StructType([StructField(c, FloatType(), nullable=True) for c in columns])


def _score(backend: Any, x: np.ndarray, batch_size: int, columns: list[str], uri: str) -> pd.DataFrame:
    parts = [backend.predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    out = np.concatenate(parts) if parts else np.empty((0, len(columns)), np.float32)
    if out.ndim == 1:
        out = out.reshape(-1, 1)
    if out.shape != (len(x), len(columns)):
        raise ModelError(
            f"{uri}: model returned shape {out.shape} for {len(x)} rows; "
            f"outputs.columns expects ({len(x)}, {len(columns)})"
        )
    return pd.DataFrame(out, columns=columns)


def predict_column(
    ref: ModelRef,
    *,
    features: list[str] | None,
    feature_array: str | None,
    columns: list[str],
    batch_size: int,
    loads: Any = None,
) -> Column:
    """A struct column of the model's outputs (one float field per output column).

    ``loads``: an optional Spark accumulator of ``[loads, load_seconds]`` pairs.
    """
    schema = output_schema(columns)

    def _model() -> Any:
        backend, seconds = model_cache.CACHE.get(ref)  # module attribute: pickled by reference
        if seconds is not None and loads is not None:
            loads.add([1, seconds])
        return backend

    if features:

        @pandas_udf(schema)  # type: ignore[call-overload]
        def predict_struct(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            backend = _model()
            for pdf in batches:
                x = np.ascontiguousarray(pdf.to_numpy(dtype=np.float32, copy=False))
                yield _score(backend, x, batch_size, columns, ref.uri)

        return predict_struct(F.struct(*[F.col(c) for c in features]))

    @pandas_udf(schema)  # type: ignore[call-overload]
    def predict_array(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        backend = _model()
        for s in batches:
            x = np.stack(s.to_numpy()).astype(np.float32, copy=False) if len(s) else np.empty((0, 0), np.float32)
            yield _score(backend, x, batch_size, columns, ref.uri)

    return predict_array(F.col(str(feature_array)))
