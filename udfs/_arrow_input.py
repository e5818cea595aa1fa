"""Arrow in, float32 matrix out: the feature path with no per-row Python work.

* ``matrix_from_columns``: N numeric Arrow columns -> one C-contiguous float32 ``(rows, N)``
  matrix (one strided column copy each; nulls become NaN).
* ``matrix_from_list``: an ``array<float>`` column -> its flat values buffer reshaped to
  ``(rows, width)`` (zero-copy for float32 without nulls; no ``np.vstack`` over objects).
* ``packed_matrix``: the matrix of a batch whose features arrive partly packed into one
  ``array<float>`` column (what :func:`batchscore.udfs.scoring.with_predictions` asks Spark's JVM for:
  one Arrow vector per batch instead of one per feature, see :class:`Packing`) and partly as
  columns; all packed and in order is the zero-copy reshape of ``matrix_from_list``.
* ``assemble``: re-cut a stream of ``(passthrough, matrix)`` pieces into batches of exactly
  ``size`` rows (the last one shorter), whatever Spark's Arrow batch size is; a piece that covers
  a whole batch is sliced, not copied.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchscore.errors import InputDataError


def _float32(arr: Any) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.float32():
        arr = pc.cast(arr, pa.float32())
    return arr.to_numpy(zero_copy_only=False)  # nulls -> NaN


def matrix_from_columns(cols: Sequence[Any]) -> np.ndarray:
    n = len(cols[0]) if cols else 0
    x = np.empty((n, len(cols)), dtype=np.float32)
    for j, col in enumerate(cols):
        x[:, j] = _float32(col)
    return x


def matrix_from_list(arr: Any, width: int, *, column: str = "features") -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.empty((0, width), dtype=np.float32)
    if arr.null_count:
        raise InputDataError(
            f"feature array column '{column}' has {arr.null_count} null row(s) in a batch; fill or drop them upstream"
        )
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != width:
            raise InputDataError(
                f"feature array column '{column}' has length {arr.type.list_size}, expected {width} "
                "(input.feature_count)"
            )
    else:
        offsets = arr.offsets.to_numpy()
        lengths = np.diff(offsets)
        if not (lengths == width).all():
            bad = int(np.argmax(lengths != width))
            raise InputDataError(
                f"feature array column '{column}' has a row of length {int(lengths[bad])}, "
                f"expected {width} (input.feature_count); every row must have exactly {width} values"
            )
    values = _float32(arr.flatten())  # honours the array's own offset/slice
    return values.reshape(n, width)


def features_matrix(batch: Any, features: Sequence[str] | None, feature_array: str | None, width: int) -> np.ndarray:
    """The float32 matrix of a RecordBatch or StructArray (fields looked up by name)."""
    get = batch.column if isinstance(batch, pa.RecordBatch) else batch.field
    if features:
        return matrix_from_columns([get(c) for c in features])
    return matrix_from_list(get(str(feature_array)), width, column=str(feature_array))


@dataclass(frozen=True)
class Packing:
    """Where each of ``width`` features is in a batch: the ones at ``packed`` positions (in that
    order) are the elements of the ``array<float>`` column ``array``; the others are the columns
    ``columns`` (``(position, column name)``)."""

    width: int
    array: str | None
    packed: tuple[int, ...]
    columns: tuple[tuple[int, str], ...] = ()

    @property
    def all_packed(self) -> bool:
        return self.array is not None and self.packed == tuple(range(self.width))


def packed_matrix(batch: pa.RecordBatch, packing: Packing) -> np.ndarray:
    """The float32 ``(rows, width)`` matrix of ``batch`` laid out as ``packing`` says (nulls -> NaN)."""
    if packing.all_packed:
        return matrix_from_list(batch.column(packing.array), packing.width, column=str(packing.array))
    x = np.empty((batch.num_rows, packing.width), dtype=np.float32)
    if packing.array is not None:
        x[:, np.asarray(packing.packed, dtype=np.intp)] = matrix_from_list(
            batch.column(packing.array), len(packing.packed), column=packing.array
        )
    for j, name in packing.columns:
        x[:, j] = _float32(batch.column(name))
    return x


Piece = tuple[Any, np.ndarray]  # (an Arrow array carried along row for row, or None; the matrix)


def _join(buf: list[Piece]) -> Piece:
    if len(buf) == 1:
        return buf[0]
    carried = [p for p, _ in buf]
    joined = None if carried[0] is None else pa.concat_arrays(carried)
    return joined, np.concatenate([x for _, x in buf])


def assemble(pieces: Iterator[Piece], size: int) -> Iterator[Piece]:
    buf: list[Piece] = []
    have = 0
    for carried, x in pieces:
        start, n = 0, len(x)
        while start < n:
            take = min(size - have, n - start)
            part = (None if carried is None else carried.slice(start, take), x[start : start + take])
            start += take
            if not buf and take == size:
                yield part
                continue
            buf.append(part)
            have += take
            if have == size:
                yield _join(buf)
                buf, have = [], 0
    if buf:
        yield _join(buf)
