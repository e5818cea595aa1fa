"""``batchscore score``: score the input table and stage predictions as Parquet under the Delta root.

Also runnable as ``spark-submit jobs/score.py --model-config ... --run-date ...``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import InputDataError, ModelError, PublishRefusedError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs import challengers, incremental
from batchscore.jobs._inputs import (
    InputScan,
    check_input,
    check_staged_keys,
    direct_files,
    open_input,
)
from batchscore.jobs._session import session_for
from batchscore.jobs.reports import ScoreReport
from batchscore.sinks import delta, quarantine
from batchscore.sinks.delta import StagedRun
from batchscore.udfs._fragments import plan_fragments
from batchscore.udfs._staged_write import QUARANTINE, StagedWriter, partials, written
from batchscore.udfs.backends import check_model, load_backend
from batchscore.udfs.device import resolve_device
from batchscore.udfs.file_scan import with_predictions_from_files
from batchscore.udfs.model_cache import cpu_fallbacks, load_accumulator
from batchscore.udfs.model_ref import ModelRef, hash_bytes, read_artifact
from batchscore.udfs.quarantine import Screen
from batchscore.udfs.scoring import Models, Sink, with_predictions

log = logging.getLogger(__name__)

Resolved = tuple[str, dict[str, Any] | None]  # (local artifact path, registry info or None)


def resolve_artifact(cfg: ModelConfig) -> Resolved:
    """The local file ``model.uri`` names and, for a registered MLflow model (``models:/<name>/<version>``
    or ``models:/<name>@<alias>``), what the registry resolved: the score report's ``registry``
    (name, version, alias, run id, source, sha256). Driver only: the executors get the file's path
    and content hash in the :class:`ModelRef`, never the registry URI."""
    if cfg.model.registry is None:
        return cfg.model_path, None
    from batchscore import registry

    res = registry.resolve(cfg, log=lambda m: log.info(f"score {cfg.name}: {m}"))
    return res.path, res.info


def check_artifact(cfg: ModelConfig, resolved: Resolved | None = None) -> Any:
    """Hash and load the artifact on the driver and probe it: bad models fail here, clearly.
    ``resolved``: what :func:`resolve_artifact` returned (resolved now when not given)."""
    path, registered = resolved if resolved is not None else resolve_artifact(cfg)
    data = read_artifact(path, cfg.store)
    ref = ModelRef(uri=path, sha256=hash_bytes(data), format=cfg.model.format, device=cfg.scoring.device,
                   n_features=cfg.input.n_features, storage=cfg.store)
    if registered is not None and registered["sha256"] != ref.sha256:
        raise ModelError(f"{path}: the artifact resolved from {cfg.model.uri} changed on disk before scoring "
                         "(content hash differs); rerun")
    ref = replace(ref, precision=cfg.scoring.precision)  # part of the executors' cache key
    # Driver-side messages name what the config names: the registered version, not the cache file.
    label = (ref.uri if registered is None else cfg.model.uri if registered["alias"] is None
             else f"{cfg.model.uri} (version {registered['version']})")
    device = resolve_device(ref.device, ref.format, uri=label, warn=False)  # the executors' loads decide
    backend = load_backend(data, fmt=ref.format, uri=label, device=device, precision=ref.precision)
    check_model(backend, uri=label, n_features=cfg.input.n_features, n_outputs=len(cfg.outputs.columns))
    return ref


def screen_for(cfg: ModelConfig) -> Screen | None:
    """The task-side quarantine of ``cfg`` (``input.on_invalid: quarantine``), else None."""
    spec = cfg.input
    if spec.on_invalid != "quarantine":
        return None
    return Screen(key=spec.key, width=spec.n_features, features=tuple(spec.features) if spec.features else None,
                  feature_array=spec.feature_array, outputs=tuple(cfg.outputs.columns), allow_nan=spec.allow_nan)


def scored_frame(df: DataFrame | InputScan, cfg: ModelConfig, ref: ModelRef | Models, *, run_id: str,
                 scored_at: datetime, loads: Any = None, sink: Sink | None = None, hashed: bool = False,
                 only_keys: Any = None, reuse: Any = None, columns: list[str] | None = None) -> DataFrame:
    """The staged output: key, the output columns (float32), model_version, run_id, scored_at;
    with a ``sink`` (:class:`batchscore.udfs._staged_write.StagedWriter`), each task writes those rows itself
    and the frame is the sink's report (one row per file written).

    ``df``: the input (:func:`batchscore.jobs._inputs.open_input`; a DataFrame is Spark's scan of a local
    table). When its files can be read by the tasks (``input.read: auto|files``) they read them
    themselves (:mod:`batchscore.udfs.file_scan`), else Spark's scan feeds them. ``only_keys`` and
    ``reuse``: an incremental run's plan (:mod:`batchscore.jobs.incremental`); ``reuse`` needs files.
    """
    spec = cfg.input
    options = dict(features=spec.features, feature_array=spec.feature_array, columns=columns or cfg.outputs.columns,
                   batch_size=cfg.scoring.batch_size, loads=loads, sink=sink, hashed=hashed,
                   screen=screen_for(cfg) if sink is not None else None)
    if isinstance(df, InputScan):
        scan, files, physical, deleted, constants = df.df, df.files, df.physical, df.deleted, df.constants
        key_type = df.schema[spec.key].dataType
    else:
        scan, files, physical, deleted, constants = df, direct_files(spec, source=cfg.source), {}, {}, {}
        key_type = df.schema[spec.key].dataType
    spark = SparkSession.getActiveSession()
    assert spark is not None
    if files is not None:
        fragments = plan_fragments(files, parallelism=spark.sparkContext.defaultParallelism, storage=cfg.store,
                                   deleted=deleted, constants=constants)
        pred = with_predictions_from_files(spark, fragments, ref, key=spec.key, key_type=key_type, storage=cfg.store,
                                           physical=physical or None, only_keys=only_keys, reuse=reuse,
                                           **options)  # type: ignore[arg-type]
    else:
        assert scan is not None and reuse is None
        if only_keys is not None:  # incremental: these keys (and null keys, for the checks) are scored
            import pyarrow as pa

            wanted = spark.createDataFrame(pa.table({spec.key: only_keys.value}))
            scan = scan.join(F.broadcast(wanted), on=spec.key, how="left_semi").unionByName(
                scan.filter(F.col(spec.key).isNull()))
        pred = with_predictions(scan, ref, key=spec.key, **options)  # type: ignore[arg-type]
    if sink is not None:
        return pred
    return pred.select(
        spec.key, *cfg.outputs.columns,
        F.lit(cfg.model.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
    )


@dataclass(frozen=True)
class Staged:
    """What the scoring tasks wrote: the predictions' files and the rows they set aside."""

    files: dict[str, str]  # file name under the run's folder -> sha256 its writer computed
    quarantine: StagedRun | None = None
    quarantine_table: str | None = None
    jobs: list[list[Any]] = field(default_factory=list)  # the report rows of each job that wrote files
    plan: str | None = None  # the validation plan the partials were computed for (None: none usable)
    partials: list[str] = field(default_factory=list)  # one JSON partial per file written


