"""Inside a scoring task: set bad rows aside instead of failing the task (``input.on_invalid: quarantine``).

A :class:`Screen` sits between the input's Arrow batches and the model. For each batch it finds

* ``null_key``: the key is null;
* ``null_array`` / ``array_length``: the feature array is null, or not ``input.feature_count`` long;
* ``non_finite_feature``: a feature is null, NaN or ±inf in the float32 matrix the model would see
  (nulls read as NaN), unless ``input.allow_nan``;

and, after the model, ``non_finite_output``: an output is NaN or ±inf. Those rows leave the batch
(the model and the staged predictions never see them) and come back as *reject* batches of
:data:`SCHEMA` (key as text, reason, the column at fault, a detail, the row's values as JSON),
marked by schema metadata (:func:`is_rejects`) so the task's sink writes them to the quarantine
table's staging instead of the predictions. Checking costs one ``isfinite`` pass over the matrix
and the key's null count: rows are only touched in Python when they are bad.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["REASONS", "SCHEMA", "Screen", "is_rejects"]

REASONS = ("null_key", "null_array", "array_length", "non_finite_feature", "non_finite_output")
_MARK = {b"batchscore": b"quarantine"}
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("reason", pa.string()),
        ("column", pa.string()),
        ("detail", pa.string()),
        ("values", pa.string()),
    ],
    metadata=_MARK,
)


def is_rejects(batch: pa.RecordBatch) -> bool:
    """Whether ``batch`` is a :class:`Screen`'s reject batch (not scored rows)."""
    md = batch.schema.metadata
    return bool(md) and md.get(b"batchscore") == b"quarantine"


def _json(values: Any) -> str:
    return json.dumps(values, allow_nan=True)


@dataclass(frozen=True)
class Screen:
    """What is checked (picklable: it travels in the task's closure). ``features``: the feature
    column names in model order, or None with ``feature_array`` (then column 1 of each batch is
    that array and is checked for length); ``outputs``: the output column names."""

    key: str
    width: int
    features: tuple[str, ...] | None = None
    feature_array: str | None = None
    outputs: tuple[str, ...] = ()
    allow_nan: bool = False

    def _feature_name(self, j: int) -> str:
        return self.features[j] if self.features else f"{self.feature_array}[{j}]"

    def _rejects(self, keys: pa.Array, reason: str, columns: list[str], details: list[str],
                 values: list[str]) -> pa.RecordBatch:
        n = len(keys)
        text = keys if keys.type == pa.string() else pc.cast(keys, pa.string())
        return pa.RecordBatch.from_arrays(
            [text, pa.array([reason] * n, pa.string()), pa.array(columns, pa.string()),
             pa.array(details, pa.string()), pa.array(values, pa.string())],
            schema=SCHEMA,
        )

    def inputs(
        self, batch: pa.RecordBatch, to_matrix: Callable[[pa.RecordBatch], np.ndarray]
    ) -> tuple[pa.Array, np.ndarray, list[pa.RecordBatch]]:
        """``(keys, matrix, rejects)`` of the good rows of ``batch`` (key in column 0)."""
        rejects: list[pa.RecordBatch] = []
        n = batch.num_rows
        keys = batch.column(0)
        keep = np.ones(n, dtype=bool)
        if keys.null_count:
            null = keys.is_null().to_numpy(zero_copy_only=False)
            idx = np.flatnonzero(null)
            rejects.append(self._rejects(keys.take(pa.array(idx)), "null_key", [self.key] * len(idx),
                                         ["the key is null"] * len(idx), ["null"] * len(idx)))
            keep &= ~null
        if self.feature_array is not None:
            arr = batch.column(1)
            lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False)
            wrong = (lengths != self.width) & keep
            if wrong.any():
                for reason, sel in (("null_array", wrong & (lengths < 0)), ("array_length", wrong & (lengths >= 0))):
                    idx = np.flatnonzero(sel)
                    if not len(idx):
                        continue
                    taken = arr.take(pa.array(idx)).to_pylist()
                    details = ["the feature array is null" if reason == "null_array"
                               else f"length {int(lengths[i])}, expected {self.width} (input.feature_count)"
                               for i in idx]
                    rejects.append(self._rejects(keys.take(pa.array(idx)), reason,
                                                 [self.feature_array] * len(idx), details,
                                                 [_json(v) for v in taken]))
                keep &= ~wrong
        if not keep.all():
            batch = batch.filter(pa.array(keep))
            keys = batch.column(0)
        x = to_matrix(batch)
        if not self.allow_nan and not np.isfinite(x).all():  # the whole batch first: the usual case is clean
            finite = np.isfinite(x).all(axis=1)
            if not finite.all():
                idx = np.flatnonzero(~finite)
                first = np.argmax(~np.isfinite(x[idx]), axis=1)
                rejects.append(self._rejects(
                    keys.take(pa.array(idx)), "non_finite_feature", [self._feature_name(int(j)) for j in first],
                    [f"value {x[i, j]!r} (null reads as nan; set input.allow_nan: true to score it)"
                     for i, j in zip(idx, first, strict=True)],
                    [_json(x[i].tolist()) for i in idx]))
                keys, x = keys.filter(pa.array(finite)), x[finite]
        return keys, x, rejects

    def outputs_ok(self, keys: Any, x: np.ndarray, out: np.ndarray) -> tuple[Any, np.ndarray, pa.RecordBatch | None]:
        """``(keys, outputs, rejects)`` with the rows whose outputs are not all finite set aside."""
        checked = out[:, : len(self.outputs)] if self.outputs else out  # a champion's: its challengers follow
        if np.isfinite(checked).all():
            return keys, out, None
        finite = np.isfinite(checked).all(axis=1)
        idx = np.flatnonzero(~finite)
        first = np.argmax(~np.isfinite(checked[idx]), axis=1)
        key_col = keys.field(0) if isinstance(keys, pa.StructArray) else keys
        names = self.outputs or tuple(f"output_{j}" for j in range(out.shape[1]))
        rejects = self._rejects(
            key_col.take(pa.array(idx)), "non_finite_output", [names[int(j)] for j in first],
            [_json(dict(zip(names, checked[i].tolist(), strict=True))) for i in idx],
            [_json(x[i].tolist()) for i in idx])
        mask = pa.array(finite)
        return keys.filter(mask), out[finite], rejects
