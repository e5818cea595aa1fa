"""Arrow -> matrix conversion, batch assembly, the model cache and thread settings (no Spark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchscore.errors import InputDataError, ModelError
from batchscore.testing.demo_data import (
    feature_matrix,
    mlp_forward,
    mlp_weights,
    write_onnx_mlp,
)
from batchscore.udfs._arrow_input import (
    Packing,
    assemble,
    features_matrix,
    matrix_from_columns,
    matrix_from_list,
    packed_matrix,
)
from batchscore.udfs.model_cache import LoadStatsParam, ModelCache
from batchscore.udfs.model_ref import model_ref
from batchscore.udfs.scoring import scored_batches


def test_columns_become_one_float32_matrix_with_casts_and_nan_for_nulls() -> None:
    cols = [pa.array([1.5, 2.5, None], pa.float32()), pa.array([1, 2, 3], pa.int64()), pa.array([0.25, None, 1.0])]
    x = matrix_from_columns(cols)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (3, 3)
    np.testing.assert_array_equal(x[0], [1.5, 1, 0.25])
    assert np.isnan(x[2, 0]) and np.isnan(x[1, 2])


def test_array_column_is_the_flat_values_buffer_reshaped_without_copy() -> None:
    x = feature_matrix(10, 4)
    arr = pa.ListArray.from_arrays(pa.array(np.arange(0, 41, 4), pa.int32()), pa.array(x.ravel()))
    m = matrix_from_list(arr, 4)
    np.testing.assert_array_equal(m, x)
    assert np.shares_memory(m, arr.values.to_numpy())  # a view of Arrow's buffer, not a copy
    sliced = arr.slice(3, 5)  # a slice keeps its offset: rows 3..7
    np.testing.assert_array_equal(matrix_from_list(sliced, 4), x[3:8])
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
    np.testing.assert_array_equal(matrix_from_list(fixed, 4), x)
    doubles = pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64()))
    assert matrix_from_list(doubles, 2).dtype == np.float32


def test_ragged_or_null_array_rows_are_refused_by_name() -> None:
    with pytest.raises(InputDataError, match=r"'emb' has a row of length 3, expected 2"):
        matrix_from_list(pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]]), 2, column="emb")
    with pytest.raises(InputDataError, match="null row"):
        matrix_from_list(pa.array([[1.0, 2.0], None]), 2, column="emb")


def test_struct_fields_are_looked_up_by_name() -> None:
    s = pa.StructArray.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], ["b", "a"])
    np.testing.assert_array_equal(features_matrix(s, ["a", "b"], None, 2), [[3, 1], [4, 2]])


def test_packed_features_are_a_zero_copy_matrix_when_all_are_in_the_array() -> None:
    x = feature_matrix(6, 3)
    arr = pa.ListArray.from_arrays(pa.array(np.arange(0, 19, 3), pa.int32()), pa.array(x.ravel()))
    batch = pa.RecordBatch.from_arrays([pa.array(np.arange(6)), arr], names=["k", "p"])
    m = packed_matrix(batch, Packing(3, "p", (0, 1, 2)))
    np.testing.assert_array_equal(m, x)
    assert np.shares_memory(m, arr.values.to_numpy())
    with_null = pa.array([[1.0, None, 3.0]], pa.list_(pa.float32()))  # a null feature value, as F.array gives it
    got = packed_matrix(pa.RecordBatch.from_arrays([with_null], names=["p"]), Packing(3, "p", (0, 1, 2)))
    assert got[0, 0] == 1 and np.isnan(got[0, 1]) and got[0, 2] == 3


def test_packed_and_column_features_go_back_to_their_positions() -> None:
    packed = pa.array([[0.5, 2.5], [1.5, None]], pa.list_(pa.float32()))  # features 3 and 0
    batch = pa.RecordBatch.from_arrays(
        [packed, pa.array([7, None], pa.int64()), pa.array([8, 9], pa.int32())], names=["p", "c1", "c2"])
    m = packed_matrix(batch, Packing(4, "p", (3, 0), ((1, "c1"), (2, "c2"))))
    assert m.dtype == np.float32 and m.flags.c_contiguous
    np.testing.assert_array_equal(m[0], [2.5, 7, 8, 0.5])
    assert np.isnan(m[1, 0]) and np.isnan(m[1, 1]) and list(m[1, 2:]) == [9, 1.5]
    only_columns = packed_matrix(batch, Packing(2, None, (), ((0, "c2"), (1, "c1"))))
    np.testing.assert_array_equal(only_columns[0], [8, 7])


def test_assemble_cuts_exact_batches_across_arrow_batches_in_order() -> None:
    sizes = [7, 3, 25, 1, 4]
    start, pieces = 0, []
    for n in sizes:
        pieces.append((pa.array(np.arange(start, start + n)),
                       np.arange(start, start + n, dtype=np.float32).reshape(-1, 1)))
        start += n
    out = list(assemble(iter(pieces), 10))
    assert [len(x) for _, x in out] == [10, 10, 10, 10]
    keys = np.concatenate([k.to_numpy() for k, _ in out])
    np.testing.assert_array_equal(keys, np.arange(40))
    np.testing.assert_array_equal(np.concatenate([x for _, x in out]).ravel(), np.arange(40))
    big = np.zeros((20, 2), np.float32)
    whole = list(assemble(iter([(None, big)]), 10))
    assert all(np.shares_memory(x, big) for _, x in whole)  # a batch inside one piece is a view


def _model(tmp_path: Path, name: str, seed: int = 7) -> str:
    return str(write_onnx_mlp(tmp_path / name, (8, 16, 1), seed=seed))


def test_scored_batches_run_model_batches_but_hand_back_large_arrow_batches(tmp_path: Path) -> None:
    ref = model_ref(_model(tmp_path, "m.onnx"), "onnx", "cpu", n_features=8)
    x = feature_matrix(1000, 8)
    pieces = [(pa.array(np.arange(i, min(i + 37, 1000))), x[i : i + 37]) for i in range(0, 1000, 37)]
    out = list(scored_batches(ref, iter(pieces), names=["id", "score"], batch_size=16, min_rows=300))
    # model batches of 16 gathered until >= 300 rows: 304, 304, 304, then the 88 left
    assert [b.num_rows for b in out] == [304, 304, 304, 88]
    table = pa.Table.from_batches(out)
    assert table.schema.names == ["id", "score"] and table.schema.field("score").type == pa.float32()
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(1000))
    np.testing.assert_allclose(table.column("score").to_numpy(), mlp_forward(mlp_weights((8, 16, 1)), x)[:, 0],
                               atol=1e-5)


def test_cache_is_keyed_by_content_and_counts_every_load(tmp_path: Path) -> None:
    a = model_ref(_model(tmp_path, "a.onnx"), "onnx", "cpu", n_features=8)
    same_bytes = model_ref(_model(tmp_path, "copy.onnx"), "onnx", "cpu", n_features=8)
    other = model_ref(_model(tmp_path, "b.onnx", seed=8), "onnx", "cpu", n_features=8)
    cache = ModelCache(max_models=4)
    backend, seconds = cache.get(a)
    assert seconds is not None and seconds > 0
    assert cache.get(same_bytes) == (backend, None)  # another path, same content: no reload
    cache.get(other)
    assert (cache.stats.loads, cache.stats.hits, len(cache)) == (2, 1, 2)
    x = feature_matrix(5, 8)
    np.testing.assert_allclose(backend.predict(x), mlp_forward(mlp_weights((8, 16, 1)), x), atol=1e-5)


def test_cache_is_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    refs = [model_ref(_model(tmp_path, f"m{i}.onnx", seed=i), "onnx", "cpu") for i in range(3)]
    by_count = ModelCache(max_models=2)
    for r in refs:
        by_count.get(r)
    assert len(by_count) == 2 and by_count.stats.evictions == 1
    assert by_count.get(refs[0])[1] is not None  # the least recently used went first: reloads
    size = Path(refs[0].uri).stat().st_size
    by_bytes = ModelCache(max_models=10, max_bytes=int(size * 1.5))
    for r in refs:
        by_bytes.get(r)
    assert len(by_bytes) == 1 and by_bytes.bytes <= size * 1.5


def test_changed_artifact_is_refused(tmp_path: Path) -> None:
    ref = model_ref(_model(tmp_path, "a.onnx"), "onnx", "cpu")
    _model(tmp_path, "a.onnx", seed=99)
    with pytest.raises(ModelError, match="content hash differs"):
        ModelCache().get(ref)


def test_load_stats_accumulate_counts_seconds_workers_and_devices() -> None:
    from batchscore.udfs.model_cache import cpu_fallbacks

    p = LoadStatsParam()
    total = p.addInPlace(p.addInPlace(p.zero([]), [1, 0.5, ["11"], ["cuda"]]), [1, 0.25, ["12"], ["cpu"]])
    assert total == [2, 0.75, ["11", "12"], ["cuda", "cpu"]]
    assert cpu_fallbacks(total) == 1 and cpu_fallbacks([1, 0.1, ["13"]]) == 0  # an event without devices
