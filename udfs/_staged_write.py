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
from typing import Any, Protocol

import pyarrow as pa
from pyspark.sql.types import LongType, StringType, StructField, StructType

from batchscore.storage import DEFAULT, Storage

REPORT = StructType([StructField("file", StringType(), False), StructField("rows", LongType(), False),
                     StructField("bytes", LongType(), False), StructField("partition", LongType(), False),
                     StructField("attempt", LongType(), False), StructField("sha256", StringType(), False),
                     StructField("kind", StringType(), False), StructField("partial", StringType(), True),
                     StructField("tally", StringType(), True)])
_REPORT_ARROW = pa.schema([("file", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()),
                           ("partition", pa.int64()), ("attempt", pa.int64()), ("sha256", pa.string()),
                           ("kind", pa.string()), ("partial", pa.string()), ("tally", pa.string())])


SCORES, QUARANTINE = "scores", "quarantine"


class Profiler(Protocol):
    """What computes the validation profile's partial of the rows a task writes (one JSON text),
    from the output columns' arrays: :class:`batchscore.validation._partials.TaskProfiler`."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def __call__(self, chunks: dict[str, list[Any]]) -> str: ...


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
class Shadow:
    """A challenger scored in the same task: its outputs are columns ``start .. start+len(columns)``
    of each scored batch; its rows go, key first and under its own names, to a file of the same
    name under its own ``run_path`` (report rows of kind ``shadow:<name>``), so a champion file and
    its challengers' files hold the same rows in the same order."""

    name: str
    run_path: str
    model_version: str
    columns: tuple[str, ...]
    start: int

    @property
    def kind(self) -> str:
        return f"shadow:{self.name}"


def repeating_columns(b: pa.RecordBatch) -> list[str]:
    """The columns worth dictionary-encoding: those whose first batch repeats its values (the
    constants, labels, reasons). Scores and keys are not: trying a dictionary on them and falling
    back doubles the write's CPU and makes the file larger (1M rows of key + score + constants:
    159 ms and 11.6 MB with every column tried, 79 ms and 8.1 MB with the repeating ones)."""
    import pyarrow.compute as pc

    out = []
    for name, col in zip(b.schema.names, b.columns, strict=True):
        if pa.types.is_nested(col.type):
            continue
        if b.num_rows == 0 or pc.count_distinct(col, mode="all").as_py() * 4 <= b.num_rows:
            out.append(name)
    return out


@dataclass(frozen=True)
class StagedWriter:
    """Write a task's batches under ``run_path`` with the constant columns appended (see module)."""

    run_path: str
    model_version: str
    run_id: str
    scored_at: datetime
    storage: Storage = DEFAULT
    compression: str = "snappy"
    quarantine_path: str | None = None  # where reject batches go (:mod:`batchscore.udfs.quarantine`)
    model_sha256: str | None = None  # incremental scoring: a constant column naming the artifact
    shadows: tuple[Shadow, ...] = ()  # challengers: the champion's columns are those before the first one
    profiler: Profiler | None = None  # the validation partial of the rows written (champion's columns)

    @property
    def schema(self) -> StructType:
        return REPORT

    def constants(self, n: int) -> list[tuple[str, pa.Array]]:
        """The columns every staged row carries, ``n`` rows of each (``pa.repeat``: no Python list per row)."""
        ts = pa.scalar(self.scored_at, type=pa.timestamp("us", tz="UTC"))
        text = lambda v: pa.repeat(pa.scalar(v, pa.string()), n)  # noqa: E731
        return [("model_version", text(self.model_version)), ("run_id", text(self.run_id)),
                ("scored_at", pa.repeat(ts, n)),
                *([("model_sha256", text(self.model_sha256))] if self.model_sha256 else [])]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from batchscore.testing import crashpoint
        from batchscore.udfs.quarantine import is_rejects
        from batchscore.udfs.reuse import tally_of

        ctx = TaskContext.get()
        part, attempt = (ctx.partitionId(), ctx.taskAttemptId()) if ctx is not None else (0, 0)
        name = f"part-{part:05d}-{attempt}-{uuid.uuid4().hex[:12]}.parquet"
        scores = _File(self, self.run_path, name)
        rejects = _File(self, self.quarantine_path, name) if self.quarantine_path else None
        shadows = [(sh, _File(self, sh.run_path, name)) for sh in self.shadows]
        cut = self.shadows[0].start if self.shadows else None
        chunks: dict[str, list[Any]] = {}
        tally = None  # incremental scoring in the task: its counts (batchscore.udfs.reuse)
        try:
            for b in batches:
                if (t := tally_of(b)) is not None:
                    tally = t
                    continue
                if is_rejects(b):
                    if rejects is None:
                        raise RuntimeError("a task set rows aside but the writer has no quarantine_path")
                    extra = [(n, a) for n, a in self.constants(b.num_rows) if n in ("model_version", "scored_at")]
                    rejects.write(pa.RecordBatch.from_arrays([*b.columns, *(a for _, a in extra)],
                                                             names=[*b.schema.names, *(n for n, _ in extra)]))
                    continue
                extra = self.constants(b.num_rows)
                cols, names = b.columns[:cut], b.schema.names[:cut]
                if self.profiler is not None:
                    for c in self.profiler.columns:
                        chunks.setdefault(c, []).append(b.column(c))
                scores.write(pa.RecordBatch.from_arrays([*cols, *(a for _, a in extra)],
                                                        names=[*names, *(n for n, _ in extra)]))
                for sh, out in shadows:
                    own = [(n, a) if n != "model_version" else (n, pa.repeat(pa.scalar(sh.model_version, pa.string()),
                                                                             b.num_rows)) for n, a in extra]
                    out.write(pa.RecordBatch.from_arrays(
                        [b.column(0), *b.columns[sh.start:sh.start + len(sh.columns)], *(a for _, a in own)],
                        names=[b.schema.names[0], *sh.columns, *(n for n, _ in own)]))
            done = [(SCORES, scores.close())] + ([(QUARANTINE, rejects.close())] if rejects is not None else [])
            done += [(sh.kind, out.close()) for sh, out in shadows]
        except BaseException:
            for f in [scores, *(out for _, out in shadows), *([rejects] if rejects is not None else [])]:
                f.abandon()
            raise
        crashpoint.reached("after_staged_write")  # fault tests: the attempt dies after writing its file
        prof = self.profiler(chunks) if self.profiler is not None and done[0][1] is not None else None
        rows = [{"file": name, "rows": n, "bytes": size, "partition": part, "attempt": attempt, "sha256": sha,
                 "kind": kind, "partial": prof if kind == SCORES else None, "tally": tally}
                for kind, written_ in done if written_ is not None for n, size, sha in [written_]]
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=_REPORT_ARROW)


