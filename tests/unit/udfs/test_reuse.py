"""Reuse inside the scoring task (no Spark): rows whose key and feature hash the reference holds take
its outputs bit for bit, the others go on to the model; the tally counts rows, keys found and reused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchscore.udfs import reuse as R
from batchscore.udfs.feature_hash import COLUMN as HASH


def _piece(keys: list[int | None], hashes: list[int | None]) -> tuple[pa.StructArray, np.ndarray]:
    k, h = pa.array(keys, pa.int64()), pa.array(hashes, pa.int64())
    x = np.arange(len(keys) * 2, dtype=np.float32).reshape(len(keys), 2)
    return pa.StructArray.from_arrays([k, h], names=["key", HASH]), x


@pytest.mark.parametrize("key_type", [pa.int64(), pa.string()])
def test_unchanged_rows_take_the_reference_outputs_and_the_rest_go_to_the_model(key_type: pa.DataType) -> None:
    ref = pa.table({"id": pa.array([10, 11, 12, 13], pa.int64()).cast(key_type),
                    HASH: pa.array([1, 2, 3, None], pa.int64()),
                    "score": pa.array([0.5, 0.25, np.float32(1 / 3), 0.75], pa.float32())})
    lookup = R.lookup_for(R.reference(ref))
    assert R.lookup_for(R.reference(ref)) is not lookup  # a new broadcast: a new index
    tally, side = R.Tally(), []
    keys, x = _piece([10, 11, 12, 13, 14, None], [1, 99, 3, 4, 5, 6])  # 10, 12 same; 11 changed; 13 unhashed
    if key_type == pa.string():
        keys = pa.StructArray.from_arrays([keys.field(0).cast(pa.string()), keys.field(1)], names=["key", HASH])
    batch = pa.RecordBatch.from_arrays([keys.field(0)], names=["id"])
    assert list(R.counted(iter([batch]), lookup, tally)) == [batch]
    out = list(R.reusing(iter([(keys, x)]), lookup, tally, side, ["id", HASH, "score"]))
    assert (tally.rows, tally.found, tally.reused) == (6, 4, 2)  # null key never found
    [(rest, xr)] = out
    assert rest.field(0).to_pylist() == [str(k) if key_type == pa.string() else k for k in (11, 13, 14)] + [None]
    assert xr.tolist() == x[[1, 3, 4, 5]].tolist()
    [reused] = side
    assert reused.schema.names == ["id", HASH, "score"]
    assert reused.column(0).cast(pa.int64()).to_pylist() == [10, 12] and reused.column(1).to_pylist() == [1, 3]
    assert reused.column(2).to_numpy().tobytes() == np.array([0.5, 1 / 3], np.float32).tobytes()  # the bits


def test_a_piece_of_only_reused_rows_is_not_passed_on_and_the_tally_batch_round_trips() -> None:
    ref = pa.table({"id": pa.array([1, 2], pa.int64()), HASH: pa.array([7, 8], pa.int64()),
                    "score": pa.array([0.1, 0.2], pa.float32())})
    lookup, tally, side = R.lookup_for(R.reference(ref)), R.Tally(), []
    assert list(R.reusing(iter([_piece([2, 1], [8, 7])]), lookup, tally, side, ["id", HASH, "score"])) == []
    assert side[0].column(0).to_pylist() == [2, 1] and side[0].column(2).to_pylist() == pytest.approx([0.2, 0.1])
    marker = R.tally_batch(tally)
    assert marker.num_rows == 0 and R.tally_of(marker) == '{"rows": 0, "found": 0, "reused": 2}'
    assert R.tally_of(side[0]) is None


def test_a_reference_read_from_its_files_is_the_drivers_copy_cast_once_per_worker(tmp_path) -> None:
    import pyarrow.parquet as pq

    from batchscore.storage import DEFAULT

    parts = [pa.table({"id": pa.array([5, 6], pa.int32()), HASH: pa.array([1, 2], pa.int64()),
                       "score": pa.array([0.1, 0.2], pa.float64()), "extra": pa.array(["a", "b"])}),
             pa.table({"id": pa.array([7], pa.int32()), HASH: pa.array([None], pa.int64()),
                       "score": pa.array([0.3], pa.float64()), "extra": pa.array(["c"])})]
    uris = []
    for i, t in enumerate(parts):
        pq.write_table(t, tmp_path / f"p{i}.parquet")
        uris.append(str(tmp_path / f"p{i}.parquet"))
    files = R.ReferenceFiles("tok-1", tuple(uris), ("id", HASH, "score"), pa.int64(), DEFAULT)
    got = files.read()
    assert got.schema == pa.schema([("id", pa.int64()), (HASH, pa.int64()), ("score", pa.float32())])
    assert got.column("id").to_pylist() == [5, 6, 7] and got.column(HASH).to_pylist() == [1, 2, None]
    assert got.column("score").to_numpy().tobytes() == np.array([0.1, 0.2, 0.3], np.float32).tobytes()
    lookup = R.lookup_for(files)
    assert R.lookup_for(files) is lookup  # read once per worker and token
    assert lookup.positions(pa.array([7, 5, 99], pa.int64())).tolist() == [2, 0, -1]
    assert R.lookup_for(R.ReferenceFiles("tok-2", (uris[0],), ("id", HASH, "score"), pa.int64(), DEFAULT)) \
        is not lookup  # another run's reference: read again


def test_a_reference_whose_keys_repeat_is_refused_naming_the_key() -> None:
    from batchscore.errors import InputDataError

    ref = pa.table({"id": pa.array([3, 4, 3], pa.int64()), HASH: pa.array([1, 2, 3], pa.int64()),
                    "score": pa.array([0.1, 0.2, 0.3], pa.float32())})
    with pytest.raises(InputDataError, match=r"holds key 3 more than once.*--full"):
        R.lookup_for(R.reference(ref))


def test_the_same_keys_asked_twice_in_a_row_are_looked_up_once_and_new_keys_afresh() -> None:
    ref = pa.table({"id": pa.array([1, 2, 3], pa.int64()), HASH: pa.array([7, 8, 9], pa.int64()),
                    "score": pa.array([0.1, 0.2, 0.3], pa.float32())})
    lookup = R.lookup_for(R.reference(ref))
    keys = pa.array([3, None, 1, 5], pa.int64())
    first = lookup.positions(keys)
    assert first.tolist() == [2, -1, 0, -1]
    as_field = pa.StructArray.from_arrays([keys, pa.array([0, 0, 0, 0], pa.int64())], names=["key", HASH]).field(0)
    assert lookup.positions(as_field) is first  # the same buffers: no second lookup
    assert lookup.positions(keys.slice(1)).tolist() == [-1, 0, -1]  # another view: looked up again
    assert lookup.positions(pa.array([3, 2, 1, 5], pa.int64())).tolist() == [2, 1, 0, -1]  # equal length, new values
    with pytest.raises(ValueError):
        first[0] = 9  # read only: callers cannot corrupt what the next one gets
