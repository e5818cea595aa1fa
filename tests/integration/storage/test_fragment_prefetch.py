"""The tasks' Parquet reads on an object store (udfs/_fragments.py ``_RowGroupReader``), on a real S3
server (SeaweedFS): each row group's column chunks come in one ranged GET fetched ahead of their
turn, and what the task reads equals the local read, row for row (row-group subsets, Delta
deletions, partition constants, a column subset). Scattered chunks fall back to a GET per chunk; a
consumer that stops early leaves no thread behind; a file gone mid-task is a one-line error naming it."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import storage as st
from batchscore.errors import BatchscoreError
from batchscore.testing.local_s3 import LocalS3
from batchscore.udfs import _fragments as fr

pytestmark = pytest.mark.integration

_PART = pa.struct([("path", pa.string()), ("row_groups", pa.list_(pa.int32())), ("deleted", pa.list_(pa.int64())),
                   ("constants", pa.string())])


def _descriptors(parts: list[dict[str, Any]]) -> Iterator[pa.RecordBatch]:
    return iter([pa.RecordBatch.from_pylist([{"parts": parts}], schema=pa.schema([("parts", pa.list_(_PART))]))])


def _write(path: Path, rows: int, seed: int, row_group: int) -> None:
    rng = np.random.default_rng(seed)
    table = pa.table({"id": np.arange(rows, dtype=np.int64) + seed * 1_000_000,
                      **{f"f{i}": rng.random(rows, dtype=np.float32) for i in range(6)},
                      "note": pa.array([f"r{i % 97}" for i in range(rows)])})
    pq.write_table(table, path, row_group_size=row_group)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics = s.getsockname()[1]
    d = tmp_path_factory.mktemp("prefetch")
    for i in range(3):
        _write(d / f"part-{i}.parquet", 3000 + 500 * i, i, row_group=1000)
    mp = pytest.MonkeyPatch()
    with LocalS3(buckets=("prefetch",), args=[f"-metricsPort={metrics}", "-metricsIp=127.0.0.1"]) as s3:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        for i in range(3):
            st.write_bytes(f"s3://prefetch/t/part-{i}.parquet", (d / f"part-{i}.parquet").read_bytes())
        yield {"dir": d, "metrics": f"http://127.0.0.1:{metrics}/metrics"}
    mp.undo()


def _gets(store: dict[str, Any]) -> float:
    text = urllib.request.urlopen(store["metrics"], timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'SeaweedFS_s3_request_total\{bucket="prefetch",code="2\d\d",type="GET[^"]*"\} (\S+)', text))


def _parts(root: str) -> list[dict[str, Any]]:
    """Three parts, each with its partition value: a whole file with two deleted rows, a subset of a
    file's row groups, a whole file."""
    return [
        {"path": f"{root}/part-0.parquet", "row_groups": [0, 1, 2], "deleted": [5, 2999],
         "constants": '{"day": ["string", "2026-12-03"]}'},
        {"path": f"{root}/part-1.parquet", "row_groups": [1, 3], "deleted": None,
         "constants": '{"day": ["string", "2026-12-04"]}'},
        {"path": f"{root}/part-2.parquet", "row_groups": [0, 1, 2, 3], "deleted": None,
         "constants": '{"day": ["string", "2026-12-05"]}'},
    ]


def test_a_store_read_equals_the_local_read_with_one_get_per_row_group(store: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cols = ["id", "f0", "f3", "f5", "day"]
    local = list(fr.read_fragments(_descriptors(_parts(str(store["dir"]))), cols, rows=700))
    before = _gets(store)
    remote = list(fr.read_fragments(_descriptors(_parts("s3://prefetch/t")), cols, rows=700))
    gets = _gets(store) - before
    assert pa.Table.from_batches(remote).equals(pa.Table.from_batches(local))  # row for row (batches: per row group)
    assert all(0 < b.num_rows <= 700 for b in remote)
    assert sum(b.num_rows for b in remote) == (3000 - 2) + (1000 + 500) + 4000
    # 9 row groups: one GET each for their chunks, plus each file's footer (two GETs a file)
    assert 9 <= gets <= 9 + 2 * 3, gets
    monkeypatch.setattr(fr, "PREFETCH_MAX_BYTES", 0)  # every chunk on its own, as before
    before = _gets(store)
    one_by_one = list(fr.read_fragments(_descriptors(_parts("s3://prefetch/t")), cols, rows=700))
    assert pa.Table.from_batches(one_by_one).equals(pa.Table.from_batches(local))
    assert _gets(store) - before > gets


def test_scattered_chunks_are_read_one_by_one(store: dict[str, Any]) -> None:
    """Two columns far apart in a wide row group (density < PREFETCH_MIN_DENSITY): no span is fetched."""
    meta = pq.ParquetFile(store["dir"] / "part-0.parquet").metadata.row_group(0)
    assert fr._chunk_span(meta, ["id", "note"]) is None
    lo, hi = fr._chunk_span(meta, ["id", "f0", "f1", "f2", "f3", "f4", "f5", "note"])  # type: ignore[misc]
    assert hi - lo == sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
    local = list(fr.read_fragments(_descriptors(_parts(str(store["dir"]))), ["id", "note"]))
    remote = list(fr.read_fragments(_descriptors(_parts("s3://prefetch/t")), ["id", "note"]))
    assert pa.Table.from_batches(remote).equals(pa.Table.from_batches(local))


def test_a_consumer_that_stops_early_leaves_no_prefetch_thread(store: dict[str, Any]) -> None:
    batches = fr.read_fragments(_descriptors(_parts("s3://prefetch/t")), ["id", "f0"], rows=500)
    first = next(batches)
    assert first.num_rows == 499 and any(t.name.startswith("batchscore-prefetch") for t in threading.enumerate())
    batches.close()
    assert not any(t.name.startswith("batchscore-prefetch") for t in threading.enumerate())


def test_a_file_gone_mid_task_is_one_line_naming_it(store: dict[str, Any]) -> None:
    st.write_bytes("s3://prefetch/gone/part-0.parquet", (store["dir"] / "part-0.parquet").read_bytes())
    parts = [{"path": "s3://prefetch/gone/part-0.parquet", "row_groups": [0, 1, 2], "deleted": None, "constants": None},
             {"path": "s3://prefetch/gone/part-1.parquet", "row_groups": [0], "deleted": None, "constants": None}]
    with pytest.raises(BatchscoreError) as err:
        list(fr.read_fragments(_descriptors(parts), ["id"]))
    assert "s3://prefetch/gone/part-1.parquet" in str(err.value) and "\n" not in str(err.value)
