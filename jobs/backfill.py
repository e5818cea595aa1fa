"""``batchscore backfill``: score a date range into a date-partitioned Delta history table.

Each date is scored into ``<history>/run_date=<d>/<attempt>/`` and committed as ONE Delta commit that
replaces exactly that date's partition (see :mod:`batchscore.sinks.history`). A date already
committed is skipped (no new Delta version) unless ``--force``; a failure stops the range and a rerun
resumes after the dates already done. When ``input.path`` contains ``{run_date}`` each date reads its
own input; otherwise every date scores the same input snapshot.

The online Redis pointer moves only with ``--publish-online``, and then only for the newest date of
the range when it is newer than the run currently published (a normal ``batchscore run`` of that
date: score, validate, publish). Also runnable as ``spark-submit jobs/backfill.py ...``.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pyspark.sql import SparkSession

from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs._inputs import check_input, check_keys, input_frame, open_input
from batchscore.jobs._session import session_for
from batchscore.jobs.score import check_artifact, stage_predictions
from batchscore.sinks import history, publication
from batchscore.testing import crashpoint
from batchscore.udfs.model_cache import load_accumulator
from batchscore.udfs.model_ref import ModelRef

log = logging.getLogger(__name__)

MAX_DAYS = 366


def date_range(start: str, end: str) -> list[str]:
    """Every date from ``start`` to ``end`` inclusive, as YYYY-MM-DD."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last < first:
        raise ConfigError(f"--from {start} is after --to {end}; give an increasing range")
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise ConfigError(f"--from {start} --to {end} spans {days} days (at most {MAX_DAYS}); split the range")
    return [(first + timedelta(days=i)).isoformat() for i in range(days)]


def history_path(cfg: ModelConfig) -> str:
    return cfg.outputs.history.path if cfg.outputs.history else f"{cfg.outputs.delta.path.rstrip('/')}_history"


def config_for(cfg: ModelConfig, day: str) -> ModelConfig:
    """``cfg`` with ``{run_date}`` in input.path replaced by ``day`` (unchanged without the placeholder)."""
    if "{run_date}" not in cfg.input.path:
        return cfg
    spec = cfg.input.model_copy(update={"path": cfg.input.path.replace("{run_date}", day)})
    return cfg.model_copy(update={"input": spec})


def backfill_date(spark: SparkSession, cfg: ModelConfig, ref: ModelRef, *, day: str, table: str,
                  force: bool, loads: Any) -> dict[str, Any]:
    """Score one date and replace its partition; skip it when already committed and not forced."""
    started = time.perf_counter()
    done = history.date_version(table, cfg.name, day, cfg.store)
    if done is not None and not force:
        return {"date": day, "status": "skipped", "rows": None, "delta_version": None, "seconds": 0.0}
    day_cfg = config_for(cfg, day)
    source = open_input(spark, day_cfg.input, storage=cfg.store, source=cfg.source)
    check_input(source, day_cfg.input, source=cfg.source)
    rows = check_keys(input_frame(spark, source, [day_cfg.input.key], storage=cfg.store), day_cfg.input)
    attempt = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    run_id = f"backfill_{day}_{attempt}"
    stage_predictions(source, day_cfg, ref, run_path=history.attempt_path(table, day, attempt), run_id=run_id,
                      scored_at=datetime.now(UTC).replace(microsecond=0), loads=loads)
    crashpoint.reached("backfill_after_write")
    staged = history.stage(table, day, attempt, cfg.store)
    version = history.replace_partition(table, staged, model=cfg.name, day=day, txn_version=(done or 0) + 1,
                                        storage=cfg.store, metadata={
        "model": cfg.name, "model_version": cfg.model.version, "run_id": run_id, "rows": str(staged.total_rows),
        "input": day_cfg.input.path, "model_sha256": ref.sha256})
    return {"date": day, "status": "replaced" if done is not None else "written", "rows": rows,
            "delta_version": version, "seconds": round(time.perf_counter() - started, 2)}


