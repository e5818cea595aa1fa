"""Scoring straight from the input's Parquet files: Spark schedules, the Python worker reads.

For a plain Parquet or Delta table (on local disk or any store :mod:`batchscore.storage` reaches)
the tasks read their own fragments (:mod:`batchscore.udfs._fragments`) instead of Spark's scan, build
the float32 matrix with :mod:`batchscore.udfs._arrow_input`, score it with the cached model and
return key + scores: the same rows and values as the Spark scan path
(:func:`batchscore.udfs.scoring.with_predictions`), without the JVM side of the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructField, StructType

from batchscore.storage import DEFAULT, Storage
from batchscore.udfs._arrow_input import features_matrix
from batchscore.udfs._fragments import (
    Fragment,
    fragment_frame,
    plan_fragments,
    read_fragments,
)
from batchscore.udfs.feature_hash import COLUMN as HASH
from batchscore.udfs.model_ref import ModelRef
from batchscore.udfs.quarantine import Screen
from batchscore.udfs.scoring import (
    HASHES_SCHEMA,
    Models,
    Sink,
    carried_fields,
    hash_column,
    output_schema,
    scored_batches,
    screened_pieces,
    sunk,
)

__all__ = ["plan_fragments", "with_predictions_from_files"]


def with_predictions_from_files(
    spark: SparkSession,
    fragments: Sequence[Fragment],
    ref: ModelRef | Models,
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
    screen: Screen | None = None,
    hashed: bool = False,
    only_keys: Any = None,
    reuse: Any = None,
) -> DataFrame:
    """``key`` + one float column per output for every row of ``fragments`` (one task each);
    ``physical``: the names the files store the columns under (Delta column mapping) when they
    differ; ``reuse`` (incremental scoring, with ``hashed`` and a sink): the
    reference's key, feature hash and outputs (:class:`batchscore.udfs.reuse.ReferenceFiles`, or a
    broadcast of :func:`batchscore.udfs.reuse.reference`), whose unchanged rows the tasks take instead of
    scoring them (:mod:`batchscore.udfs.reuse`);
    with a ``sink`` (see :func:`batchscore.udfs.scoring.with_predictions`), what the sink yields.

    ``key_type``: the key's Spark type as Spark's own scan reports it; the key read by pyarrow is
    cast to it, so both paths give the same schema.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    width = len(features) if features else (ref.n_features or 0)
    read = [key, *(features or [str(feature_array)])]
    key_arrow = to_arrow_type(key_type)
    names = [key, *([HASH] if hashed else []), *columns]
    schema = StructType([StructField(key, key_type, True), *carried_fields(hashed), *output_schema(columns).fields])

    def keyed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        wanted = None if only_keys is None else only_keys.value if hasattr(only_keys, "value") else only_keys
        for rb in read_fragments(batches, read, storage=storage, physical=physical):
            if rb.column(0).type != key_arrow:
                rb = rb.set_column(0, rb.schema.field(0).with_type(key_arrow), rb.column(0).cast(key_arrow))
            if wanted is not None:  # incremental: only these keys (and null keys, for the checks) are scored
                keep = pc.or_kleene(pc.is_in(rb.column(0), value_set=wanted), rb.column(0).is_null())
                rb = rb.filter(keep)
                if not rb.num_rows:
                    continue
            yield rb

    def to_matrix(rb: pa.RecordBatch) -> Any:
        return features_matrix(rb, features, feature_array, width)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rejected: list[pa.RecordBatch] = []
        if reuse is None:
            pieces = screened_pieces(keyed(batches), to_matrix, screen=screen, rejected=rejected, hashed=hashed)
            yield from scored_batches(ref, pieces, names=names, batch_size=batch_size, loads=loads,
                                      prefetch=prefetch, hashed=hashed, screen=screen, rejected=rejected)
            return
        from batchscore.udfs import reuse as R

        lookup, tally = R.lookup_for(reuse), R.Tally()
        side: list[pa.RecordBatch] = []
        pieces = R.reusing(
            screened_pieces(R.counted(keyed(batches), lookup, tally), to_matrix, screen=screen, rejected=rejected,
                            hashed=True), lookup, tally, side, names)
        for b in scored_batches(ref, pieces, names=names, batch_size=batch_size, loads=loads, prefetch=prefetch,
                                hashed=True, screen=screen, rejected=rejected):
            yield b
            while side:
                yield side.pop(0)
        while side:
            yield side.pop(0)
        yield R.tally_batch(tally)

    if reuse is not None and not (hashed and sink is not None):
        raise ValueError("reuse needs hashed=True and a sink (the staged writer records the task's counts)")
    return fragment_frame(spark, fragments).mapInArrow(*sunk(score, schema, sink))


def hashes_from_files(
    spark: SparkSession,
    fragments: Sequence[Fragment],
    *,
    key: str,
    key_type: Any,
    features: list[str] | None,
    feature_array: str | None,
    width: int,
    storage: Storage = DEFAULT,
    physical: dict[str, str] | None = None,
) -> DataFrame:
    """``key`` and each row's feature hash for every row of ``fragments`` (no model): the first
    pass of incremental scoring, from the same matrix the scoring pass builds."""
    from pyspark.sql.pandas.types import to_arrow_type

    read = [key, *(features or [str(feature_array)])]
    key_arrow = to_arrow_type(key_type)

    def to_matrix(rb: pa.RecordBatch) -> Any:
        return features_matrix(rb, features, feature_array, width)

    def hashes(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in read_fragments(batches, read, storage=storage, physical=physical):
            keys = rb.column(0) if rb.column(0).type == key_arrow else rb.column(0).cast(key_arrow)
            yield pa.RecordBatch.from_arrays(
                [keys, hash_column(rb, to_matrix, feature_array=feature_array, width=width)], names=[key, HASH])

    schema = StructType([StructField(key, key_type, True), *HASHES_SCHEMA])
    return fragment_frame(spark, fragments).mapInArrow(hashes, schema)