def stage_predictions(source: InputScan, cfg: ModelConfig, ref: ModelRef | Models, *, run_path: str, run_id: str,
                      scored_at: datetime, loads: Any = None, plan: Any = None,
                      sides: list[challengers.Side] | None = None) -> Staged:
    """Score ``source`` with each task writing its own file under ``run_path`` (replacing what a
    previous attempt at this run left there); record the files of the attempts Spark kept.
    With ``input.on_invalid: quarantine`` the tasks also write the rows they set aside, staged in
    the quarantine table (:mod:`batchscore.sinks.quarantine`). ``plan``: an incremental run's
    :class:`batchscore.jobs.incremental.Plan` (score only its keys, copy the reused rows).
    ``sides``: the challengers scored in the same tasks (``ref`` is then their :class:`Models`);
    their files are listed in :attr:`Staged.jobs` (:func:`batchscore.jobs.challengers.stage_shadows`)."""
    store = cfg.store
    st.delete_dir(run_path, store)
    q_table = attempt = None
    if cfg.input.on_invalid == "quarantine":
        configured = cfg.outputs.quarantine.path if cfg.outputs.quarantine else None
        q_table = quarantine.table_path(cfg.outputs.delta.path, configured)
        attempt = quarantine.new_attempt()
    hashed = cfg.scoring.incremental
    q_path = quarantine.attempt_path(q_table, run_id, attempt) if q_table and attempt else None
    sides = sides or []
    challengers.clear(sides, run_id)
    from batchscore.jobs.validate import profiler_for

    profiler = profiler_for(cfg)  # the validation profile's partials, computed as the tasks write
    writer = StagedWriter(run_path, cfg.model.version, run_id, scored_at, store, quarantine_path=q_path,
                          model_sha256=ref.sha256 if hashed and isinstance(ref, ModelRef) else None,
                          shadows=tuple(s.shadow for s in sides), profiler=profiler)
    columns = challengers.frame_columns(cfg, sides) if sides else None
    try:
        if plan is not None:
            jobs = plan.stage(source, writer, lambda df, only_keys=None, reuse=None: scored_frame(
                df, cfg, ref, run_id=run_id, scored_at=scored_at, loads=loads, sink=writer, hashed=hashed,
                only_keys=only_keys, reuse=reuse))
        else:
            jobs = [scored_frame(source, cfg, ref, run_id=run_id, scored_at=scored_at, loads=loads, sink=writer,
                                 hashed=hashed, columns=columns).collect()]
    except Exception as exc:
        known = entry.executor_error(exc)
        if known is not None:
            raise known from None
        raise
    files = {name: sha for rows in jobs for name, sha in written(rows).items()}
    q_staged = None
    if q_table and attempt:
        rejects = {name: sha for rows in jobs for name, sha in written(rows, QUARANTINE).items()}
        q_staged = quarantine.stage(q_table, run_id, attempt, rejects, store)
    if not files:
        if q_staged is not None:
            raise InputDataError(f"input table {cfg.input.path}: every row ({q_staged.total_rows:,}) was quarantined "
                                 f"(see {q_table}, partition run_id={run_id}); fix the input upstream")
        raise InputDataError(f"input table {cfg.input.path} is empty; nothing to score (check the upstream job)")
    delta.write_manifest(run_path, files, store)
    parts = [p for rows in jobs for p in (partials(rows) or [None])]  # type: ignore[list-item]
    return Staged(files, q_staged, q_table, jobs, profiler.plan_key if None not in parts else None,
                  [str(p) for p in parts if p is not None])


