"""``batchscore validate``: profile the staged scores in one pass and judge them against the rules.

A ``block`` failure rejects the run (exit code 3) and nothing is published; ``warn`` failures are
reported. Also runnable as ``spark-submit jobs/validate.py --model-config ... --run-id ...``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession

from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import PublishRefusedError, ValidationRejectedError
from jobs import entry, state
from jobs.session import build_session
from validation import rules as R
from validation.gate import decision, evaluate
from validation.profile import compute_profile


def rules_for(cfg: ModelConfig, *, input_rows: int) -> R.Rules:
    v = cfg.validation
    rng = R.ValueRange(v.range.min, v.range.max, v.range.level) if v.range else None
    return R.Rules(
        row_count=R.RowCount(input_rows, v.row_count.tolerance, v.row_count.level),
        null_rate=R.NullRate(v.null_rate.max, v.null_rate.level),
        range=rng,
    )


def print_table(results: list[R.RuleResult]) -> None:
    print(f"\n{'rule':<11} {'column':<12} {'level':<6} {'result':<6} observed / expected")
    for r in results:
        mark = "ok" if r.passed else ("FAIL" if r.level == "block" else "WARN")
        print(f"{r.rule:<11} {str(r.column):<12} {r.level:<6} {mark:<6} {r.observed} / {r.expected}")


def validate(spark: SparkSession, cfg: ModelConfig, *, run_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    scored = state.read_report(cfg, run_id, "score")
    if scored is None:
        raise PublishRefusedError(f"run {run_id} of '{cfg.name}' has no score report; run `batchscore score` first")
    df = spark.read.parquet(scored["staged_path"])
    profile = compute_profile(df, cfg.outputs.columns)
    results = evaluate(profile, rules_for(cfg, input_rows=int(scored["input_rows"])))
    passed, blocks, warns = decision(results)
    report = {
        "model": cfg.name, "run_id": run_id, "passed": passed, "profile": profile,
        "rules": [r.as_dict() for r in results], "warnings": [r.describe() for r in warns],
        "seconds": round(time.perf_counter() - started, 2),
    }
    path = state.write_report(cfg, run_id, "validation", report)
    print_table(results)
    entry.log(f"validate {cfg.name}: {'passed' if passed else 'REJECTED'}"
              f"{f' with {len(warns)} warning(s)' if warns else ''}; report {path}")
    if not passed:
        reasons = "; ".join(r.describe() for r in blocks)
        raise ValidationRejectedError(f"run {run_id} of '{cfg.name}' rejected: {reasons} (report: {path})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("validate", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.latest_run_id(cfg))
        spark = build_session(f"batchscore-validate-{cfg.name}", master=args.master or cfg.spark.master, conf=cfg.spark.conf)
        rep = validate(spark, cfg, run_id=run_id)
        entry.summary(f"validate {cfg.name}", {"run id": run_id, "rows": f"{rep['profile']['rows']:,}",
                      "passed": rep["passed"], "time": f"{rep['seconds']} s"})
        return rep

    return entry.guarded(body)


if __name__ == "__main__":
    sys.exit(main())
