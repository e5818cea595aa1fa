"""``batchscore score``: score the input table and stage predictions as Parquet under the Delta root.

Also runnable as ``spark-submit jobs/score.py --model-config ... --run-date ...``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import InputDataError, ModelError, PublishRefusedError
from batchscore.exit import exit_now
from batchscore.jobs import entry, state
from batchscore.jobs.inputs import (
    InputScan,
    check_input,
    check_staged_keys,
    direct_files,
    open_input,
)
from batchscore.jobs.reports import ScoreReport
from batchscore.jobs.session import session_for
from batchscore.sinks import delta
from batchscore.udfs.backends import check_model, load_backend
from batchscore.udfs.device import resolve_device
from batchscore.udfs.file_scan import with_predictions_from_files
from batchscore.udfs.fragments import plan_fragments
from batchscore.udfs.model_cache import cpu_fallbacks, load_accumulator
from batchscore.udfs.model_ref import ModelRef, hash_bytes, read_artifact
from batchscore.udfs.scoring import Sink, with_predictions
from batchscore.udfs.staged_write import StagedWriter, written

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


def scored_frame(df: DataFrame | InputScan, cfg: ModelConfig, ref: ModelRef, *, run_id: str, scored_at: datetime,
                 loads: Any = None, sink: Sink | None = None) -> DataFrame:
    """The staged output: key, the output columns (float32), model_version, run_id, scored_at;
    with a ``sink`` (:class:`batchscore.udfs.staged_write.StagedWriter`), each task writes those rows itself
    and the frame is the sink's report (one row per file written).

    ``df``: the input (:func:`batchscore.jobs.inputs.open_input`; a DataFrame is Spark's scan of a local
    table). When its files can be read by the tasks (``input.read: auto|files``) they read them
    themselves (:mod:`batchscore.udfs.file_scan`), else Spark's scan feeds them.
    """
    spec = cfg.input
    options = dict(features=spec.features, feature_array=spec.feature_array, columns=cfg.outputs.columns,
                   batch_size=cfg.scoring.batch_size, loads=loads, sink=sink)
    if isinstance(df, InputScan):
        scan, files, physical = df.df, df.files, df.physical
        key_type = df.schema[spec.key].dataType
    else:
        scan, files, physical = df, direct_files(spec, source=cfg.source), {}
        key_type = df.schema[spec.key].dataType
    spark = SparkSession.getActiveSession()
    assert spark is not None
    if files is not None:
        fragments = plan_fragments(files, parallelism=spark.sparkContext.defaultParallelism, storage=cfg.store)
        pred = with_predictions_from_files(spark, fragments, ref, key=spec.key, key_type=key_type, storage=cfg.store,
                                           physical=physical or None, **options)  # type: ignore[arg-type]
    else:
        assert scan is not None
        pred = with_predictions(scan, ref, key=spec.key, **options)  # type: ignore[arg-type]
    if sink is not None:
        return pred
    return pred.select(
        spec.key, *cfg.outputs.columns,
        F.lit(cfg.model.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
    )


def stage_predictions(source: InputScan, cfg: ModelConfig, ref: ModelRef, *, run_path: str, run_id: str,
                      scored_at: datetime, loads: Any = None) -> dict[str, str]:
    """Score ``source`` with each task writing its own file under ``run_path`` (replacing what a
    previous attempt at this run left there); record the files of the attempts Spark kept."""
    st.delete_dir(run_path, cfg.store)
    writer = StagedWriter(run_path, cfg.model.version, run_id, scored_at, cfg.store)
    try:
        rows = scored_frame(source, cfg, ref, run_id=run_id, scored_at=scored_at, loads=loads, sink=writer).collect()
    except Exception as exc:
        known = entry.executor_error(exc)
        if known is not None:
            raise known from None
        raise
    files = written(rows)
    if not files:
        raise InputDataError(f"input table {cfg.input.path} is empty; nothing to score (check the upstream job)")
    delta.write_manifest(run_path, files, cfg.store)
    return files


def score(spark: SparkSession, cfg: ModelConfig, *, run_id: str, run_date: str) -> ScoreReport:
    """Score ``cfg``'s input into ``<delta>/runs/<run_id>/`` and write the score report."""
    started = time.perf_counter()
    table, store = cfg.outputs.delta.path, cfg.store
    target = state.staged_path(cfg, run_id)  # refuses a run id that could leave its directory
    st.check_reachable(table, store, what="stage predictions")
    if any(p.get("run_id") == run_id for p in delta.publications(table, store)) \
            or delta.committed_version(table, cfg.name, run_id, store) is not None:
        raise PublishRefusedError(f"run {run_id} of '{cfg.name}' is already published; use a new --run-id")
    state.invalidate(cfg, run_id, "validation", "publish", "run")  # whatever judged earlier files is void
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
    )
    loads = load_accumulator(spark.sparkContext)
    scored_at = datetime.now(UTC).replace(microsecond=0)
    stage_predictions(source, cfg, ref, run_path=target, run_id=run_id, scored_at=scored_at, loads=loads)
    fallbacks = cpu_fallbacks(loads.value)
    if cfg.scoring.device == "auto" and fallbacks:  # once per run, however many workers loaded the model
        log.warning("score %s: scoring.device is 'auto' and %d of %d model load(s) found no GPU; scored on CPU",
                    cfg.name, fallbacks, int(loads.value[0]))
    staged = delta.stage(table, run_id, store, writers_hashes=True)  # validate and publish re-read the bytes
    input_rows = check_staged_keys(staged, cfg.input, store)  # from the scoring pass: no pre-pass over the input
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
        model_loads=int(loads.value[0]),
        model_load_seconds=round(float(loads.value[1]), 3),
        model_devices=sorted(set(loads.value[3])),
        seconds=round(time.perf_counter() - started, 2),
        scored_at=scored_at.isoformat(),
    )
    path = state.write_report(cfg, run_id, "score", report)
    log.info(f"score {cfg.name}: staged {input_rows:,} predictions at {target}; report {path}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("score", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> ScoreReport:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.new_run_id(args.run_date))
        spark = session_for(cfg, "score", master=args.master, verbose=args.verbose)
        rep = score(spark, cfg, run_id=run_id, run_date=args.run_date)
        entry.summary(
            f"score {cfg.name}",
            {
                "run id": run_id,
                "rows": f"{rep.input_rows:,}",
                "model loads": f"{rep.model_loads} ({rep.model_load_seconds} s)",
                "time": f"{rep.seconds} s",
                "staged": rep.staged_path,
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
