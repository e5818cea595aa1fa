"""The whole run at the speed of its parts: ``batchscore run`` stage by stage, each against its own
ceiling measured in the same run on the same data (``make bench``; not part of ``make test``).

For a light (32->64->1) and a heavy (32->512->512->512->1) ONNX MLP over one generated table
(``--rows``, default 5M: ``id`` int64 + 32 float32 features, 8 files): the score stage (input
checks, scoring, staged write) vs the scoring core alone into Spark's ``noop`` sink; the publish
stage (load, verify, commit, flip) vs ``redis-cli --pipe`` of the same HSETs into the same kind of
fresh redis-server; validate vs score. Prints the stage table; exits 1 when a goal is missed.

    .venv/bin/python benchmarks/bench_pipeline.py [--rows 5000000] [--models light heavy]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from bench_inference import MODELS, N_FEATURES, OUT, make_data  # noqa: E402
from bench_publish import pipe_file, redis_cli_pipe  # noqa: E402

from batchscore.config import load_model_config  # noqa: E402
from batchscore.testing.demo_data import write_onnx_mlp  # noqa: E402
from batchscore.testing.local_redis import LocalRedis  # noqa: E402

GOALS = {  # (model, stage ratio) -> bar; ratio = stage throughput / ceiling throughput
    ("light", "score"): 0.7, ("heavy", "score"): 0.9, ("light", "publish"): 0.9, ("heavy", "publish"): 0.9}
MAX_VALIDATE_SHARE = 0.10


def config(work: Path, model: str, data: Path) -> Path:
    layers, batch = MODELS[model]
    onnx = OUT / f"{model}.onnx"
    if not onnx.exists():
        write_onnx_mlp(onnx, layers)
    path = work / f"{model}.yaml"
    path.write_text(yaml.safe_dump({
        "name": model, "model": {"uri": str(onnx), "format": "onnx", "version": "v1"},
        "input": {"path": str(data), "key": "id", "features": [f"f{i}" for i in range(N_FEATURES)]},
        "outputs": {"columns": ["score"], "delta": {"path": str(work / f"pred-{model}")},
                    "redis": {"key_prefix": "bp", "keep_versions": 0, "gc_grace_seconds": 0}},
        "scoring": {"batch_size": batch, "device": "cpu"},
        "runtime": {"report_dir": str(work / "runs")}}))
    return path


def score_core(spark: object, cfg: object) -> float:
    """Seconds of the scoring core alone: the same scored frame into the ``noop`` sink."""
    from batchscore.jobs._inputs import read_input
    from batchscore.jobs.score import check_artifact, scored_frame

    ref = check_artifact(cfg)  # type: ignore[arg-type]
    df = read_input(spark, cfg.input)  # type: ignore[arg-type, attr-defined]
    started = time.perf_counter()
    scored_frame(df, cfg, ref, run_id="core", scored_at=datetime.now(UTC)).write.format("noop").mode(  # type: ignore[arg-type]
        "overwrite").save()
    return time.perf_counter() - started


def bench_model(spark: object, model: str, data: Path, work: Path, rows: int) -> dict[str, float]:
    from batchscore.jobs.run import run

    cfg = load_model_config(config(work, model, data))
    score_core(spark, cfg)  # warm-up: JIT, model cache, page cache
    core = score_core(spark, cfg)
    with LocalRedis() as server:
        rep = run(spark, cfg, run_id=f"{model}-1", run_date="2026-11-22", redis_url=server.url)  # type: ignore[arg-type]
    resp = work / f"{model}.resp"
    pipe_file(resp, Path(cfg.outputs.delta.path), f"{model}-1", per_key=False, version=1, key="id")
    with LocalRedis() as server:
        pipe = redis_cli_pipe(server.port, resp)
    resp.unlink()
    steps = rep.steps
    return {"rows": rows, "core": core, "score": steps["score"], "validate": steps["validate"],
            "publish": steps["publish"], "pipe": pipe, "run": rep.seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--models", nargs="+", default=["light", "heavy"], choices=sorted(MODELS))
    args = p.parse_args()
    from batchscore.jobs._session import build_session
    from batchscore.jobs.validate import prefetch_imports

    data = make_data(args.rows)
    # where `batchscore run`'s main starts them: GX + matplotlib import while the JVM starts
    prefetch_imports()
    spark = build_session("bench-pipeline", master="local[2]", conf={"spark.ui.showConsoleProgress": "false",
                                                                     "spark.sql.shuffle.partitions": "2"})
    ok = True
    print(f"pipeline benchmark: batchscore run, {args.rows:,} rows x {N_FEATURES} float32, local[2], one redis-server")
    print(f"  {'model':<6} {'stage':<9} {'seconds':>8} {'rows/s':>12}   "
          f"{'ceiling':<34} {'seconds':>8} {'ratio':>6}  goal")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for model in args.models:
            r = bench_model(spark, model, data, Path(tmp), args.rows)
            lines = [("score", r["score"], "scoring core -> noop sink", r["core"]),
                     ("publish", r["publish"], "redis-cli --pipe, same HSETs", r["pipe"]),
                     ("validate", r["validate"], "the score stage", r["score"])]
            for stage, secs, ceiling, base in lines:
                if stage == "validate":
                    share = secs / base
                    met = share <= MAX_VALIDATE_SHARE
                    goal = f"<= {MAX_VALIDATE_SHARE:.2f} of score: {'met' if met else 'MISSED'}"
                    ratio = share
                else:
                    ratio = base / secs
                    met = ratio >= GOALS[(model, stage)]
                    goal = f">= {GOALS[(model, stage)]:.2f}x: {'met' if met else 'MISSED'}"
                ok &= met
                print(f"  {model:<6} {stage:<9} {secs:>8.2f} {args.rows / secs:>12,.0f}   {ceiling:<34} {base:>8.2f} "
                      f"{ratio:>6.2f}  {goal}")
            print(f"  {model:<6} {'run':<9} {r['run']:>8.2f} {args.rows / r['run']:>12,.0f}   "
                  "(score + validate + publish)")
    spark.stop()  # type: ignore[attr-defined]
    print("goals: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
