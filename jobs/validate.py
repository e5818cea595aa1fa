"""``batchscore validate``: profile the staged scores in one pass and judge them against the rules.

The reference is the profile of the last *published* version (stored in the Delta commit's
metadata by ``publish``); a rejected candidate is never committed, so it never becomes one. With no
published version, or a new model version when ``batchscore.validation._drift.reset_on_new_model_version``,
the run is judged on the absolute rules only and the report says so. A ``block`` failure rejects
the run (exit code 3) and nothing is published; ``warn`` failures are reported. Writes
``validation.json`` and ``validation.png`` beside the run's other reports. Also runnable as
``spark-submit jobs/validate.py --model-config ... --run-id ...``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError, PublishRefusedError, ValidationRejectedError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs._session import session_for
from batchscore.jobs.reports import ScoreReport, ValidationReport
from batchscore.jobs.targets import store_of
from batchscore.sinks import delta, publication
from batchscore.validation import rules as R
from batchscore.validation._drift import kl_edges
from batchscore.validation._partials import TaskProfiler
from batchscore.validation.gate import Judgement, judge
from batchscore.validation.profile import (
    ColumnPlan,
    Profile,
    compute_profile,
    intervals_for,
    plan_key,
    profile_from_partials,
)
from batchscore.validation.report import format_table, plot_histograms

log = logging.getLogger(__name__)


def _columns(cfg: ModelConfig, rule: str, wanted: list[str] | None) -> tuple[str, ...]:
    outputs = cfg.outputs.columns
    unknown = [c for c in wanted or [] if c not in outputs]
    if unknown:
        raise ConfigError(f"{cfg.source}: validation.{rule}.columns: unknown output column(s) {unknown}; "
                          f"the outputs are {outputs}")
    return tuple(wanted or outputs)


def rules_for(cfg: ModelConfig, *, input_rows: int, quarantined: int = 0) -> R.Rules:
    """The model config's rules as plain data, columns resolved (unknown ones refused).
    ``input_rows``: the rows read; ``quarantined``: how many of them were set aside
    (``input.on_invalid: quarantine``), so the staged run must hold the others."""
    v = cfg.validation
    cols = lambda rule, node: _columns(cfg, rule, node.columns)  # noqa: E731
    rg = R.ValueRange(v.range.min, v.range.max, v.range.level, cols("range", v.range)) if v.range else None
    mean = R.Band(v.mean.min, v.mean.max, v.mean.max_shift, v.mean.level, cols("mean", v.mean)) if v.mean else None
    std = R.Band(v.std.min, v.std.max, v.std.max_change, v.std.level, cols("std", v.std)) if v.std else None
    qb = (R.QuantileBands(tuple((b.q, b.min, b.max) for b in v.quantiles.bands), v.quantiles.level,
                          cols("quantiles", v.quantiles)) if v.quantiles else None)
    cs = (R.ClassShares(tuple((k, b.min, b.max) for k, b in v.class_share.shares.items()), v.class_share.level,
                        cols("class_share", v.class_share)) if v.class_share else None)
    d = v.drift
    dr = (
        R.Drift(cols("drift", d), d.min_rows, d.bins, d.psi.warn, d.psi.block, d.kl.warn, d.kl.block, d.kl.tail_holdout)
        if d.enabled
        else None
    )
    return R.Rules(
        row_count=R.RowCount(input_rows - quarantined, v.row_count.tolerance, v.row_count.level),
        null_rate=R.NullRate(v.null_rate.max, v.null_rate.level, cols("null_rate", v.null_rate)),
        range=rg,
        mean=mean,
        std=std,
        quantiles=qb,
        class_share=cs,
        drift=dr,
        quarantine=(R.QuarantineRate(input_rows, quarantined, v.quarantine_rate.max, v.quarantine_rate.level)
                    if cfg.input.on_invalid == "quarantine" else None),
    )


def load_reference(cfg: ModelConfig) -> tuple[Profile | None, dict[str, Any] | None, str]:
    """(reference profile, where it came from, why there is none): the profile of the last
    *completed* publication (committed to Delta and served by Redis); a commit whose flip never
    happened is not a reference (:func:`batchscore.sinks.publication.reference`)."""
    table = cfg.outputs.delta.path
    pub = publication.reference(table, _served(cfg), cfg.store)
    if pub is None or pub.delta_version is None:
        return None, None, f"first run: nothing published yet at {table}"
    version = pub.delta_version
    commit = delta.commit_info(table, version, cfg.store) or {}
    source = {
        "delta_version": version,
        "publication": pub.seq,
        "run_id": pub.run_id,
        "model_version": commit.get("batchscore.model_version"),
    }
    if pub.rollback_to is not None:  # a rollback's commit carries the restored version's profile
        source["rollback_to"] = pub.rollback_to
    raw = commit.get("batchscore.profile")
    if not raw:
        return None, source, f"published version {version} carries no profile"
    if cfg.validation.drift.reset_on_new_model_version and source["model_version"] != cfg.model.version:
        return (
            None,
            source,
            (
                f"new model version {cfg.model.version} (the published one is {source['model_version']}) "
                "and validation.drift.reset_on_new_model_version is true"
            ),
        )
    profile = Profile.loads(raw)
    if not profile.columns:
        return None, source, f"published version {version} carries an empty profile"
    return profile, source, ""


def _served(cfg: ModelConfig) -> publication.Publication | None:
    """The publication Redis serves (None when Redis is not configured, unreachable or empty)."""
    import os

    from batchscore.errors import BatchscoreError

    rc = cfg.outputs.redis
    url = os.environ.get(rc.url_env)
    if not url:
        return None
    try:
        store = store_of(cfg, url)
        return publication.served(store)
    except BatchscoreError as exc:
        log.info(f"validate {cfg.name}: cannot read the served publication ({exc}); the reference is the Delta head")
        return None


@dataclass(frozen=True)
class Planned:
    """What validating ``cfg`` now would count: the rules, the reference and the per-column plans."""

    rules: R.Rules
    reference: Profile | None
    source: dict[str, Any] | None
    no_reference: str
    plans: dict[str, ColumnPlan]


def planned(cfg: ModelConfig, *, input_rows: int = 0, quarantined: int = 0) -> Planned:
    """The validation plan of ``cfg`` against its current reference (the score step computes the
    profile partials for it while writing; validate checks it is still the same plan)."""
    rules = rules_for(cfg, input_rows=input_rows, quarantined=quarantined)
    reference, source, no_ref = load_reference(cfg)
    if rules.drift is None:
        reference, no_ref = None, "validation.drift.enabled is false"
    return Planned(rules, reference, source, no_ref, plans_for(cfg, rules, reference))


def profiler_for(cfg: ModelConfig) -> TaskProfiler:
    """The scoring tasks' profile partials for ``cfg``'s current validation plan."""
    plans = planned(cfg).plans
    return TaskProfiler(tuple(cfg.outputs.columns), intervals_for(plans), {c: p.classes for c, p in plans.items()},
                    plan_key(plans))


def plans_for(cfg: ModelConfig, rules: R.Rules, reference: Profile | None) -> dict[str, ColumnPlan]:
    plans = {}
    for c in cfg.outputs.columns:
        rc = reference.column(c) if reference is not None else None
        cuts = rc.hist.cuts if rc is not None and rc.hist is not None else ()
        plans[c] = ColumnPlan(
            cuts=cuts or None, kl_edges=kl_edges(rc) if rc is not None and cuts else None,
            classes=rules.classes_for(c)
        )
    return plans


_PREFETCH: list[threading.Thread] = []
IMPORT_SECONDS: list[float] = []  # how long the background import took (benchmarks report it)


def prefetch_imports() -> threading.Thread:
    """Start importing GX and matplotlib (~3 s of CPU) in a background thread, once per process.

    ``batchscore validate`` calls it before starting Spark and ``batchscore run`` before scoring,
    so the import overlaps work the driver only waits on (JVM start, the score stage's tasks).
    """
    if _PREFETCH:
        return _PREFETCH[0]

    def load() -> None:
        started = time.perf_counter()
        try:
            import logging

            logging.getLogger("great_expectations").setLevel(logging.ERROR)
            import great_expectations  # noqa: F401
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except Exception:  # noqa: BLE001 - the real import later reports any problem
            pass
        IMPORT_SECONDS.append(time.perf_counter() - started)

    t = threading.Thread(target=load, name="batchscore-validate-imports", daemon=True)
    t.start()
    _PREFETCH.append(t)
    return t


def staged_frame(spark: SparkSession, staged: delta.StagedRun, store: Any, columns: list[str]) -> Any:
    """``columns`` of the staged run as a DataFrame: Spark's own Parquet scan on local disk; on an
    object store the tasks read those columns through pyarrow (:func:`batchscore.udfs._fragments.files_frame`)."""
    if st.is_local(staged.table):
        return spark.read.parquet(*staged.uris()).select(*columns)
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    from batchscore.udfs._fragments import files_frame

    return files_frame(
        spark, staged.uris(), from_arrow_schema(pa.schema([staged.schema.field(c) for c in columns])), storage=store
    )


def validate(spark: SparkSession, cfg: ModelConfig, *, run_id: str) -> ValidationReport:
    started = time.perf_counter()
    imports = prefetch_imports()
    scored = state.read(cfg, run_id, ScoreReport)
    if scored is None:
        raise PublishRefusedError(f"run {run_id} of '{cfg.name}' has no score report; run `batchscore score` first")
    store = cfg.store
    staged = delta.stage(cfg.outputs.delta.path, run_id, store)
    if scored.digest and scored.digest != staged.digest:
        raise PublishRefusedError(
            f"{staged.run_path}: the staged files changed since `score` wrote them (digest "
            f"{staged.digest[:12]}, scored {scored.digest[:12]}); re-score run {run_id}"
        )
    plan = planned(cfg, input_rows=int(scored.input_rows), quarantined=int(scored.quarantined_rows))
    rules, reference, source, no_ref = plan.rules, plan.reference, plan.source, plan.no_reference
    t0 = time.perf_counter()
    bins = rules.drift.bins if rules.drift else cfg.validation.drift.bins
    made = state.read_report(cfg, run_id, "partials")  # computed by the scoring tasks as they wrote the rows
    if made and made.get("plan") == plan_key(plan.plans) and made.get("digest") == staged.digest:
        parts = [json.loads(p) for p in made["parts"]]
        profile = profile_from_partials(parts, plan.plans, quantiles=rules.quantiles_needed(), bins=bins)
    else:  # another plan (the reference moved since scoring), or no partials: one pass over the staged scores
        df = staged_frame(spark, staged, store, list(cfg.outputs.columns))
        profile = compute_profile(df, plan.plans, quantiles=rules.quantiles_needed(), bins=bins)
        # The pass read the files after their digest was taken: the judged rows must be those bytes.
        # (The partials need no second read: they were computed from the rows written, under the
        # digest just checked.)
        if delta.stage(cfg.outputs.delta.path, run_id, store).digest != staged.digest:
            raise PublishRefusedError(
                f"{staged.run_path}: the staged files changed while they were validated; "
                f"re-score run {run_id} and validate it again"
            )
    t1 = time.perf_counter()
    imports.join()
    t_imp = time.perf_counter()
    verdict = judge(profile, rules, reference)
    t2 = time.perf_counter()
    passed, psi = verdict.passed, verdict.psi
    d = cfg.validation.drift
    with tempfile.TemporaryDirectory(prefix="batchscore-validate-") as tmp:
        local = (
            Path(state.run_dir(cfg, run_id)) if st.is_local(state.run_dir(cfg, run_id)) else Path(tmp)
        ) / "validation.png"
        plot_histograms(
            local,
            profile,
            reference,
            psi,
            title=f"{cfg.name} run {run_id}: {'passed' if passed else 'REJECTED'}"
            + (f" vs published run {source['run_id']}" if reference and source else ""),
            thresholds=f"warn > {d.psi.warn}, block > {d.psi.block}",
        )
        png = state.write_file(cfg, run_id, "validation.png", str(local))
    report = ValidationReport(
        model=cfg.name,
        run_id=run_id,
        model_version=cfg.model.version,
        passed=passed,
        digest=staged.digest,
        rows_judged=staged.total_rows,
        mode="drift" if reference else "absolute-only",
        mode_reason=no_ref or None,
        reference=source if reference else None,
        profile=profile,
        rules=[r.as_dict() for r in verdict.results],
        warnings=[r.describe() for r in verdict.warnings],
        blocking=[r.describe() for r in verdict.blocking],
        histogram_png=str(png),
        timings={
            "profile": round(t1 - t0, 3),
            "import_wait": round(t_imp - t1, 3),
            "gx": round(t2 - t_imp, 3),
            "plot": round(time.perf_counter() - t2, 3),
        },
        seconds=round(time.perf_counter() - started, 2),
    )
    path = state.write_report(cfg, run_id, "validation", report)
    present(cfg, report, verdict, path)
    if not verdict.passed:
        reasons = "; ".join(r.describe() for r in verdict.blocking)
        raise ValidationRejectedError(
            f"run {run_id} of '{cfg.name}' rejected: {reasons} (report: {path}, histogram: {png})"
        )
    if cfg.challengers:  # each with its own rules, then against the champion (jobs.shadow)
        from batchscore.jobs import shadow

        judged = shadow.judge(spark, cfg, run_id)
        if report.histogram_png:
            shadow.add_plots(cfg, report.histogram_png, judged.comparisons)
        report = replace(report, challengers=judged.outcomes, comparisons={
            name: {k: v for k, v in r.to_json().items() if k in ("passed", "pairs", "blocking", "warnings", "plot_png")}
            for name, r in judged.comparisons.items()})
        state.write_report(cfg, run_id, "validation", report)
    return report


def present(cfg: ModelConfig, report: ValidationReport, verdict: Judgement, path: str) -> None:
    """The verdict for people: the rules table on stdout, one log line."""
    ref = report.reference
    against = (f"judged against published run {ref['run_id']} (Delta version {ref['delta_version']})" if ref
               else f"absolute rules only: {report.mode_reason}")
    print(
        f"\nvalidation of {cfg.name} run {report.run_id}: {against}\n{format_table(list(verdict.results))}\n"
        f"report: {path}\nhistogram: {report.histogram_png}",
        flush=True,
    )
    warns = verdict.warnings
    log.info(
        f"validate {cfg.name}: {'passed' if verdict.passed else 'REJECTED'}"
        f"{f' with {len(warns)} warning(s)' if warns else ''}; report {path}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("validate", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> ValidationReport:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.latest_run_id(cfg))
        prefetch_imports()
        spark = session_for(cfg, "validate", master=args.master, verbose=args.verbose)
        rep = validate(spark, cfg, run_id=run_id)
        entry.summary(
            f"validate {cfg.name}",
            {
                "run id": run_id,
                "rows": f"{rep.profile.rows:,}",
                "passed": rep.passed,
                "mode": rep.mode,
                "report": state.report_uri(cfg, run_id, "validation.json"),
                "histogram": rep.histogram_png,
                "time": f"{rep.seconds} s",
                **{f"challenger {k}": v for k, v in rep.challengers.items()},
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
