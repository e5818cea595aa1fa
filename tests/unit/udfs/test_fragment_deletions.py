"""Deleted rows (Delta deletion vectors) planned with the fragments that hold them and skipped by
the tasks' reader: every kept row read exactly once, none of the deleted, whatever the cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.udfs._fragments import Fragment, plan_fragments, read_fragments


def _descriptor(frag: Fragment) -> pa.RecordBatch:
    """The row :func:`fragment_frame` gives a task, as the Arrow batch ``mapInArrow`` hands it."""
    parts = [{"path": p, "row_groups": list(ids), "deleted": list(frag.deleted[j]) if frag.deleted else None,
              "constants": frag.constants[j] if frag.constants else None}
             for j, (p, ids) in enumerate(frag.parts)]
    return pa.RecordBatch.from_pylist([{"parts": parts}])


@pytest.mark.parametrize("parallelism", [1, 3, 7])
def test_deleted_rows_are_skipped_across_fragment_cuts(tmp_path: Path, parallelism: int) -> None:
    rng = np.random.default_rng(parallelism)
    files, deleted, want = [], {}, set()
    for f in range(2):
        ids = np.arange(f * 10_000, f * 10_000 + 1_000, dtype=np.int64)
        path = tmp_path / f"part-{f}.parquet"
        pq.write_table(pa.table({"id": ids, "x": ids.astype(np.float32)}), path, row_group_size=100)
        files.append(str(path))
        gone = np.sort(rng.choice(1_000, size=137, replace=False)) if f == 0 else np.array([0, 99, 100, 999])
        deleted[str(path)] = gone
        want |= set(np.delete(ids, gone).tolist())
    frags = plan_fragments(files, parallelism=parallelism, min_bytes=1, deleted=deleted)
    assert len(frags) >= min(parallelism, 20)
    seen: list[int] = []
    for frag in frags:
        got = [v for rb in read_fragments(iter([_descriptor(frag)]), ["id", "x"], rows=64)
               for v in rb.column(0).to_pylist()]
        assert len(got) == frag.rows  # the planned row count excludes the deleted rows
        seen += got
    assert sorted(seen) == sorted(want)
    assert sum(f.rows for f in frags) == 2_000 - 137 - 4


def test_no_deletions_plan_as_before(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": np.arange(500, dtype=np.int64)}), path, row_group_size=100)
    plain = plan_fragments([str(path)], parallelism=3, min_bytes=1)
    assert plain == plan_fragments([str(path)], parallelism=3, min_bytes=1, deleted={str(path): []})
    assert all(f.deleted == () for f in plain) and sum(f.rows for f in plain) == 500


def test_partition_values_fill_the_columns_a_file_does_not_store(tmp_path: Path) -> None:
    """Columns a Delta table keeps as partition values: each file's value, typed, on every row of
    that file, in the asked column order, with deleted rows still dropped."""
    files, consts = [], {}
    for f, (region, bucket) in enumerate([("eu", 1.5), ("us", None), ("eu", -2.0)]):
        path = tmp_path / f"part-{f}.parquet"
        pq.write_table(pa.table({"id": np.arange(f * 1000, f * 1000 + 300, dtype=np.int64)}), path,
                       row_group_size=70)
        files.append(str(path))
        consts[str(path)] = {"region": ("string", region), "bucket": ("float", bucket)}
    frags = plan_fragments(files, parallelism=4, min_bytes=1, deleted={files[2]: [0, 299]}, constants=consts)
    rows = [r for frag in frags for rb in read_fragments(iter([_descriptor(frag)]), ["bucket", "id", "region"], rows=64)
            for r in rb.to_pylist()]
    assert len(rows) == 898 and sum(f.rows for f in frags) == 898
    want = {f: (b, r) for f, (r, b) in enumerate([("eu", 1.5), ("us", None), ("eu", -2.0)])}
    assert all((r["bucket"], r["region"]) == want[r["id"] // 1000] for r in rows)
    assert {r["id"] for r in rows} == set(range(300)) | set(range(1000, 1300)) | set(range(2001, 2299))
    batch = next(read_fragments(iter([_descriptor(frags[0])]), ["id", "bucket"], rows=64))
    assert batch.schema.field("bucket").type == pa.float32() and batch.num_rows <= 64
