"""Validation cost bar: the gate takes <= 15% of the score stage's wall time (light model, 1M rows).

Light model: ONNX MLP 32 -> 64 -> 1 over 1M rows of 32 float32 features (generated under
``.batchscore/bench/validation``). Each run is a fresh process, as ``batchscore run`` would be
(JVM start, GX and matplotlib imports included in the step that pays them):

1. run ``a``: score, then validate (first run: absolute rules, bins frozen from its quantiles and
   counted from the same pass's sketches: one pass), then commit ``a`` to Delta with its profile,
   exactly as ``publish`` stores it (Redis loading is not what is measured here, so it is skipped).
2. run ``b``: score, then validate against ``a`` (PSI, KL, mean shift...: one pass).

Prints both runs' times and ratios; exits 1 when either run's validate/score ratio is above 0.15.
``python benchmarks/bench_validation.py [--rows N] [--bar 0.15]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = REPO / ".batchscore" / "bench" / "validation"


def write_config(rows: int) -> Path:
    import yaml

    from batchscore.testing.demo_data import write_features, write_onnx_mlp

    model, feats = WORK / "light.onnx", WORK / f"features-{rows}.parquet"
    if not model.exists():
        write_onnx_mlp(model, (32, 64, 1))
    if not feats.exists():
        write_features(feats, rows, 32)
    cfg = {
        "name": "bench_validation",
        "model": {"uri": str(model), "format": "onnx", "version": "light-1"},
        "input": {"path": str(feats), "key": "user_id", "features": [f"f{i}" for i in range(32)]},
        "outputs": {"columns": ["score"], "delta": {"path": str(WORK / f"predictions-{rows}")}},
        "scoring": {"batch_size": 4096, "device": "cpu"},
        "validation": {
            "row_count": {"tolerance": 0.0}, "null_rate": {"max": 0.0},
            "range": {"min": 0.0, "max": 1.0}, "mean": {"min": 0.0, "max": 1.0, "max_shift": 0.5, "level": "warn"},
            "std": {"max_change": 0.5, "level": "warn"},
            "quantiles": {"level": "warn", "bands": [{"q": 0.01, "min": 0.0}, {"q": 0.99, "max": 1.0}]},
            "drift": {"min_rows": 1000},
        },
        "runtime": {"report_dir": str(WORK / "runs")},
        "spark": {"master": "local[2]", "conf": {"spark.ui.showConsoleProgress": "false"}},
    }
    path = WORK / f"bench-{rows}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def one_run(cfg_path: str, run_id: str, commit: bool) -> dict[str, float]:
    """Child process: score + validate one run (and commit it as the reference when asked)."""
    from batchscore.config import load_model_config
    from batchscore.jobs import _state as state
    from batchscore.jobs._session import build_session
    from batchscore.jobs.score import score
    from batchscore.jobs.validate import IMPORT_SECONDS, prefetch_imports, validate
    from batchscore.sinks import delta

    cfg = load_model_config(cfg_path)
    spark = build_session("bench-validation", master=cfg.spark.master, conf=cfg.spark.conf)
    prefetch_imports()  # as `batchscore run` does: GX/matplotlib load while the driver waits on scoring
    t0 = time.perf_counter()
    score(spark, cfg, run_id=run_id, run_date="2026-01-01")
    t1 = time.perf_counter()
    rep = validate(spark, cfg, run_id=run_id)
    t2 = time.perf_counter()
    if commit:
        staged = delta.stage(cfg.outputs.delta.path, run_id)
        delta.commit(cfg.outputs.delta.path, staged, model=cfg.name, run_id=run_id, metadata={
            "model": cfg.name, "model_version": cfg.model.version, "rows": str(staged.total_rows),
            "profile": json.dumps(state.read_report(cfg, run_id, "validation")["profile"], sort_keys=True)})  # type: ignore[index]
    spark.stop()
    return {"score": t1 - t0, "validate": t2 - t1, "passes": rep.profile.passes, "mode": rep.mode,
            "imports": IMPORT_SECONDS[0] if IMPORT_SECONDS else float("nan"),
            **{f"validate_{k}": v for k, v in rep.timings.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--bar", type=float, default=0.15)
    p.add_argument("--child", nargs=3, metavar=("CONFIG", "RUN_ID", "COMMIT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res = one_run(args.child[0], args.child[1], args.child[2] == "1")
        print("BENCH_RESULT " + json.dumps(res), flush=True)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    cfg = write_config(args.rows)
    import shutil

    shutil.rmtree(WORK / f"predictions-{args.rows}", ignore_errors=True)  # start with no reference
    env = {**os.environ, "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
    results = {}
    for run_id, commit in (("a", "1"), ("b", "0")):
        out = subprocess.run([sys.executable, __file__, "--child", str(cfg), run_id, commit], env=env,
                             capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
            print(f"run {run_id} failed (exit {out.returncode})")
            return 1
        results[run_id] = json.loads(line.removeprefix("BENCH_RESULT "))
    print(f"\nvalidation cost, light model (ONNX 32->64->1), {args.rows:,} rows, local[2], {os.cpu_count()} CPUs")
    print(f"{'run':<28} {'score s':>8} {'validate s':>11} {'profile s':>10} {'import wait s':>14} {'gx s':>6} "
          f"{'plot s':>7} {'ratio':>7}")
    for run_id, label in (("a", "a: first run (1 pass)"), ("b", "b: vs reference (1 pass)")):
        r = results[run_id]
        print(f"{label:<28} {r['score']:>8.2f} {r['validate']:>11.2f} {r['validate_profile']:>10.2f} "
              f"{r['validate_import_wait']:>14.2f} {r['validate_gx']:>6.2f} {r['validate_plot']:>7.2f} "
              f"{r['validate'] / r['score']:>7.3f}")
    print(f"GX + matplotlib import, in the background during scoring: {results['b']['imports']:.2f} s "
          f"(a standalone `batchscore validate` overlaps it with the JVM start instead)")
    ratio = max(r["validate"] / r["score"] for r in results.values())
    cold = (results["b"]["validate"] + results["b"]["imports"]) / results["b"]["score"]
    print(f"run b if the import were paid inside validate (no overlap): ratio {cold:.3f} (for reference, not the bar)")
    ok = ratio <= args.bar and results["b"]["mode"] == "drift" and all(r["passes"] == 1 for r in results.values())
    print(f"validate/score ratio, worse of the two runs {ratio:.3f} (bar {args.bar}): {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
