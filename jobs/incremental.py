"""Incremental scoring (``scoring.incremental: true``): score only the rows whose features or model changed.

Every staged row of an incremental model carries ``feature_hash`` (a 64-bit hash of the float32
row the model saw: :mod:`batchscore.udfs.feature_hash`) and ``model_sha256`` (the artifact's content
hash). A run then goes:

1. **The reference**: the last publication's Delta version (the table's head, what readers are
   served). None yet, ``--full``, a reference without the hash columns, a different artifact or
   ``model.version``, or a different key type: everything is scored, as without this option.
2. **One pass** (the input read as files, a reference of up to :data:`TASK_ROWS` rows): the
   scoring tasks read the reference's key, hash and outputs from its files (each Python worker
   once, into a hash index); each task hashes its rows
   and takes the published outputs of every row whose key and hash the reference holds, scores
   the others, and writes its whole share (:mod:`batchscore.udfs.reuse`). The counts come from the
   kept attempts' tallies. A sample of the input (one row group) that shows more than
   :data:`EARLY_SHARE` changed skips it: everything is scored.
3. Otherwise (Spark's scan, or a larger reference) **a hash pass and a join**: the tasks compute
   each row's hash, no model; a full outer join with the reference's (key, hash, outputs) (in Arrow
   on the driver up to :data:`DRIVER_ROWS` rows, else Spark's) sorts every row into *reused* (same
   key and hash), *changed*, *new*, and the reference's keys that left the input, *dropped*. When
   changed + new rows are at most :data:`MAX_SHARE` of the input (and at most :data:`MAX_KEYS`),
   the scoring pass reads the input again and scores only their keys (and null keys, which the
   checks must see); the reused rows are copied, hash and outputs as published, into the same
   staged run. Above that share, everything is scored.

Every publication is still a complete snapshot: the staged run holds one row per input row (so
the duplicate and null key checks still hold), reused scores keep their exact float32 bits, and
rows of dropped keys are simply absent. Reused rows carry this run's ``run_id`` and ``scored_at``:
the run re-attests them with the same model on the same features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batchscore import storage as st
from batchscore.config import ModelConfig
from batchscore.jobs._inputs import InputScan
from batchscore.sinks import delta
from batchscore.udfs.feature_hash import COLUMN as HASH
from batchscore.udfs.model_ref import ModelRef

__all__ = ["MAX_KEYS", "MAX_SHARE", "Counts", "Plan", "plan_for"]

log = logging.getLogger(__name__)

#: Above this share of changed + new rows, everything is scored.
MAX_SHARE = 0.5
#: At most this many keys are collected to the driver to filter the scoring pass.
MAX_KEYS = 5_000_000
#: A reference of up to this many rows is joined in Arrow on the driver; above, Spark joins it.
DRIVER_ROWS = 20_000_000
#: When a sample of the input shows more than this share changed or new, the plan is skipped.
EARLY_SHARE = 0.8
#: A reference of up to this many rows is read by every scoring task's worker, which reuses its
#: unchanged rows as it scores (one pass: :mod:`batchscore.udfs.reuse`); above, the plan joins.
TASK_ROWS = 5_000_000

_IN_H, _IN_P, _PH = "__bs_in_input", "__bs_in_reference", "__bs_reference_hash"


@dataclass(frozen=True)
class Counts:
    """How the staged rows were obtained (the score report's ``scoring_mode`` and ``rows_*``)."""

    mode: str
    reused: int = 0
    rescored: int = 0
    new: int = 0
    dropped: int = 0
    from_version: int | None = None

    def as_report(self) -> dict[str, Any]:
        return {"scoring_mode": self.mode, "rows_reused": self.reused, "rows_rescored": self.rescored,
                "rows_new": self.new, "rows_dropped": self.dropped, "reused_from_delta_version": self.from_version}


ScoreFn = Callable[..., DataFrame]  # (source, only_keys=...) -> the scoring pass's report frame


@dataclass
class Plan:
    """What an incremental run does; :meth:`stage` runs it (see the module)."""

    spark: SparkSession
    cfg: ModelConfig
    ref: ModelRef
    full_reason: str | None = None
    reference_files: list[str] = field(default_factory=list)
    reference_version: int | None = None
    reference_schema: Any = None  # pyarrow schema of the reference files
    reference_rows: int = 0
    counted: dict[str, int] = field(default_factory=dict)

    def stage(self, source: InputScan, writer: Any, score_fn: ScoreFn) -> list[list[Any]]:
        """Stage the run's rows with ``writer``; the report rows of each job that wrote files."""
        if self.full_reason is None and self.reference_rows <= DRIVER_ROWS:
            return self._stage_on_driver(source, writer, score_fn)
        if self.full_reason is not None:
            log.info("score %s: incremental: scoring every row (%s)", self.cfg.name, self.full_reason)
            return [score_fn(source).collect()]
        joined = self._joined(source).persist()
        try:
            c = self._count(joined)
            h_rows = c["reused"] + c["changed"] + c["new"]
            todo = c["changed"] + c["new"]
            self.counted = c
            if h_rows and (todo > MAX_SHARE * h_rows or todo > MAX_KEYS):
                self.full_reason = (f"{todo:,} of {h_rows:,} rows changed or new, above "
                                    f"{MAX_SHARE:.0%}" + (f" or {MAX_KEYS:,} keys" if todo > MAX_KEYS else ""))
                log.info("score %s: incremental: scoring every row (%s)", self.cfg.name, self.full_reason)
                return [score_fn(source).collect()]
            log.info("score %s: incremental against Delta version %s: %s reused, %s changed, %s new, %s dropped",
                     self.cfg.name, self.reference_version, f"{c['reused']:,}", f"{c['changed']:,}",
                     f"{c['new']:,}", f"{c['dropped']:,}")
            key = self.cfg.input.key
            jobs = []
            if todo or c["null_keys"]:
                keys = self._keys(joined.filter(F.col(_IN_H) & ~_reuse()).select(key))
                jobs.append(score_fn(source, only_keys=keys).collect())
            if c["reused"]:
                copied = joined.filter(_reuse()).select(
                    F.col(key), F.col(_PH).alias(HASH), *[F.col(c) for c in self.cfg.outputs.columns])
                jobs.append(copied.mapInArrow(_through(writer), writer.schema).collect())
            return jobs
        finally:
            joined.unpersist()

    def counts(self, *, staged_rows: int) -> Counts:
        if self.full_reason is not None:
            return Counts(f"full: {self.full_reason}", rescored=staged_rows, from_version=self.reference_version)
        c = self.counted
        return Counts("incremental", reused=c["reused"], rescored=c["changed"], new=c["new"], dropped=c["dropped"],
                      from_version=self.reference_version)

    # -- the plan on the driver (a reference of up to DRIVER_ROWS rows) ---------------------------

    def _stage_on_driver(self, source: InputScan, writer: Any, score_fn: ScoreFn) -> list[list[Any]]:
        """The same plan with the join in Arrow on the driver: the reference's key, hash and outputs
        read with pyarrow, the input's hashes collected from the hash pass (16 bytes a row), one
        hash join; the reused rows are written by ``writer`` right here. Cheaper than Spark's
        shuffle join by far at these sizes (``benchmarks/README.md``, "Incremental scoring")."""
        import pyarrow as pa
        import pyarrow.compute as pc

        key, cols = self.cfg.input.key, list(self.cfg.outputs.columns)
        ref = self._reference_table([key, HASH, *cols])
        share = self._sampled_change(source, ref)
        if share is not None and share > EARLY_SHARE:
            self.full_reason = f"≈{share:.0%} of a sample of the input changed or new, above {EARLY_SHARE:.0%}"
            log.info("score %s: incremental: scoring every row (%s)", self.cfg.name, self.full_reason)
            return [score_fn(source).collect()]
        if source.files is not None and ref.num_rows <= TASK_ROWS:
            return self._stage_in_tasks(source, ref, score_fn)
        hashes = self._hashes(source).toArrow()
        h = hashes.append_column(_IN_H, pa.array(np.ones(hashes.num_rows, dtype=bool)))
        p = ref.rename_columns([key, _PH, *cols]).append_column(_IN_P, pa.array(np.ones(ref.num_rows, dtype=bool)))
        if h.schema.field(key).type != p.schema.field(key).type:
            p = p.set_column(0, pa.field(key, h.schema.field(key).type), pc.cast(p.column(0), h.schema.field(key).type))
        joined = h.join(p, keys=key, join_type="full outer")
        in_h = pc.fill_null(joined[_IN_H], False)
        in_p = pc.fill_null(joined[_IN_P], False)
        reuse = pc.fill_null(pc.and_kleene(pc.and_kleene(in_h, in_p), pc.equal(joined[HASH], joined[_PH])), False)
        c = {"reused": _count(reuse), "changed": _count(pc.and_(pc.and_(in_h, in_p), pc.invert(reuse))),
             "new": _count(pc.and_(in_h, pc.invert(in_p))), "dropped": _count(pc.and_(in_p, pc.invert(in_h))),
             "null_keys": int(hashes.column(0).null_count)}
        self.counted = c
        h_rows, todo = c["reused"] + c["changed"] + c["new"], c["changed"] + c["new"]
        if h_rows and todo > MAX_SHARE * h_rows:
            self.full_reason = f"{todo:,} of {h_rows:,} rows changed or new, above {MAX_SHARE:.0%}"
            log.info("score %s: incremental: scoring every row (%s)", self.cfg.name, self.full_reason)
            return [score_fn(source).collect()]
        log.info("score %s: incremental against Delta version %s: %s reused, %s changed, %s new, %s dropped",
                 self.cfg.name, self.reference_version, f"{c['reused']:,}", f"{c['changed']:,}", f"{c['new']:,}",
                 f"{c['dropped']:,}")
        jobs = []
        if todo or c["null_keys"]:
            wanted = joined.filter(pc.and_(in_h, pc.invert(reuse))).column(key).combine_chunks()
            keys = pc.unique(pc.drop_null(wanted))
            jobs.append(score_fn(source, only_keys=self.spark.sparkContext.broadcast(keys)).collect())
        if c["reused"]:
            kept = joined.filter(reuse)
            table = pa.table({key: kept[key], HASH: kept[_PH], **{n: pc.cast(kept[n], pa.float32()) for n in cols}})
            jobs.append([r for b in writer(iter(table.to_batches(max_chunksize=1 << 20))) for r in b.to_pylist()])
        return jobs

    def _stage_in_tasks(self, source: InputScan, ref: Any, score_fn: ScoreFn) -> list[list[Any]]:
        """One pass: the scoring tasks read the reference (key, hash, outputs: the publication's
        files, the same ones as ``ref``, the driver's copy) themselves and take its outputs for every
        row whose key and hash it holds and score the others; the counts come from the kept
        attempts' tallies. A reference whose keys repeat (a publication's never do) fails the tasks
        with a bad-input error naming a repeated key (:class:`batchscore.udfs.reuse.Lookup`)."""
        import json
        import uuid

        from batchscore.udfs.reuse import ReferenceFiles

        key, cols = self.cfg.input.key, list(self.cfg.outputs.columns)
        reference = ReferenceFiles(uuid.uuid4().hex, tuple(self.reference_files), (key, HASH, *cols),
                                   _key_arrow_type(source, self.cfg), self.cfg.store)
        rows = score_fn(source, reuse=reference).collect()
        per_task = {int(r["partition"]): r["tally"] for r in rows if r["tally"]}
        t = {k: sum(json.loads(v)[k] for v in per_task.values()) for k in ("rows", "found", "reused")}
        self.counted = {"reused": t["reused"], "changed": t["found"] - t["reused"], "new": t["rows"] - t["found"],
                        "dropped": ref.num_rows - t["found"], "null_keys": 0}
        c = self.counted
        log.info("score %s: incremental against Delta version %s in the scoring pass: %s reused, %s changed, "
                 "%s new, %s dropped", self.cfg.name, self.reference_version, f"{c['reused']:,}",
                 f"{c['changed']:,}", f"{c['new']:,}", f"{c['dropped']:,}")
        return [rows]

    def _reference_table(self, columns: list[str]) -> Any:
        return st.read_parquet(self.reference_files, columns, self.cfg.store)

    def _sampled_change(self, source: InputScan, ref: Any) -> float | None:
        """The share of changed or new rows in one row group of the input (read on the driver), to
        skip the plan when nearly everything changed; None when the input is not read as files.
        The reference's keys are probed against a hash set of the sample's (a few thousand), not the
        other way round: no index over the whole reference is built on the driver."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from batchscore.udfs._arrow_input import features_matrix
        from batchscore.udfs.feature_hash import row_hashes

        spec = self.cfg.input
        if not source.files or source.constants:  # partition values: not in the files' row groups
            return None
        names = [spec.key, *(spec.features or [str(spec.feature_array)])]
        phys = source.physical or {}
        f = st.parquet_file(source.files[0], self.cfg.store)
        if not f.metadata.num_row_groups:
            return None
        rg = f.read_row_group(0, columns=[phys.get(n, n) for n in names]).rename_columns(names)
        try:
            x = features_matrix(rg.combine_chunks().to_batches()[0], spec.features, spec.feature_array,
                                spec.n_features)
        except Exception:  # noqa: BLE001 - a bad row: the plan and the scoring pass handle it
            return None
        keys = rg.column(0).combine_chunks()
        if keys.type != ref.schema.field(spec.key).type:
            return None
        at = pc.index_in(ref.column(spec.key), value_set=keys)  # each reference row's sample row, or null
        found = pc.is_valid(at)
        sample_h = pa.array(row_hashes(x))
        same = pc.sum(pc.equal(pc.take(sample_h, pc.filter(at, found)), pc.filter(ref.column(HASH), found)))
        return 1 - min(rg.num_rows, same.as_py() or 0) / max(1, rg.num_rows)  # null hashes never compare equal

    # -- the plan ------------------------------------------------------------------------------

    def _hashes(self, source: InputScan) -> DataFrame:
        from batchscore.udfs._fragments import plan_fragments
        from batchscore.udfs.file_scan import hashes_from_files
        from batchscore.udfs.scoring import hashes_frame

        spec, width = self.cfg.input, self.cfg.input.n_features
        if source.files is not None:
            fragments = plan_fragments(source.files, parallelism=self.spark.sparkContext.defaultParallelism,
                                       storage=self.cfg.store, deleted=source.deleted, constants=source.constants)
            return hashes_from_files(self.spark, fragments, key=spec.key, key_type=source.schema[spec.key].dataType,
                                     features=spec.features, feature_array=spec.feature_array, width=width,
                                     storage=self.cfg.store, physical=source.physical or None)
        assert source.df is not None
        return hashes_frame(source.df, key=spec.key, features=spec.features, feature_array=spec.feature_array,
                            width=width)

    def _reference(self) -> DataFrame:
        from pyspark.sql.pandas.types import from_arrow_schema

        from batchscore.udfs._fragments import files_frame

        names = [self.cfg.input.key, HASH, *self.cfg.outputs.columns]  # artifact and version: checked by plan_for
        schema = from_arrow_schema(_select(self.reference_schema, names))
        return files_frame(self.spark, self.reference_files, schema, storage=self.cfg.store)

    def _joined(self, source: InputScan) -> DataFrame:
        key = self.cfg.input.key
        h = self._hashes(source).withColumn(_IN_H, F.lit(True))
        p = self._reference().withColumnRenamed(HASH, _PH).withColumn(_IN_P, F.lit(True))
        return h.join(p, on=key, how="full_outer").select(
            F.col(key), F.col(HASH), F.col(_PH),
            *[F.col(c) for c in self.cfg.outputs.columns],
            F.coalesce(F.col(_IN_H), F.lit(False)).alias(_IN_H), F.coalesce(F.col(_IN_P), F.lit(False)).alias(_IN_P))

    def _count(self, joined: DataFrame) -> dict[str, int]:
        reuse = _reuse()
        in_h, in_p = F.col(_IN_H), F.col(_IN_P)

        def n(cond: Any) -> Any:
            return F.sum(F.when(cond, 1).otherwise(0))

        row = joined.agg(
            n(reuse).alias("reused"), n(in_h & in_p & ~reuse).alias("changed"), n(in_h & ~in_p).alias("new"),
            n(in_p & ~in_h).alias("dropped"), n(in_h & F.col(self.cfg.input.key).isNull()).alias("null_keys"),
        ).first()
        assert row is not None
        return {k: int(row[k] or 0) for k in ("reused", "changed", "new", "dropped", "null_keys")}

    def _keys(self, frame: DataFrame) -> Any:
        """The keys to score, as an Arrow array broadcast to the tasks (null keys are always scored)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table: pa.Table = frame.toArrow()
        keys = pc.unique(pc.drop_null(table.column(0).combine_chunks()))
        return self.spark.sparkContext.broadcast(keys)


def _reuse() -> Any:
    # The reference's artifact and model.version equal this run's in every row (plan_for checked every
    # file's statistics): the hash alone decides. A null hash (a row that cannot be hashed) is never reused.
    return F.coalesce(F.col(_IN_H) & F.col(_IN_P) & (F.col(HASH) == F.col(_PH)), F.lit(False))


def _count(mask: Any) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(mask).as_py() or 0)