def score(spark: SparkSession, cfg: ModelConfig, *, run_id: str, run_date: str, full: bool = False) -> ScoreReport:
    """Score ``cfg``'s input into ``<delta>/runs/<run_id>/`` and write the score report. ``full``:
    with ``scoring.incremental``, rescore every row anyway."""
    started = time.perf_counter()
    table, store = cfg.outputs.delta.path, cfg.store
    target = state.staged_path(cfg, run_id)  # refuses a run id that could leave its directory
    st.check_reachable(table, store, what="stage predictions")
    if any(p.get("run_id") == run_id for p in delta.publications(table, store)) \
            or delta.committed_version(table, cfg.name, run_id, store) is not None:
        raise PublishRefusedError(f"run {run_id} of '{cfg.name}' is already published; use a new --run-id")
    state.invalidate(cfg, run_id, "validation", "publish", "run", "partials")  # what judged earlier files is void
    resolved = resolve_artifact(cfg)
    ref = check_artifact(cfg, resolved)
    log.info(
        f"score {cfg.name}: model {ref.uri.rsplit('/', 1)[-1]} sha256 {ref.sha256[:12]} "
        f"({cfg.model.format}, device {cfg.scoring.device}, {cfg.scoring.precision})"
    )
    source = open_input(spark, cfg.input, storage=store, source=cfg.source)
    check_input(source, cfg.input, source=cfg.source)
    how = "tasks read its files" if source.files is not None else "Spark's scan"
    log.info(
        f"score {cfg.name}: scoring {cfg.input.path}"
        + (f" (Delta version {source.delta_version})" if source.delta_version is not None else "")
        + f"; {how}"
        + (f"; {source.deleted_rows:,} row(s) removed by deletion vectors are skipped" if source.deleted else "")
    )
    loads = load_accumulator(spark.sparkContext)
    scored_at = datetime.now(UTC).replace(microsecond=0)
    plan = incremental.plan_for(spark, cfg, source, ref, full=full) if cfg.scoring.incremental else None
    sides = challengers.sides_for(cfg, run_id, _checked) if cfg.challengers else []
    scoring_ref = challengers.models(ref, cfg, sides) if sides else ref
    result = stage_predictions(source, cfg, scoring_ref, run_path=target, run_id=run_id, scored_at=scored_at,
                               loads=loads, plan=plan, sides=sides)
    fallbacks = cpu_fallbacks(loads.value)
    if cfg.scoring.device == "auto" and fallbacks:  # once per run, however many workers loaded the model
        log.warning("score %s: scoring.device is 'auto' and %d of %d model load(s) found no GPU; scored on CPU",
                    cfg.name, fallbacks, int(loads.value[0]))
    staged = delta.stage(table, run_id, store, writers_hashes=True)  # validate and publish re-read the bytes
    scored_rows = check_staged_keys(staged, cfg.input, store)  # from the scoring pass: no pre-pass over the input
    reasons = quarantine.reason_counts(result.quarantine, store)
    q_version = None
    if result.quarantine_table is not None:
        q_version = quarantine.commit_run(result.quarantine_table, result.quarantine, model=cfg.name, run_id=run_id,
                                          model_version=cfg.model.version, storage=store)
    if reasons:
        log.warning("score %s: %d row(s) quarantined (%s) in %s, partition run_id=%s", cfg.name,
                    sum(reasons.values()), ", ".join(f"{r} {n:,}" for r, n in reasons.items()),
                    result.quarantine_table, run_id)
    input_rows = scored_rows + sum(reasons.values())
    counts = plan.counts(staged_rows=scored_rows) if plan is not None else None
    report = ScoreReport(
        model=cfg.name,
        run_id=run_id,
        run_date=run_date,
        model_version=cfg.model.version,
        model_sha256=ref.sha256,
        registry=resolved[1],
        input_rows=input_rows,
        staged_path=target,
        digest=staged.digest,
        staged_rows=staged.total_rows,
        staged_files=len(staged.relative_files),
        staged_bytes=sum(staged.sizes),
        input_delta_version=source.delta_version,
        input_deleted_rows=source.deleted_rows,
        model_loads=int(loads.value[0]),
        model_load_seconds=round(float(loads.value[1]), 3),
        model_devices=sorted(set(loads.value[3])),
        seconds=round(time.perf_counter() - started, 2),
        scored_at=scored_at.isoformat(),
        quarantined_rows=sum(reasons.values()),
        quarantine=reasons,
        quarantine_table=result.quarantine_table,
        quarantine_delta_version=q_version,
        **(counts.as_report() if counts is not None else {}),
    )
    if result.plan is not None:  # bound to this content: validate merges them when its plan is the same
        state.write_report(cfg, run_id, "partials", {"plan": result.plan, "digest": staged.digest,
                                                     "parts": result.partials})
    path = state.write_report(cfg, run_id, "score", report)
    log.info(f"score {cfg.name}: staged {scored_rows:,} predictions at {target}; report {path}")
    if sides:
        challengers.stage_shadows(sides, result.jobs, report)
        log.info(f"score {cfg.name}: staged challenger(s) {', '.join(s.name for s in sides)} from the same pass")
    return report