class _File:
    """One Parquet file a task writes through the store, opened at its first batch, hashed as written."""

    def __init__(self, writer: StagedWriter, folder: str | None, name: str) -> None:
        from batchscore import storage as st

        self.w, self.uri = writer, st.join(str(folder), name)
        self.out: _Hashing | None = None
        self.raw: Any = None
        self.pq: Any = None
        self.rows = 0

    def write(self, b: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        from batchscore import storage as st

        if self.pq is None:
            fs, path = self.w.storage.filesystem(self.uri)
            with st.guard(self.uri, "write staged predictions", self.w.storage):
                if st.is_local(self.uri):
                    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                self.raw = fs.open_output_stream(path)
            self.out = _Hashing(self.raw)
            self.pq = pq.ParquetWriter(self.out, b.schema, compression=self.w.compression, write_statistics=True,
                                       use_dictionary=repeating_columns(b))
        with st.guard(self.uri, "write staged predictions", self.w.storage):
            self.pq.write_batch(b, row_group_size=ROW_GROUP_ROWS)
        self.rows += b.num_rows

    def close(self) -> tuple[int, int, str] | None:
        """``(rows, bytes, sha256)`` of the file written, or None when no batch came."""
        from batchscore import storage as st

        if self.pq is None:
            return None
        assert self.out is not None
        with st.guard(self.uri, "write staged predictions", self.w.storage):
            self.pq.close()
            self.raw.close()
            size = st.size(self.uri, self.w.storage)
        if size != self.out.size:
            raise OSError(f"{self.uri}: {size} bytes on the store, {self.out.size} written")
        return self.rows, size, self.out.sha.hexdigest()

    def abandon(self) -> None:
        if self.raw is not None:
            try:
                self.raw.close()
            except Exception:  # noqa: BLE001 - the task is failing already; its error is the one to see
                pass


def partials(rows: list[Any]) -> list[str] | None:
    """The kept attempts' profile partials (JSON text each), in file order; None when any is missing."""
    kept = sorted((r for r in rows if r["kind"] == SCORES), key=lambda r: str(r["file"]))
    got = [r["partial"] for r in kept]
    return None if any(p is None for p in got) else [str(p) for p in got]


def written(rows: list[Any], kind: str = SCORES) -> dict[str, str]:
    """``{file name: sha256}`` of the collected report rows (one per partition Spark kept),
    checked for uniqueness per partition; ``kind``: the predictions (``scores``) or the rows set
    aside (``quarantine``)."""
    seen: dict[int, Any] = {}
    for r in rows:
        if r["kind"] != kind:
            continue
        if int(r["partition"]) in seen:
            raise RuntimeError(
                f"two results for partition {r['partition']}: {seen[int(r['partition'])]['file']}, {r['file']}"
            )
        seen[int(r["partition"])] = r
    return {str(r["file"]): str(r["sha256"]) for r in sorted(seen.values(), key=lambda r: str(r["file"]))}