def _through(writer: Any) -> Any:
    def write(batches: Any) -> Any:
        yield from writer(batches)

    return write


def _select(schema: Any, names: list[str]) -> Any:
    import pyarrow as pa

    return pa.schema([schema.field(n) for n in names])


def plan_for(spark: SparkSession, cfg: ModelConfig, source: InputScan, ref: ModelRef, *, full: bool = False) -> Plan:
    """The run's plan: the reference to reuse from, or why every row is scored."""
    table, store = cfg.outputs.delta.path, cfg.store
    plan = Plan(spark, cfg, ref)
    if full:
        plan.full_reason = "--full"
        return plan
    pubs = delta.publications(table, store) if delta.is_table(table, store) else []
    if not pubs:
        plan.full_reason = "no publication to reuse yet"
        return plan
    version = int(pubs[0]["delta_version"])
    plan.reference_version = version
    files = delta.files_at(table, version, store)
    if not files:
        plan.full_reason = f"Delta version {version} holds no files"
        return plan
    first = st.parquet_file(files[0], store)
    schema = first.schema_arrow
    needed = [cfg.input.key, HASH, "model_sha256", "model_version", *cfg.outputs.columns]
    missing = [n for n in needed if schema.get_field_index(n) < 0]
    if missing:
        plan.full_reason = f"Delta version {version} lacks {', '.join(missing)} (it was not scored incrementally)"
        return plan
    if str(schema.field(cfg.input.key).type) != str(_key_arrow_type(source, cfg)):
        plan.full_reason = (f"the key's type changed ({schema.field(cfg.input.key).type} published, "
                            f"{_key_arrow_type(source, cfg)} now)")
        return plan
    for column, now, what in (("model_sha256", ref.sha256, "the model artifact"),
                              ("model_version", cfg.model.version, "model.version")):
        published = {v for u in files for v in _values(u, column, store)}
        if published and published != {now}:
            shown = ", ".join(sorted(str(v)[:12] for v in published))
            plan.full_reason = f"{what} changed ({shown} published, {str(now)[:12]} now)"
            return plan
    plan.reference_files, plan.reference_schema = files, schema
    plan.reference_rows = sum(st.parquet_file(u, store).metadata.num_rows for u in files)
    return plan


def _values(uri: str, column: str, storage: Any) -> set[Any]:
    """The distinct values of a constant-per-run column of one file, from its row groups' statistics
    (min and max), reading the column only where a row group has none."""
    f = st.parquet_file(uri, storage)
    idx = f.schema_arrow.get_field_index(column)
    out: set[Any] = set()
    for g in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(g).column(idx).statistics
        if stats is not None and stats.has_min_max:
            out.update({stats.min, stats.max})
        else:
            out.update(f.read_row_group(g, columns=[column]).column(0).unique().to_pylist())
    return out


def _key_arrow_type(source: InputScan, cfg: ModelConfig) -> Any:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(source.schema[cfg.input.key].dataType)