def _checked(cfg: ModelConfig) -> tuple[ModelRef, dict[str, Any] | None]:
    resolved = resolve_artifact(cfg)
    return check_artifact(cfg, resolved), resolved[1]


def add_full_flag(p: Any) -> None:
    p.add_argument("--full", action="store_true",
                   help="scoring.incremental: rescore every row instead of reusing unchanged ones")


def summary_lines(rep: ScoreReport) -> dict[str, str]:
    """The score summary's lines for quarantined rows and incremental reuse (none when unused)."""
    lines = {}
    if rep.quarantine_table is not None:
        by = ", ".join(f"{r} {n:,}" for r, n in rep.quarantine.items()) or "none"
        lines["quarantined"] = f"{rep.quarantined_rows:,} ({by}) -> {rep.quarantine_table}"
    if rep.scoring_mode != "full" or rep.rows_reused:
        lines["incremental"] = (f"{rep.rows_reused:,} reused, {rep.rows_rescored:,} rescored, {rep.rows_new:,} new, "
                                f"{rep.rows_dropped:,} dropped" if rep.scoring_mode == "incremental"
                                else rep.scoring_mode)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("score", __doc__.splitlines()[0])
    add_full_flag(p)
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> ScoreReport:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.new_run_id(args.run_date))
        spark = session_for(cfg, "score", master=args.master, verbose=args.verbose)
        rep = score(spark, cfg, run_id=run_id, run_date=args.run_date, full=args.full)
        entry.summary(
            f"score {cfg.name}",
            {
                "run id": run_id,
                "rows": f"{rep.input_rows:,}",
                "model loads": f"{rep.model_loads} ({rep.model_load_seconds} s)",
                "time": f"{rep.seconds} s",
                "staged": rep.staged_path,
                **summary_lines(rep),
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
