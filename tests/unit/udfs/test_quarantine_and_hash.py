"""The task-side pieces of issue 16 without Spark: the row screen and the feature hash."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from batchscore.errors import InputDataError
from batchscore.udfs._arrow_input import features_matrix, matrix_from_list
from batchscore.udfs.feature_hash import row_hashes
from batchscore.udfs.quarantine import SCHEMA, Screen, is_rejects


def test_row_hashes_follow_every_bit_and_the_width() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 7)).astype(np.float32)
    h = row_hashes(x)
    assert h.dtype == np.int64 and len(np.unique(h)) == 1000
    assert np.array_equal(h, row_hashes(x.copy()))  # deterministic
    assert np.array_equal(h[10:20], row_hashes(x[10:20]))  # a row's hash does not depend on its batch
    for j in range(7):  # one ulp in any feature changes the hash
        y = x.copy()
        y[5, j] = np.nextafter(y[5, j], np.float32(np.inf))
        assert row_hashes(y)[5] != h[5]
    padded = np.concatenate([x, np.zeros((1000, 1), np.float32)], axis=1)
    assert not np.intersect1d(row_hashes(padded), h).size  # the width is part of the hash
    nan = x.copy()
    nan[3, 2] = np.nan
    assert row_hashes(nan)[3] != h[3]


def _batch(keys: list[int | None], cols: dict[str, list[float | None]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(keys, pa.int64()), *[pa.array(v, pa.float32()) for v in cols.values()]],
                                      names=["k", *cols])


def test_screen_sets_aside_null_keys_and_non_finite_features() -> None:
    b = _batch([1, None, 3, 4, 5], {"a": [1.0, 2.0, None, 4.0, 5.0], "b": [1.0, 1.0, 1.0, float("inf"), 2.0]})
    screen = Screen(key="k", width=2, features=("a", "b"), outputs=("score",))
    keys, x, rejects = screen.inputs(b, lambda rb: features_matrix(rb, ["a", "b"], None, 2))
    assert keys.to_pylist() == [1, 5] and x.tolist() == [[1.0, 1.0], [5.0, 2.0]]
    got = pa.Table.from_batches(rejects).to_pylist()
    assert [(r["key"], r["reason"], r["column"]) for r in got] == [
        (None, "null_key", "k"), ("3", "non_finite_feature", "a"), ("4", "non_finite_feature", "b")]
    assert json.loads(got[2]["values"]) == [4.0, float("inf")]
    assert all(is_rejects(r) and r.schema.equals(SCHEMA) for r in rejects)

    allow = Screen(key="k", width=2, features=("a", "b"), allow_nan=True)
    keys, x, rejects = allow.inputs(b, lambda rb: features_matrix(rb, ["a", "b"], None, 2))
    assert keys.to_pylist() == [1, 3, 4, 5] and [r.num_rows for r in rejects] == [1]


def test_screen_checks_array_lengths_before_building_the_matrix() -> None:
    arr = pa.array([[1.0, 2.0], [1.0], None, [3.0, 4.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32()))
    b = pa.RecordBatch.from_arrays([pa.array([1, 2, 3, 4, 5], pa.int64()), arr], names=["k", "v"])
    with pytest.raises(InputDataError, match="null row"):  # what on_invalid: fail does
        matrix_from_list(arr, 2, column="v")
    screen = Screen(key="k", width=2, feature_array="v")
    keys, x, rejects = screen.inputs(b, lambda rb: matrix_from_list(rb.column(1), 2, column="v"))
    assert keys.to_pylist() == [1, 4] and x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    got = sorted((r["key"], r["reason"], r["detail"]) for r in pa.Table.from_batches(rejects).to_pylist())
    assert got == [("2", "array_length", "length 1, expected 2 (input.feature_count)"),
                   ("3", "null_array", "the feature array is null"),
                   ("5", "array_length", "length 3, expected 2 (input.feature_count)")]


def test_screen_sets_aside_non_finite_outputs_with_their_struct_keys() -> None:
    screen = Screen(key="k", width=1, features=("a",), outputs=("p", "q"))
    keys = pa.StructArray.from_arrays([pa.array([7, 8, 9], pa.int64()), pa.array([1, 2, 3], pa.int64())],
                                      names=["key", "feature_hash"])
    out = np.array([[0.1, 0.2], [np.nan, 0.3], [0.4, np.inf]], dtype=np.float32)
    kept, scores, rejects = screen.outputs_ok(keys, np.ones((3, 1), np.float32), out)
    assert kept.field(0).to_pylist() == [7] and scores.shape == (1, 2)
    assert rejects is not None
    rows = rejects.to_pylist()
    assert [(r["key"], r["reason"], r["column"]) for r in rows] == [
        ("8", "non_finite_output", "p"), ("9", "non_finite_output", "q")]
