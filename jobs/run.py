"""``batchscore run``: score -> validate -> publish in one Spark application."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pyspark.sql import SparkSession

from batchscore.config import ModelConfig, load_model_config
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs._session import session_for
from batchscore.jobs.publish import _require_validated, publish
from batchscore.jobs.reports import RunReport
from batchscore.jobs.score import add_full_flag, score
from batchscore.jobs.validate import prefetch_imports, validate
from batchscore.redis_conn import connect
from batchscore.sinks import delta

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: ModelConfig, *, run_id: str, run_date: str, redis_url: str,
        full: bool = False) -> RunReport:
    """The whole pipeline for one run; returns the run report (also written as ``run.json``).
    ``full``: with ``scoring.incremental``, rescore every row."""
    started = time.perf_counter()
    connect(redis_url).close()  # fail fast, before scoring, when Redis is unreachable
    if any(p.get("run_id") == run_id for p in delta.publications(cfg.outputs.delta.path, cfg.store)):
        # A rerun (an Airflow retry) after this run's Delta commit, e.g. Redis failed before the flip:
        # scoring again is refused (the id is published) and not needed; the publish resumes.
        log.info(f"run {cfg.name}: run {run_id} is already committed to Delta; resuming its publish")
        scored, validated = _require_validated(cfg, run_id)
    else:
        prefetch_imports()  # GX + matplotlib load in the background while the driver waits on scoring
        scored = score(spark, cfg, run_id=run_id, run_date=run_date, full=full)
        validated = validate(spark, cfg, run_id=run_id)
    published = publish(spark, cfg, run_id=run_id, redis_url=redis_url)  # the challengers too (jobs.shadow)
    report = RunReport(
        model=cfg.name, run_id=run_id, run_date=run_date, rows=published.rows,
        delta_version=published.delta_version, redis_version=published.redis_version,
        model_loads=scored.model_loads, model_load_seconds=scored.model_load_seconds,
        warnings=validated.warnings, seconds=round(time.perf_counter() - started, 2),
        steps={"score": scored.seconds, "validate": validated.seconds, "publish": published.seconds},
        challengers=published.challengers,
    )
    state.write_report(cfg, run_id, "run", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("run", __doc__.splitlines()[0])
    add_full_flag(p)
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> RunReport:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.new_run_id(args.run_date))
        url = cfg.redis_url()
        prefetch_imports()  # as `batchscore validate` does: GX + matplotlib load while the JVM starts
        spark = session_for(cfg, "run", master=args.master, verbose=args.verbose)
        rep = run(spark, cfg, run_id=run_id, run_date=args.run_date, redis_url=url, full=args.full)
        entry.summary(
            f"run {cfg.name}",
            {
                "run id": run_id,
                "rows": f"{rep.rows:,}",
                "time": f"{rep.seconds} s "
                f"(score {rep.steps['score']} s, validate {rep.steps['validate']} s, "
                f"publish {rep.steps['publish']} s)",
                "model loads": f"{rep.model_loads} ({rep.model_load_seconds} s)",
                "delta version": rep.delta_version,
                "redis version": rep.redis_version,
                **{f"challenger {k}": v for k, v in rep.challengers.items()},
                "report": state.report_uri(cfg, run_id, "run.json"),
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
