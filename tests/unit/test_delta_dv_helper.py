"""batchscore.testing.delta_dv writes deletion vectors that delta-rs itself reads back exactly.

Each case writes a real table with ``deltalake.write_deltalake``, marks rows deleted with
:func:`delete_rows`, then asks delta-rs: ``DeltaTable.deletion_vectors()`` (per file, False = deleted)
must list exactly the deleted positions, and its DataFusion reads (``QueryBuilder`` SQL and
``DeltaTable.scan()``, which apply DVs) must return exactly the other rows. The DV bytes are also
checked against the protocol's layout (version byte, big-endian size and CRC-32, magic number) and
the encoders against the examples in PROTOCOL.md.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import DeltaProtocolError

from batchscore.testing.delta_dv import (
    PORTABLE_MAGIC,
    decode_roaring_array,
    delete_rows,
    encode_roaring_array,
    z85_decode,
    z85_encode,
)

STORAGE_TYPES = ["u", "i"]


def _make_table(path: Path, sizes: Sequence[int], **kwargs: Any) -> list[str]:
    """One data file per entry of ``sizes`` (a write, then appends); ids run on across files.
    Returns the files' log paths in write order."""
    start, files = 0, list[str]()
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n, dtype=np.int64)
        data = pa.table({"id": ids, "x": ids * 0.5})
        write_deltalake(str(path), data, mode="overwrite" if i == 0 else "append", **kwargs)
        added = set(_add_paths(path)) - set(files)
        assert len(added) == 1
        files.append(added.pop())
        start += n
    return files


def _add_paths(path: Path) -> list[str]:
    return [str(p) for p in pa.table(DeltaTable(str(path)).get_add_actions()).column("path").to_pylist()]


def _file_ids(path: Path, rel: str) -> list[int]:
    """The file's ids by row position, read from the Parquet file itself."""
    return [int(v) for v in pq.read_table(path / rel, columns=["id"]).column("id").to_pylist()]


def _delta_rs_deleted(dt: DeltaTable, n_rows: Mapping[str, int]) -> dict[str, set[int]]:
    """Per file (log path), the positions delta-rs's own DV reader reports deleted."""
    out: dict[str, set[int]] = {}
    table = pa.table(dt.deletion_vectors())
    root = dt.table_uri.rstrip("/") + "/"
    for uri, selection in zip(table.column("filepath").to_pylist(), table.column("selection_vector").to_pylist(),
                              strict=True):
        rel = uri[len(root):] if uri.startswith(root) else uri.rsplit("/", 1)[-1]
        assert len(selection) == n_rows[rel], (rel, len(selection))
        out[rel] = {i for i, keep in enumerate(selection) if not keep}
    return out


def _sql_ids(dt: DeltaTable) -> list[int]:
    reader = QueryBuilder().register("t", dt).execute("select id from t order by id")
    return [int(v) for v in pa.table(reader).column("id").to_pylist()]


def _scan_ids(dt: DeltaTable) -> list[int]:
    return sorted(int(v) for v in pa.table(dt.scan(columns=["id"])).column("id").to_pylist())


