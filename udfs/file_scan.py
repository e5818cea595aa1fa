"""Scoring straight from the input's Parquet files: Spark schedules, the Python worker reads.

For a plain Parquet or Delta table (on local disk or any store :mod:`batchscore.storage` reaches)
the tasks read their own fragments (:mod:`batchscore.udfs.fragments`) instead of Spark's scan, build
the float32 matrix with :mod:`batchscore.udfs.arrow_input`, score it with the cached model and
return key + scores: the same rows and values as the Spark scan path
(:func:`batchscore.udfs.scoring.with_predictions`), without the JVM side of the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructField, StructType

from batchscore.storage import DEFAULT, Storage
from batchscore.udfs.arrow_input import Piece, features_matrix
from batchscore.udfs.fragments import (
    Fragment,
    fragment_frame,
    plan_fragments,
    read_fragments,
)
from batchscore.udfs.model_ref import ModelRef
from batchscore.udfs.scoring import Sink, output_schema, scored_batches, sunk

__all__ = ["plan_fragments", "with_predictions_from_files"]


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
    prefetch: int | None = None,
    sink: Sink | None = None,
    storage: Storage = DEFAULT,
    physical: dict[str, str] | None = None,
) -> DataFrame:
    """``key`` + one float column per output for every row of ``fragments`` (one task each);
    ``physical``: the names the files store the columns under (Delta column mapping) when they
    differ;
    with a ``sink`` (see :func:`batchscore.udfs.scoring.with_predictions`), what the sink yields.

    ``key_type``: the key's Spark type as Spark's own scan reports it; the key read by pyarrow is
    cast to it, so both paths give the same schema.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    width = len(features) if features else (ref.n_features or 0)
    read = [key, *(features or [str(feature_array)])]
    key_arrow = to_arrow_type(key_type)
    names = [key, *columns]
    schema = StructType([StructField(key, key_type, True), *output_schema(columns).fields])

    def pieces(batches: Iterator[pa.RecordBatch]) -> Iterator[Piece]:
        for rb in read_fragments(batches, read, storage=storage, physical=physical):
            keys = rb.column(0)
            if keys.type != key_arrow:
                keys = keys.cast(key_arrow)
            yield keys, features_matrix(rb, features, feature_array, width)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from scored_batches(
            ref, pieces(batches), names=names, batch_size=batch_size, loads=loads, prefetch=prefetch
        )

    return fragment_frame(spark, fragments).mapInArrow(*sunk(score, schema, sink))
