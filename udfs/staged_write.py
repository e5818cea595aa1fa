"""Inside a scoring task: write the task's scored rows as one Parquet file on the store.

A :class:`StagedWriter` is the :class:`batchscore.udfs.scoring.Sink` of the score step: the task that
scored a fragment (or a partition of Spark's scan) writes its rows itself, through a pyarrow
filesystem (local disk, S3, GCS, ADLS, HDFS: :mod:`batchscore.storage`), to a name unique to the
task *attempt* (``part-<partition>-<attempt id>-<random>.parquet``), adds the run's constant
columns (``model_version``, ``run_id``, ``scored_at``) and yields one row describing the file. The
driver collects those rows: Spark returns the result of exactly one successful attempt per
partition, so the files it records (``batchscore.sinks.delta.write_manifest``) are exactly the
ones to commit; a failed or speculative attempt's file is never committed (and is deleted).

No rows pass back through the JVM and no Hadoop filesystem connector is needed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
from pyspark.sql.types import LongType, StringType, StructField, StructType

from batchscore.storage import DEFAULT, Storage

REPORT = StructType([StructField("file", StringType(), False), StructField("rows", LongType(), False),
                     StructField("bytes", LongType(), False), StructField("partition", LongType(), False),
                     StructField("attempt", LongType(), False), StructField("sha256", StringType(), False)])


class _Hashing:
    """A write-only file object: hashes (sha256) and counts what passes to ``out``."""

    def __init__(self, out: Any) -> None:
        import hashlib

        self.out, self.sha, self.size, self.closed = out, hashlib.sha256(), 0, False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.out.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True
ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class StagedWriter:
    """Write a task's batches under ``run_path`` with the constant columns appended (see module)."""

    run_path: str
    model_version: str
    run_id: str
    scored_at: datetime
    storage: Storage = DEFAULT
    compression: str = "snappy"

    @property
    def schema(self) -> StructType:
        return REPORT

    def constants(self, n: int) -> list[tuple[str, pa.Array]]:
        ts = pa.scalar(self.scored_at, type=pa.timestamp("us", tz="UTC"))
        return [("model_version", pa.array([self.model_version] * n, pa.string()) if n else pa.array([], pa.string())),
                ("run_id", pa.array([self.run_id] * n, pa.string()) if n else pa.array([], pa.string())),
                ("scored_at", pa.array([ts.value] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")))]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        from batchscore import storage as st
        from batchscore.testing import crashpoint

        ctx = TaskContext.get()
        part, attempt = (ctx.partitionId(), ctx.taskAttemptId()) if ctx is not None else (0, 0)
        name = f"part-{part:05d}-{attempt}-{uuid.uuid4().hex[:12]}.parquet"
        uri = st.join(self.run_path, name)
        fs, path = self.storage.filesystem(uri)
        writer = None
        rows = 0
        with st.guard(uri, "write staged predictions", self.storage):
            if st.is_local(uri):
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as raw:
                out = _Hashing(raw)
                for b in batches:
                    extra = self.constants(b.num_rows)
                    b = pa.RecordBatch.from_arrays([*b.columns, *(a for _, a in extra)],
                                                   names=[*b.schema.names, *(n for n, _ in extra)])
                    if writer is None:
                        writer = pq.ParquetWriter(out, b.schema, compression=self.compression,
                                                  write_statistics=True, use_dictionary=True)
                    writer.write_batch(b, row_group_size=ROW_GROUP_ROWS)
                    rows += b.num_rows
                if writer is not None:
                    writer.close()
            if writer is None:
                st.delete_file(uri, self.storage)
                return
            size = st.size(uri, self.storage)
            if size != out.size:
                raise OSError(f"{uri}: {size} bytes on the store, {out.size} written")
        crashpoint.reached("after_staged_write")  # fault tests: the attempt dies after writing its file
        yield pa.RecordBatch.from_pylist([{"file": name, "rows": rows, "bytes": size, "partition": part,
                                           "attempt": attempt, "sha256": out.sha.hexdigest()}], schema=pa.schema(
            [("file", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()), ("partition", pa.int64()),
             ("attempt", pa.int64()), ("sha256", pa.string())]))


def written(rows: list[Any]) -> dict[str, str]:
    """``{file name: sha256}`` of the collected report rows (one per partition Spark kept),
    checked for uniqueness per partition."""
    seen: dict[int, Any] = {}
    for r in rows:
        if int(r["partition"]) in seen:
            raise RuntimeError(
                f"two results for partition {r['partition']}: {seen[int(r['partition'])]['file']}, {r['file']}"
            )
        seen[int(r["partition"])] = r
    return {str(r["file"]): str(r["sha256"]) for r in sorted(seen.values(), key=lambda r: str(r["file"]))}
