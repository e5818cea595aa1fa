"""The scoring core inside Spark tasks, Arrow-native.

* :func:`with_predictions` (what ``batchscore score`` uses): DataFrame -> DataFrame of
  ``key`` + one float column per model output, built on ``mapInArrow`` (no pandas, no row queue
  in the JVM).
* the column UDFs of :func:`batchscore.udfs.predict_udf` (pandas and arrow kinds) share
  :func:`score_pieces` with it.

Both read the model from the worker's :data:`batchscore.udfs.model_cache.CACHE` (loaded once per Python
worker, not per task or batch; the closure captures only the picklable :class:`ModelRef`), turn
each Arrow batch into one float32 matrix (``batchscore.udfs._arrow_input``), re-cut the rows into batches of
exactly ``batch_size`` across Arrow batches, and, when the model runs on a GPU (``prefetch``),
convert the next batch in a second thread while the model runs on the current one.

:func:`with_predictions` asks the JVM for the float and double feature columns packed into one
``array<float>`` column (``array(CAST(f AS FLOAT), ...)``: the same float32 values the Python-side
cast gives) rather than one Arrow vector per feature: Spark's Arrow writer costs per row *per
vector*, and the batch arrives in Python as a zero-copy ``(rows, width)`` matrix (measurements:
``benchmarks/README.md``, "Wide inputs"). Other column types (integers, decimals, booleans) come as
columns and are cast in Python, with the same checks and errors.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, LongType, StructField, StructType

from batchscore.errors import InputDataError, ModelError
from batchscore.udfs import model_cache
from batchscore.udfs._arrow_input import (
    Packing,
    Piece,
    assemble,
    matrix_from_list,
    packed_matrix,
)
from batchscore.udfs.feature_hash import COLUMN as HASH
from batchscore.udfs.feature_hash import row_hashes
from batchscore.udfs.model_cache import load_event
from batchscore.udfs.model_ref import ModelRef
from batchscore.udfs.quarantine import Screen

_END = object()


class Sink(Protocol):
    """What consumes a task's scored batches in the task itself, and the schema of what it yields."""

    @property
    def schema(self) -> StructType: ...

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]: ...


MapFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def sunk(fn: MapFn, schema: StructType, sink: Sink | None) -> tuple[MapFn, StructType]:
    """``mapInArrow`` arguments: ``fn`` itself, or ``fn`` followed by ``sink`` in the same task."""
    if sink is None:
        return fn, schema

    def through(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from sink(fn(batches))

    return through, sink.schema


def output_schema(columns: list[str]) -> StructType:
    return StructType([StructField(c, FloatType(), nullable=True) for c in columns])


@dataclass(frozen=True)
class Models:
    """Several models scored on the same batches in the same task (a champion and its
    challengers): their outputs side by side, the champion's first. Quacks like a
    :class:`ModelRef` where the scoring path needs one (``uri``, ``n_features``)."""

    refs: tuple[ModelRef, ...]
    outputs: tuple[int, ...]  # outputs per model

    @property
    def uri(self) -> str:
        return self.refs[0].uri

    @property
    def n_features(self) -> int | None:
        return self.refs[0].n_features


class _Side:
    """The backends of :class:`Models` as one: outputs concatenated in model order."""

    def __init__(self, models: Models, backends: list[Any]) -> None:
        self.models, self.backends = models, backends
        self.on_gpu = any(getattr(b, "on_gpu", False) for b in backends)

    def predict(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for ref, n, b in zip(self.models.refs, self.models.outputs, self.backends, strict=True):
            out = b.predict(x)
            if out.shape != (len(x), n):
                raise ModelError(
                    f"{ref.uri}: model returned shape {out.shape} for {len(x)} rows; expected ({len(x)}, {n})")
            outs.append(out)
        return np.concatenate(outs, axis=1)


def _one(ref: ModelRef, loads: Any) -> Any:
    backend, seconds = model_cache.CACHE.get(ref)  # module attribute: resolved in the worker
    if seconds is not None and loads is not None:
        loads.add(load_event(seconds, "cuda" if getattr(backend, "on_gpu", False) else "cpu"))
    return backend


def _model(ref: ModelRef | Models, loads: Any) -> Any:
    if isinstance(ref, Models):
        return _Side(ref, [_one(r, loads) for r in ref.refs])
    return _one(ref, loads)


def _prefetched(pieces: Iterator[Piece], depth: int) -> Iterator[Piece]:
    """Run ``pieces`` (reading + converting Arrow batches) in a thread, ``depth`` ahead."""
    if depth <= 0:
        yield from pieces
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for piece in pieces:
                if not put(piece):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming (task) thread
            put(exc)

    thread = threading.Thread(target=produce, name="batchscore-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def score_pieces(
    ref: ModelRef | Models,
    pieces: Iterator[Piece],
    *,
    n_outputs: int,
    batch_size: int,
    loads: Any = None,
    prefetch: int | None = None,
    screen: Screen | None = None,
    rejected: list[pa.RecordBatch] | None = None,
) -> Iterator[tuple[Any, np.ndarray]]:
    """``(carried, scores)`` per model batch of ``batch_size`` rows; scores float32 (rows, n_outputs).

    ``screen`` (:mod:`batchscore.udfs.quarantine`): rows whose outputs are not all finite are left
    out and their reject batch is appended to ``rejected``.

    ``prefetch``: pieces read and converted ahead in a second thread; ``None`` (the default) means
    2 when the model runs on a GPU (the device would otherwise wait on the CPU work) and 0 on CPU,
    where the model already keeps the task's cores busy and the thread only adds hand-offs
    (``benchmarks/README.md``).
    """
    backend = _model(ref, loads)
    if prefetch is None:
        prefetch = 2 if getattr(backend, "on_gpu", False) else 0
    # The thread reads and converts whole pieces (Arrow batches, file slices) ahead; cutting them
    # into model batches is cheap slicing, done here: one hand-off per piece, not per model batch.
    for carried, x in assemble(_prefetched(pieces, prefetch), batch_size):
        out = backend.predict(x)
        if out.shape != (len(x), n_outputs):
            raise ModelError(
                f"{ref.uri}: model returned shape {out.shape} for {len(x)} rows; "
                f"outputs.columns expects ({len(x)}, {n_outputs})"
            )
        if screen is not None:
            carried, out, bad = screen.outputs_ok(carried, x, out)
            if bad is not None:
                assert rejected is not None
                rejected.append(bad)
        yield carried, out


def _arrays(out: np.ndarray) -> list[pa.Array]:
    return [pa.array(out[:, j], type=pa.float32()) for j in range(out.shape[1])]


OUTPUT_ROWS = 65536  # rows per Arrow batch handed back to the JVM (at least one model batch)


def scored_batches(
    ref: ModelRef | Models,
    pieces: Iterator[Piece],
    *,
    names: list[str],
    batch_size: int,
    loads: Any = None,
    prefetch: int | None = None,
    min_rows: int = OUTPUT_ROWS,
    hashed: bool = False,
    screen: Screen | None = None,
    rejected: list[pa.RecordBatch] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Key + score RecordBatches of ``names`` for ``(keys, matrix)`` pieces.

    The model runs on ``batch_size`` rows at a time, but a small model batch is not worth one Arrow
    batch to the JVM each (per-batch cost on both sides): outputs are gathered into batches of at
    least ``min_rows`` rows (the last one shorter). A carried ``StructArray`` (the key and the
    feature hash, :mod:`batchscore.udfs.feature_hash`) becomes its fields' columns.

    ``screen``/``rejected``: the task's quarantine (:mod:`batchscore.udfs.quarantine`); the reject
    batches the pieces and the outputs check put in ``rejected`` are yielded as they come, marked
    (:func:`batchscore.udfs.quarantine.is_rejects`), for the task's sink.
    """
    if rejected is None and screen is not None:
        rejected = []
    keys: list[Any] = []
    outs: list[np.ndarray] = []
    have = 0

    def flush() -> pa.RecordBatch:
        k = keys[0] if len(keys) == 1 else pa.concat_arrays(keys)
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        keys.clear()
        outs.clear()
        carried = k.flatten() if isinstance(k, pa.StructArray) else [k]
        return pa.RecordBatch.from_arrays([*carried, *_arrays(out)], names=names)

    def drain() -> Iterator[pa.RecordBatch]:
        while rejected:
            yield rejected.pop(0)

    n_carried = 2 if hashed else 1
    for k, out in score_pieces(
        ref, pieces, n_outputs=len(names) - n_carried, batch_size=batch_size, loads=loads, prefetch=prefetch,
        screen=screen, rejected=rejected,
    ):
        keys.append(k)
        outs.append(out)
        have += len(out)
        if have >= min_rows:
            yield flush()
            have = 0
        yield from drain()
    if keys:
        yield flush()
    yield from drain()


def with_predictions(
    df: DataFrame,
    ref: ModelRef | Models,
    *,
    key: str,
    features: list[str] | None,
    feature_array: str | None,
    columns: list[str],
    batch_size: int,
    loads: Any = None,
    prefetch: int | None = None,
    sink: Sink | None = None,
    screen: Screen | None = None,
    hashed: bool = False,
) -> DataFrame:
    """``df``'s ``key`` and the model's outputs, one float column per name in ``columns``.

    ``sink``: consumes the scored batches inside the same task (e.g. writes them to storage,
    :class:`batchscore.udfs._staged_write.StagedWriter`); the frame is then what the sink yields.
    ``screen``: bad rows are set aside for the sink (:mod:`batchscore.udfs.quarantine`; needs a
    sink); ``hashed``: a ``feature_hash`` column follows the key (:mod:`batchscore.udfs.feature_hash`)."""
    width = len(features) if features else (ref.n_features or 0)
    frame, to_matrix = _scan_frame(df, key, features, feature_array, width)
    schema = StructType([df.schema[key], *carried_fields(hashed), *output_schema(columns).fields])
    names = [key, *([HASH] if hashed else []), *columns]

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rejected: list[pa.RecordBatch] = []
        pieces = screened_pieces(batches, to_matrix, screen=screen, rejected=rejected, hashed=hashed)
        yield from scored_batches(ref, pieces, names=names, batch_size=batch_size, loads=loads, prefetch=prefetch,
                                  hashed=hashed, screen=screen, rejected=rejected)

    return frame.mapInArrow(*sunk(score, schema, sink))


def hash_column(b: pa.RecordBatch, to_matrix: Callable[[pa.RecordBatch], np.ndarray], *,
                feature_array: str | None, width: int) -> pa.Array:
    """Each row's feature hash (int64); null for a row whose feature array is null or not ``width``
    long (it cannot be reused: the scoring pass decides what happens to it)."""
    try:
        return pa.array(row_hashes(to_matrix(b)), pa.int64())
    except InputDataError:
        if feature_array is None:
            raise
    lengths = pc.list_value_length(b.column(1)).fill_null(-1).to_numpy(zero_copy_only=False)
    ok = lengths == width
    h = np.zeros(b.num_rows, dtype=np.int64)
    h[ok] = row_hashes(to_matrix(b.filter(pa.array(ok))))
    return pa.array(h, pa.int64(), mask=~ok)


HASHES_SCHEMA = [StructField(HASH, LongType(), True)]


def hashes_frame(df: DataFrame, *, key: str, features: list[str] | None, feature_array: str | None,
                 width: int) -> DataFrame:
    """``df``'s key and each row's feature hash (no model): the first pass of incremental scoring."""
    frame, to_matrix = _scan_frame(df, key, features, feature_array, width)

    def hashes(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield pa.RecordBatch.from_arrays(
                [b.column(0), hash_column(b, to_matrix, feature_array=feature_array, width=width)], names=[key, HASH])

    return frame.mapInArrow(hashes, StructType([df.schema[key], *HASHES_SCHEMA]))


def carried_fields(hashed: bool) -> list[StructField]:
    """The columns between the key and the outputs: the feature hash when ``hashed``."""
    return [StructField(HASH, LongType(), True)] if hashed else []  # nullable: as the copied rows' column


def screened_pieces(
    batches: Iterator[pa.RecordBatch],
    to_matrix: Callable[[pa.RecordBatch], np.ndarray],
    *,
    screen: Screen | None = None,
    rejected: list[pa.RecordBatch] | None = None,
    hashed: bool = False,
) -> Iterator[Piece]:
    """``(keys, matrix)`` per batch (key in column 0): with a ``screen`` its bad rows are left out
    (their reject batches appended to ``rejected``); ``hashed``: the keys travel as a struct of the
    key and each row's feature hash."""
    for b in batches:
        if screen is not None:
            keys, x, bad = screen.inputs(b, to_matrix)
            assert rejected is not None
            rejected.extend(bad)
        else:
            keys, x = b.column(0), to_matrix(b)
        if hashed:
            keys = pa.StructArray.from_arrays([keys, pa.array(row_hashes(x), pa.int64())], names=["key", HASH])
        yield keys, x


_PACKED = "__batchscore_features"


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _scan_frame(
    df: DataFrame, key: str, features: list[str] | None, feature_array: str | None, width: int
) -> tuple[DataFrame, Callable[[pa.RecordBatch], np.ndarray]]:
    """``df`` reduced to the key and the features as :func:`with_predictions` hands them to
    ``mapInArrow``, and how one of its batches becomes the float32 matrix.

    ``features``: the float/double ones packed into one ``array<float>`` (cast to float in the
    JVM: Java's double->float rounding is IEEE round-to-nearest-even, as Arrow's cast is), the
    others as columns, named by position. ``feature_array``: an ``array<double>`` is cast to
    ``array<float>`` (half the bytes through Arrow; zero-copy in Python).

    When every name is a top-level column of ``df`` (the usual case) the projection is one
    ``selectExpr`` call: building it column by column costs one py4j round trip per call, ≈ 1.3 s
    on the driver for 500 columns. Other names (``a.b`` for a struct field, another case) keep
    ``F.col``'s resolution, column by column.
    """
    prefix = _PACKED
    while prefix == key or key.startswith(prefix):  # no output name may equal the key
        prefix = f"_{prefix}"
    inputs = list(features) if features else [str(feature_array)]
    top = {f.name: f.dataType for f in df.schema.fields}
    direct = key in top and all(c in top for c in inputs)
    types = [top[c] for c in inputs] if direct else [f.dataType for f in df.select(*inputs).schema.fields]

    if not features:
        name, dtype = inputs[0], types[0]
        to_float = isinstance(dtype, ArrayType) and isinstance(dtype.elementType, DoubleType)
        if direct:
            expr = f"CAST({_quoted(name)} AS ARRAY<FLOAT>)" if to_float else _quoted(name)
            frame = df.selectExpr(_quoted(key), f"{expr} AS {_quoted(prefix)}")
        else:
            nullable = getattr(dtype, "containsNull", True)
            col = F.col(name).cast(ArrayType(FloatType(), nullable)) if to_float else F.col(name)
            frame = df.select(key, col.alias(prefix))

        def from_array(b: pa.RecordBatch) -> np.ndarray:
            return matrix_from_list(b.column(1), width, column=name)

        return frame, from_array

    floats = tuple(j for j, t in enumerate(types) if isinstance(t, (FloatType, DoubleType)))
    others = [j for j in range(len(features)) if j not in set(floats)]
    packing = Packing(width, prefix if floats else None, floats, tuple((j, f"{prefix}_{j}") for j in others))
    if direct:
        exprs = (
            [f"array({', '.join(f'CAST({_quoted(features[j])} AS FLOAT)' for j in floats)}) AS {_quoted(prefix)}"]
            if floats
            else []
        )
        exprs += [f"{_quoted(features[j])} AS {_quoted(f'{prefix}_{j}')}" for j in others]
        frame = df.selectExpr(_quoted(key), *exprs)
    else:
        cols = [F.array(*[F.col(features[j]).cast(FloatType()) for j in floats]).alias(prefix)] if floats else []
        cols += [F.col(features[j]).alias(f"{prefix}_{j}") for j in others]
        frame = df.select(key, *cols)

    def from_packed(b: pa.RecordBatch) -> np.ndarray:
        return packed_matrix(b, packing)

    return frame, from_packed