def published_run_date(cfg: ModelConfig, redis_url: str) -> str | None:
    """The run_date of the latest publication (the Delta log's record; None when nothing is
    published). ``redis_url`` is unused: the record, not Redis, says what was published."""
    del redis_url
    head = publication.head(cfg.outputs.delta.path, cfg.store)
    return head.run_date if head else None


def maybe_publish(spark: SparkSession, cfg: ModelConfig, day: str, redis_url: str) -> str:
    """Publish ``day`` online when it is newer than the published run; return what happened."""
    from batchscore.jobs.run import run

    current = published_run_date(cfg, redis_url)
    if current is not None and day <= current:
        return f"not moved: {day} is not newer than the published run's date {current}"
    run_id = state.new_run_id(day)
    rep = run(spark, config_for(cfg, day), run_id=run_id, run_date=day, redis_url=redis_url)
    return f"moved to {day} (run {run_id}, Redis version {rep.redis_version})"


def backfill(spark: SparkSession, cfg: ModelConfig, *, days: list[str], force: bool = False,
             publish_online: bool = False, redis_url: str | None = None) -> dict[str, Any]:
    """Backfill ``days`` in order; returns the report (also written as ``backfill.json``)."""
    started = time.perf_counter()
    table = history_path(cfg)
    if publish_online and redis_url is None:
        redis_url = cfg.redis_url()  # fail before scoring when the URL is not set
    ref = check_artifact(cfg)
    loads = load_accumulator(spark.sparkContext)
    results = []
    for i, day in enumerate(days, 1):
        res = backfill_date(spark, cfg, ref, day=day, table=table, force=force, loads=loads)
        results.append(res)
        what = ("already backfilled, skipped (--force to redo)" if res["status"] == "skipped" else
                f"{res['rows']:,} rows -> Delta version {res['delta_version']} ({res['seconds']} s)")
        log.info(f"backfill {cfg.name}: [{i}/{len(days)}] {day}: {what}")
    online = "unchanged (no --publish-online)"
    if publish_online:
        assert redis_url is not None
        online = maybe_publish(spark, cfg, days[-1], redis_url)
        log.info(f"backfill {cfg.name}: online pointer {online}")
    report = {"model": cfg.name, "history_path": table, "from": days[0], "to": days[-1], "force": force,
              "dates": results, "online": online, "delta_version": history.table_version(table, cfg.store),
              "model_loads": int(loads.value[0]), "seconds": round(time.perf_counter() - started, 2)}
    state.write_report(cfg, f"backfill_{days[0]}_{days[-1]}", "backfill", report)
    return report


def print_table(report: dict[str, Any]) -> None:
    lines = [f"{'date':<10}  {'status':<8}  {'rows':>10}  {'delta':>5}  {'seconds':>7}"]
    for r in report["dates"]:
        rows = "" if r["rows"] is None else f"{r['rows']:,}"
        version = "" if r["delta_version"] is None else str(r["delta_version"])
        lines.append(f"{r['date']:<10}  {r['status']:<8}  {rows:>10}  {version:>5}  {r['seconds']:>7}")
    print(f"\n== backfill {report['model']} {report['from']} .. {report['to']} ==\n" + "\n".join(lines), flush=True)
    print(f"history table : {report['history_path']} (version {report['delta_version']})\n"
          f"online pointer: {report['online']}\ntime          : {report['seconds']} s", flush=True)


def _date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected YYYY-MM-DD") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batchscore backfill", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--from", dest="start", required=True, type=_date, help="first date (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", required=True, type=_date, help="last date, inclusive (YYYY-MM-DD)")
    p.add_argument("--force", action="store_true", help="re-score dates already in the history table")
    p.add_argument("--verbose", action="store_true", help="Spark's own log lines and progress bars on the console")
    p.add_argument("--publish-online", action="store_true",
                   help="also publish the newest date to Redis when it is newer than the published run")
    p.add_argument("--master", help="Spark master when not under spark-submit (default: the config's spark.master)")
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        days = date_range(args.start, args.end)
        url = cfg.redis_url() if args.publish_online else None
        spark = session_for(cfg, "backfill", master=args.master, verbose=args.verbose)
        report = backfill(spark, cfg, days=days, force=args.force, publish_online=args.publish_online, redis_url=url)
        print_table(report)
        return report

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