def _commit(path: Path, version: int) -> list[dict[str, Any]]:
    text = (path / "_delta_log" / f"{version:020d}.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _descriptors(path: Path, version: int) -> dict[str, dict[str, Any]]:
    return {a["add"]["path"]: a["add"]["deletionVector"] for a in _commit(path, version) if "add" in a}


def _dv_bytes(path: Path, dv: Mapping[str, Any]) -> bytes:
    """The serialized bitmap a descriptor points at, its framing checked per the protocol."""
    if dv["storageType"] == "i":
        assert "offset" not in dv
        raw = z85_decode(dv["pathOrInlineDv"])
        assert len(raw) - dv["sizeInBytes"] in range(4)
        return raw[:dv["sizeInBytes"]]
    assert dv["storageType"] == "u" and len(dv["pathOrInlineDv"]) == 20
    name = f"deletion_vector_{uuid.UUID(bytes=z85_decode(dv['pathOrInlineDv']))}.bin"
    data = (path / name).read_bytes()
    assert data[0] == 1  # format version
    off, size = dv["offset"], dv["sizeInBytes"]
    assert struct.unpack_from(">I", data, off)[0] == size
    blob = data[off + 4:off + 4 + size]
    assert struct.unpack_from(">I", data, off + 4 + size)[0] == zlib.crc32(blob)
    return blob


def _check(path: Path, files: Sequence[str], deleted: Mapping[str, set[int]], version: int) -> DeltaTable:
    """delta-rs reads exactly ``deleted`` (per file) and returns every other row."""
    dt = DeltaTable(str(path))
    assert dt.version() == version
    ids = {f: _file_ids(path, f) for f in files}
    assert _delta_rs_deleted(dt, {f: len(v) for f, v in ids.items()}) == {f: s for f, s in deleted.items() if s}
    expected = sorted(i for f in files for pos, i in enumerate(ids[f]) if pos not in deleted.get(f, set()))
    assert _sql_ids(dt) == expected
    assert _scan_ids(dt) == expected
    count = pa.table(QueryBuilder().register("t", dt).execute("select count(*) as n from t")).column("n")
    assert count.to_pylist() == [len(expected)]
    for f, dv in _descriptors(path, version).items():
        blob = _dv_bytes(path, dv)
        assert struct.unpack_from("<I", blob)[0] == PORTABLE_MAGIC
        assert dv["cardinality"] == len(deleted[f])
        assert decode_roaring_array(blob) == sorted(deleted[f])
    return dt


# --- one file -----------------------------------------------------------------------------------

@pytest.mark.parametrize("storage_type", STORAGE_TYPES)
def test_a_few_positions(tmp_path: Path, storage_type: str) -> None:
    (f,) = _make_table(tmp_path, [1000])
    v = delete_rows(str(tmp_path), {f: [0, 5, 999, 5]}, storage_type=storage_type)
    assert v == 1
    dt = _check(tmp_path, [f], {f: {0, 5, 999}}, v)
    proto = dt.protocol()
    assert (proto.min_reader_version, proto.min_writer_version) == (3, 7)
    assert "deletionVectors" in (proto.reader_features or []) and "deletionVectors" in (proto.writer_features or [])
    assert dt.metadata().configuration["delta.enableDeletionVectors"] == "true"
    actions = _commit(tmp_path, v)
    assert "commitInfo" in actions[0] and dt.history(1)[0]["operation"] == "DELETE"
    (remove,) = [a["remove"] for a in actions if "remove" in a]
    (add,) = [a["add"] for a in actions if "add" in a]
    assert remove["path"] == add["path"] == f and "deletionVector" not in remove
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 1000 and stats["tightBounds"] is False
    assert stats["minValues"]["id"] == 0 and stats["maxValues"]["id"] == 999  # kept (now wide bounds)
    # 32-bit part: cookie 12346, one container (key 0, cardinality 3), its offset, 3 x uint16
    blob = _dv_bytes(tmp_path, add["deletionVector"])
    assert blob[12:] == struct.pack("<IIIHHI3H", 0, 12346, 1, 0, 2, 16, 0, 5, 999)


@pytest.mark.parametrize("storage_type", STORAGE_TYPES)
def test_positions_beyond_65535_use_more_containers(tmp_path: Path, storage_type: str) -> None:
    (f,) = _make_table(tmp_path, [150_000])
    positions = {1, 65535, 65536, 70000, 131071, 131072, 149_999}
    v = delete_rows(str(tmp_path), {f: sorted(positions)}, storage_type=storage_type)
    _check(tmp_path, [f], {f: positions}, v)
    dv = _descriptors(tmp_path, v)[f]
    # magic + bucket count + bucket key + cookie/count + 3 x (key, card) + 3 offsets + 7 x uint16
    assert dv["sizeInBytes"] == 4 + 8 + 4 + 8 + 3 * 4 + 3 * 4 + 7 * 2


@pytest.mark.parametrize("storage_type", STORAGE_TYPES)
def test_dense_chunks_use_bitmap_containers(tmp_path: Path, storage_type: str) -> None:
    (f,) = _make_table(tmp_path, [150_000])
    chunk0 = set(range(0, 8192, 2))  # exactly 4096: still an array container
    chunk1 = set(range(65536, 65536 + 4097))  # 4097: a bitmap container
    chunk2 = set(range(131072, 150_000, 3)) | {149_999}  # 6310: bitmap
    positions = chunk0 | chunk1 | chunk2
    v = delete_rows(str(tmp_path), {f: sorted(positions)}, storage_type=storage_type)
    _check(tmp_path, [f], {f: positions}, v)
    dv = _descriptors(tmp_path, v)[f]
    assert dv["sizeInBytes"] == 4 + 8 + 4 + 8 + 3 * 4 + 3 * 4 + 4096 * 2 + 8192 + 8192


# --- several files, several commits ---------------------------------------------------------------

def test_two_files_in_one_commit_share_one_dv_file(tmp_path: Path) -> None:
    f1, f2, f3 = _make_table(tmp_path, [500, 700, 300])
    v = delete_rows(str(tmp_path), {f1: [0, 499], f2: [1, 2, 3, 699]})
    _check(tmp_path, [f1, f2, f3], {f1: {0, 499}, f2: {1, 2, 3, 699}}, v)
    d = _descriptors(tmp_path, v)
    assert set(d) == {f1, f2}  # the untouched file keeps its add as it was
    assert d[f1]["pathOrInlineDv"] == d[f2]["pathOrInlineDv"]
    first, second = sorted(d.values(), key=lambda x: x["offset"])
    assert first["offset"] == 1 and second["offset"] == 1 + 4 + first["sizeInBytes"] + 4
    assert len(list(tmp_path.glob("deletion_vector_*.bin"))) == 1


@pytest.mark.parametrize(("first", "second"), [("u", "u"), ("u", "i"), ("i", "u"), ("i", "i")])
def test_second_call_on_the_same_file_unions(tmp_path: Path, first: str, second: str) -> None:
    f1, f2 = _make_table(tmp_path, [80_000, 200])
    v1 = delete_rows(str(tmp_path), {f1: [1, 2, 70_000], f2: [7]}, storage_type=first)
    _check(tmp_path, [f1, f2], {f1: {1, 2, 70_000}, f2: {7}}, v1)
    old = _descriptors(tmp_path, v1)[f1]
    v2 = delete_rows(str(tmp_path), {f1: [2, 3, 100, 79_999]}, storage_type=second)
    assert v2 == v1 + 1
    _check(tmp_path, [f1, f2], {f1: {1, 2, 3, 100, 70_000, 79_999}, f2: {7}}, v2)
    actions = _commit(tmp_path, v2)
    (remove,) = [a["remove"] for a in actions if "remove" in a]
    assert remove["deletionVector"] == old  # the logical file (path, old DV) is what goes
    assert not any("protocol" in a or "metaData" in a for a in actions)  # already upgraded
    assert json.loads(DeltaTable(str(tmp_path)).history(1)[0]["operationMetrics"]["numDeletedRows"]) == 3


def test_reads_the_table_from_a_checkpoint(tmp_path: Path) -> None:
    f1, f2 = _make_table(tmp_path, [300, 400])
    DeltaTable(str(tmp_path)).create_checkpoint()
    v = delete_rows(str(tmp_path), {f2: [0, 399]})
    _check(tmp_path, [f1, f2], {f2: {0, 399}}, v)
    for positions, storage_type in (([4], "u"), ([5], "i"), ([6], "u")):
        DeltaTable(str(tmp_path)).create_checkpoint()  # the current DV is now read from the checkpoint
        v = delete_rows(str(tmp_path), {f2: positions}, storage_type=storage_type)
    _check(tmp_path, [f1, f2], {f2: {0, 4, 5, 6, 399}}, v)


# --- how files and tables are named ----------------------------------------------------------------

def test_keys_may_be_file_uris_and_the_table_a_file_url(tmp_path: Path) -> None:
    f1, f2 = _make_table(tmp_path, [100, 100])
    uris = {u.rsplit("/", 1)[-1]: u for u in DeltaTable(str(tmp_path)).file_uris()}
    v = delete_rows(tmp_path.as_uri(), {uris[f1]: [10], uris[f2]: [20, 30]})
    _check(tmp_path, [f1, f2], {f1: {10}, f2: {20, 30}}, v)


def test_a_pyarrow_filesystem(tmp_path: Path) -> None:
    (f,) = _make_table(tmp_path / "tbl", [50])
    fs = pa_fs.SubTreeFileSystem(str(tmp_path), pa_fs.LocalFileSystem())
    v = delete_rows("tbl", {f: [3, 4]}, filesystem=fs)
    _check(tmp_path / "tbl", [f], {f: {3, 4}}, v)


# --- protocol and refusals -----------------------------------------------------------------------

def test_upgrade_keeps_the_features_the_old_protocol_implied(tmp_path: Path) -> None:
    (f,) = _make_table(tmp_path, [20])
    DeltaTable(str(tmp_path)).alter.add_constraint({"id_nonneg": "id >= 0"})  # writer version 3
    assert DeltaTable(str(tmp_path)).protocol().min_writer_version == 3
    v = delete_rows(str(tmp_path), {f: [0]})
    proto = _check(tmp_path, [f], {f: {0}}, v).protocol()
    assert set(proto.writer_features or []) == {"appendOnly", "invariants", "checkConstraints", "deletionVectors"}
    assert proto.reader_features == ["deletionVectors"]


def test_upgrade_keeps_listed_features(tmp_path: Path) -> None:
    from deltalake._internal import TableFeatures

    (f,) = _make_table(tmp_path, [20])
    DeltaTable(str(tmp_path)).alter.add_feature(TableFeatures.TimestampWithoutTimezone,
                                                allow_protocol_versions_increase=True)
    v = delete_rows(str(tmp_path), {f: [1, 2]})
    proto = _check(tmp_path, [f], {f: {1, 2}}, v).protocol()
    assert set(proto.reader_features or []) == {"timestampNtz", "deletionVectors"}
    assert set(proto.writer_features or []) == {"timestampNtz", "deletionVectors"}


def test_table_with_the_feature_gets_only_the_property(tmp_path: Path) -> None:
    from deltalake._internal import TableFeatures

    (f,) = _make_table(tmp_path, [20])
    DeltaTable(str(tmp_path)).alter.add_feature(TableFeatures.DeletionVectors, allow_protocol_versions_increase=True)
    v = delete_rows(str(tmp_path), {f: [19]})
    _check(tmp_path, [f], {f: {19}}, v)
    kinds = [next(iter(a)) for a in _commit(tmp_path, v)]
    assert kinds == ["commitInfo", "metaData", "remove", "add"]


def test_pyarrow_datasets_refuse_dv_tables(tmp_path: Path) -> None:
    """delta-rs's pyarrow path (to_pyarrow_dataset / to_pyarrow_table) cannot apply DVs: it refuses."""
    (f,) = _make_table(tmp_path, [10])
    dt = DeltaTable(str(tmp_path))
    assert dt.to_pyarrow_table().num_rows == 10
    delete_rows(str(tmp_path), {f: [0]})
    dt = DeltaTable(str(tmp_path))
    with pytest.raises(DeltaProtocolError, match="deletionVectors"):
        dt.to_pyarrow_table()
    assert dt.count() == 10  # stats-based: physical rows, DVs not subtracted


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    (f,) = _make_table(tmp_path, [10])
    with pytest.raises(KeyError, match="not a data file"):
        delete_rows(str(tmp_path), {"part-nope.parquet": [0]})
    with pytest.raises(ValueError, match="out of range"):
        delete_rows(str(tmp_path), {f: [10]})
    with pytest.raises(ValueError, match="out of range"):
        delete_rows(str(tmp_path), {f: [-1]})
    with pytest.raises(ValueError, match="storage_type"):
        delete_rows(str(tmp_path), {f: [0]}, storage_type="p")
    with pytest.raises(ValueError, match="no row positions"):
        delete_rows(str(tmp_path), {f: []})
    assert DeltaTable(str(tmp_path)).version() == 0 and not list(tmp_path.glob("deletion_vector_*"))


def test_change_data_feed_tables_are_refused(tmp_path: Path) -> None:
    (f,) = _make_table(tmp_path, [10], configuration={"delta.enableChangeDataFeed": "true"})
    with pytest.raises(NotImplementedError, match="change data feed"):
        delete_rows(str(tmp_path), {f: [0]})


# --- encodings against PROTOCOL.md's examples --------------------------------------------------------

def test_z85_uuid_example_from_the_protocol() -> None:
    # JSON Example 1: "ab^-aqEH.-t@S}K{vb[*k^" is prefix "ab" + the UUID below
    raw = z85_decode("^-aqEH.-t@S}K{vb[*k^")
    assert uuid.UUID(bytes=raw) == uuid.UUID("d2c639aa-8816-431a-aaf6-d3fe2512ff61")
    assert z85_encode(raw) == "^-aqEH.-t@S}K{vb[*k^"
    assert z85_encode(b"\x86\x4f\xd2\x6f\xb5\x59\xf7\x5b") == "HelloWorld"  # ZeroMQ RFC 32's test vector


def test_roaring_example_from_the_protocol() -> None:
    # JSON Example 3 (inline): rows 3, 4, 7, 11, 18, 29, in Delta's older "native" layout (magic
    # 1681511376, big endian) around a standard 32-bit Roaring bitmap.
    example = z85_decode("wi5b=000010000siXQKl0rr91000f55c8Xg0@@D72lkbi5=-{L")
    assert len(example) == 40
    assert decode_roaring_array(example) == [3, 4, 7, 11, 18, 29]
    ours = encode_roaring_array([29, 3, 4, 7, 11, 18, 3])
    assert ours[:16] == struct.pack("<IQI", PORTABLE_MAGIC, 1, 0)
    assert ours[16:] == example[12:]  # the same 32-bit bitmap bytes
    assert decode_roaring_array(ours) == [3, 4, 7, 11, 18, 29]


def test_roaring_round_trip_across_buckets_and_containers() -> None:
    rng = np.random.default_rng(3)
    values = {0, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 32) + 5, (7 << 32) + 70000}
    values |= {int(v) for v in rng.choice(1 << 16, 5000, replace=False)} | set(range(200_000, 210_000))
    blob = encode_roaring_array(values)
    assert struct.unpack_from("<Q", blob, 4)[0] == 3  # buckets (high 32 bits) 0, 1 and 7
    assert decode_roaring_array(blob) == sorted(values)
    # a run container (cookie 12347) as other writers may produce: runs [10, 12] and [100, 100]
    runs = struct.pack("<IBHHHHHHH", 12347, 1, 0, 3, 2, 10, 2, 100, 0)
    assert decode_roaring_array(struct.pack("<IQI", PORTABLE_MAGIC, 1, 0) + runs) == [10, 11, 12, 100]
