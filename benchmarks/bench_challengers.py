"""Champion and challengers: one pass for both vs the champion alone vs two separate runs, and
the cost of a sticky split at lookup time (``make bench``; not part of ``make test``).

1. Scoring (``batchscore score``: read, score, stage) of the light model over one generated table
   (``--rows``, default 2M x 32 float32), three ways in the same Spark session, interleaved over
   ``--rounds``: the champion alone; the champion plus one challenger (another light model) in one
   pass; the champion and the challenger as two separate runs. Goals: one pass <= 1.35x the
   champion alone, and >= 1.4x faster than two runs.
2. Lookups against a local redis-server: ``ScoreReader.get`` of a model with no split vs a split of
   three arms (every arm published), p50 and p99 over ``--lookups`` (default 10,000) keys after
   warm-up, and the round trips one lookup takes once cached (counted with ``MONITOR``). Goal: a
   split lookup stays one round trip.

    .venv/bin/python benchmarks/bench_challengers.py [--rows 2000000] [--rounds 3] [--lookups 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from bench_inference import MODELS, N_FEATURES, OUT, make_data  # noqa: E402

from batchscore.config import load_model_config  # noqa: E402
from batchscore.testing.demo_data import write_onnx_mlp  # noqa: E402

MAX_ONE_PASS = 1.35  # one pass / champion alone
MIN_VS_TWO = 1.4  # two runs / one pass


def config(work: Path, data: Path, name: str, model: Path, challengers: list[tuple[str, Path]]) -> Path:
    layers, batch = MODELS["light"]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "model": {"uri": str(model), "format": "onnx", "version": "v1"},
        "input": {"path": str(data), "key": "id", "features": [f"f{i}" for i in range(N_FEATURES)]},
        "outputs": {"columns": ["score"], "delta": {"path": str(work / f"pred-{name}")},
                    "redis": {"key_prefix": "bc", "keep_versions": 0, "gc_grace_seconds": 0}},
        "scoring": {"batch_size": batch, "device": "cpu"},
        "validation": {"drift": {"enabled": False}},
        "runtime": {"report_dir": str(work / "runs")},
        "challengers": [{"name": n, "model": {"uri": str(m), "format": "onnx", "version": f"{n}-1"}}
                        for n, m in challengers]}))
    return path


def timed_score(spark: Any, cfg_path: Path, run_id: str) -> float:
    from batchscore.jobs.score import score

    cfg = load_model_config(cfg_path)
    started = time.perf_counter()
    score(spark, cfg, run_id=run_id, run_date="2026-12-02")
    return time.perf_counter() - started


def bench_scoring(spark: Any, work: Path, rows: int, rounds: int) -> tuple[float, float, float]:
    layers, _ = MODELS["light"]
    champ = write_onnx_mlp(OUT / "light.onnx", layers) if not (OUT / "light.onnx").exists() else OUT / "light.onnx"
    chall = write_onnx_mlp(work / "challenger.onnx", layers, seed=8)
    data = make_data(rows)
    alone = config(work, data, "alone", champ, [])
    both = config(work, data, "both", champ, [("b", chall)])
    second = config(work, data, "second", chall, [])
    timed_score(spark, both, "warm")  # model caches, JIT, page cache
    a, o, t = [], [], []
    for i in range(rounds):
        a.append(timed_score(spark, alone, f"a{i}"))
        o.append(timed_score(spark, both, f"o{i}"))
        t.append(timed_score(spark, alone, f"t{i}") + timed_score(spark, second, f"s{i}"))
    return statistics.median(a), statistics.median(o), statistics.median(t)


def bench_lookups(n: int) -> dict[str, Any]:
    import redis

    from batchscore import ScoreReader, splits
    from batchscore import redis_layout as layout
    from batchscore.testing.local_redis import LocalRedis

    def publish_fake(r: Any, ns: str, vid: str) -> None:
        """A published version by hand (layout only): enough for the reader's lookup path."""
        buckets = 64
        r.hset(layout.meta_key(ns, vid), mapping={"number": vid.split(".")[0], "epoch": vid.split(".")[1],
                                                  "buckets": buckets, "columns": "score", "model_version": "v",
                                                  "state": "loaded", "count": n})
        pipe = r.pipeline(transaction=False)
        for k in range(n):
            pipe.hset(layout.data_key(ns, vid, layout.bucket_of(str(k), buckets)), str(k),
                      layout.encode_scores([k / n]))
        pipe.execute()
        r.set(layout.pointer_key(ns), vid)

    out: dict[str, Any] = {}
    with LocalRedis() as server:
        r = redis.Redis.from_url(server.url)
        for arm in ("champion", "a", "b"):
            publish_fake(r, splits.arm_namespace("bl", "m", arm), "1.abcdef01")
        publish_fake(r, layout.namespace("bl", "plain"), "1.abcdef01")
        splits.set_split(r, layout.namespace("bl", "m"), (("champion", 80), ("a", 10), ("b", 10)), expected=None)
        reader = ScoreReader(server.url, prefix="bl", pointer_ttl=60.0)
        for model in ("plain", "m"):
            for k in range(200):  # warm-up: pointers, metadata, split record cached
                reader.get(model, k)
            lat = []
            for k in range(n):
                t0 = time.perf_counter()
                reader.get(model, k)
                lat.append(time.perf_counter() - t0)
            lat.sort()
            before = int(r.info("stats")["total_commands_processed"])
            reader.get(model, 7)
            trips = int(r.info("stats")["total_commands_processed"]) - before - 1  # minus the INFO itself
            out[model] = {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
                          "commands": trips}
        reader.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lookups", type=int, default=10_000)
    p.add_argument("--skip-scoring", action="store_true")
    args = p.parse_args()
    ok = True
    if not args.skip_scoring:
        from batchscore.jobs._session import build_session

        spark = build_session("bench-challengers", master="local[2]",
                              conf={"spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "2"})
        with tempfile.TemporaryDirectory(prefix="bench-challengers-") as tmp:
            alone, one, two = bench_scoring(spark, Path(tmp), args.rows, args.rounds)
        spark.stop()
        r1, r2 = one / alone, two / one
        m1, m2 = r1 <= MAX_ONE_PASS, r2 >= MIN_VS_TWO
        ok &= m1 and m2
        print(f"challengers benchmark: score stage, light model, {args.rows:,} rows x {N_FEATURES} float32, local[2], "
              f"median of {args.rounds}")
        print(f"  champion alone                  {alone:8.2f} s")
        print(f"  champion + challenger, one pass {one:8.2f} s   {r1:5.2f}x alone   goal <= {MAX_ONE_PASS}: "
              f"{'met' if m1 else 'MISSED'}")
        print(f"  two separate runs               {two:8.2f} s   {r2:5.2f}x one pass goal >= {MIN_VS_TWO}: "
              f"{'met' if m2 else 'MISSED'}")
    look = bench_lookups(args.lookups)
    split_ok = look["m"]["commands"] == look["plain"]["commands"] == 1
    ok &= split_ok
    print(f"lookups: ScoreReader.get, {args.lookups:,} keys, local redis-server, cached pointers")
    for model, label in (("plain", "no split"), ("m", "split of 3 arms")):
        s = look[model]
        print(f"  {label:<16} p50 {s['p50_us']:7.1f} us   p99 {s['p99_us']:7.1f} us   commands per lookup "
              f"{s['commands']}")
    print(f"  split lookup is one round trip: {'met' if split_ok else 'MISSED'}")
    print("goals: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
