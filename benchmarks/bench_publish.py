"""Publish benchmark (``make bench`` / ``python benchmarks/bench_publish.py [--rows N]``).

1. Load rate: the publish's Redis load (Spark ``local[2]`` executors, pipelined bucket ``HSET``s)
   into one local ``redis-server`` vs ``redis-cli --pipe`` mass insertion of the same entities
   into the same layout on the same server (one ``HSET bucket key value`` per entity, as the
   Redis mass-insertion guide does), ``--reps`` rounds of each, interleaved. Bar: the median of
   the per-round ratios publish/redis-cli >= 0.7x.
2. Bytes per entity from ``INFO memory``: the bucketed layout vs one key per entity (``SET``).
3. Delta commit time (``deltalake``) for 100k vs 5M rows in the same number of files. Bar: <= 1.5x.
4. A publish (``jobs.publish.publish``: load, verify, Delta commit, flip) of ``--rows`` entities of
   which 1 % changed since the served publication: ``outputs.redis.load: auto`` (a patch of the
   served version) vs ``full``, each into its own redis-server and Delta table, ``--reps`` rounds
   interleaved. Reported, with the values read back checked against the staged scores; no bar of
   its own (issue 16's incremental bar is the whole run, ``bench_incremental.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from batchscore import redis_layout as layout  # noqa: E402
from batchscore.config import load_model_config  # noqa: E402
from batchscore.jobs._session import build_session  # noqa: E402
from batchscore.jobs.publish import load_version  # noqa: E402
from batchscore.redis_conn import connect  # noqa: E402
from batchscore.sinks import delta  # noqa: E402
from batchscore.sinks.redis import RedisVersions  # noqa: E402
from batchscore.testing.local_redis import LocalRedis, cli_binary  # noqa: E402

FILES = 8


def write_run(table: Path, run_id: str, rows: int, seed: int = 0) -> None:
    d = table / "runs" / run_id
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = rng.permutation(rows).astype(np.int64) + 10_000_000
    scores = rng.random(rows, dtype=np.float32)
    for i, part in enumerate(np.array_split(np.arange(rows), FILES)):
        pq.write_table(pa.table({"user_id": keys[part], "score": scores[part],
                                 "model_version": pa.array(["v1"] * len(part)),
                                 "run_id": pa.array([run_id] * len(part))}), d / f"part-{i:05d}.parquet")


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def pipe_file(path: Path, table: Path, run_id: str, *, per_key: bool, version: int, key: str = "user_id") -> int:
    """RESP commands for every entity of a run: ``HSET bucket k v`` (or ``SET ns:k v``)."""
    t = pq.read_table(table / "runs" / run_id, columns=[key, "score"])
    keys = [str(k).encode() for k in t[key].to_pylist()]
    values = t["score"].to_numpy().astype("<f4").tobytes()
    nb = layout.bucket_count(len(keys))
    with path.open("wb") as f:
        for i, k in enumerate(keys):
            v = values[4 * i : 4 * i + 4]
            if per_key:
                f.write(resp(b"SET", b"pk:m:" + k, v))
            else:
                b = zlib.crc32(k) % nb
                f.write(resp(b"HSET", layout.data_key("b:m", layout.version_id(version, "pipe"), b).encode(), k, v))
    return len(keys)


def redis_cli_pipe(port: int, path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as f:
        out = subprocess.run([cli_binary(), "-p", str(port), "--pipe"], stdin=f, capture_output=True, text=True,
                             check=True)
    assert "errors: 0" in out.stdout, out.stdout
    return time.perf_counter() - started


def used(url: str) -> int:
    return int(connect(url).info("memory")["used_memory"])


def load_and_verify(spark: object, cfg: object, paths: list[str], url: str, store: RedisVersions,
                    version: object) -> None:
    """What a publish does to Redis for one version: the fenced executor load, then verify."""
    store.verify(version, load_version(spark, cfg, paths, url, version, store.fence()))  # type: ignore[arg-type]


def bench_load(rows: int, work: Path, reps: int = 5) -> dict[str, float]:
    table = work / "pred"
    write_run(table, "r", rows)
    cfg_path = work / "m.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "m", "model": {"uri": str(work / "none.onnx"), "format": "onnx", "version": "v1"},
        "input": {"path": str(work / "in.parquet"), "key": "user_id", "features": ["a"]},
        "outputs": {"delta": {"path": str(table)}, "redis": {"key_prefix": "b"}},
        "runtime": {"report_dir": str(work / "runs")}}))
    cfg = load_model_config(cfg_path)
    spark = build_session("bench-publish", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    out: dict[str, float] = {}
    with LocalRedis() as server:
        store = RedisVersions(connect(server.url), "b:m")
        store.lock(owner="bench", ttl_s=600)
        digest = delta.stage(str(table), "r").digest
        warm = store.allocate(run_id="warm", rows=rows, columns=["score"], model_version="v1", digest=digest)
        load_and_verify(spark, cfg, [str(table / "runs" / "r")], server.url, store, warm)  # JIT/JVM warm-up
        pipe_file(work / "hset.resp", table, "r", per_key=False, version=99)
        publish_s, pipe_s = [], []
        for i in range(reps):  # interleaved: drift between rounds hits both sides of the ratio alike
            connect(server.url).flushall()
            store.lock(owner="bench", ttl_s=600)  # the flush dropped it
            base = used(server.url)
            v = store.allocate(run_id=f"r{i}", rows=rows, columns=["score"], model_version="v1", digest=digest)
            started = time.perf_counter()
            load_and_verify(spark, cfg, [str(table / "runs" / "r")], server.url, store, v)
            publish_s.append(time.perf_counter() - started)
            out["bucketed_bpe"] = (used(server.url) - base) / rows
            connect(server.url).flushall()
            pipe_s.append(redis_cli_pipe(server.port, work / "hset.resp"))
        out["publish_s"], out["pipe_s"] = statistics.median(publish_s), statistics.median(pipe_s)
        ratios = [p / q for p, q in zip(pipe_s, publish_s, strict=True)]
        out["ratio"], out["ratio_lo"], out["ratio_hi"] = statistics.median(ratios), min(ratios), max(ratios)
        connect(server.url).flushall()
        base = used(server.url)
        pipe_file(work / "set.resp", table, "r", per_key=True, version=0)
        out["set_pipe_s"] = redis_cli_pipe(server.port, work / "set.resp")
        out["per_key_bpe"] = (used(server.url) - base) / rows
        store.unlock()
    spark.stop()
    return out


def bench_commit(work: Path, rows: int, repeats: int = 5) -> float:
    """Median seconds of one overwrite commit of a ``rows``-row run (FILES files)."""
    table = work / f"delta-{rows}"
    times = []
    for i in range(repeats + 1):
        write_run(table, f"c{i}", rows, seed=i)
        staged = delta.stage(str(table), f"c{i}")
        started = time.perf_counter()
        delta.commit(str(table), staged, model="m", run_id=f"c{i}", metadata={"rows": str(rows)},
                     expected=i - 1 if i else None)
        if i:  # the first commit creates the table
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_patch(rows: int, work: Path, reps: int) -> dict[str, float]:
    """Median publish seconds with 1 % of the scores changed since the served run: auto vs full."""
    from batchscore.jobs import _state as state
    from batchscore.jobs.publish import publish
    from batchscore.reader import ScoreReader

    spark = build_session("bench-patch", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    rng = np.random.default_rng(5)
    keys = rng.permutation(rows).astype(np.int64) + 10_000_000
    scores = rng.random(rows, dtype=np.float32)
    times: dict[str, list[float]] = {"auto": [], "full": []}
    with LocalRedis() as a, LocalRedis() as f:
        servers = {"auto": a, "full": f}
        cfgs = {}
        for mode in times:
            path = work / f"patch-{mode}.yaml"
            path.write_text(yaml.safe_dump({
                "name": "p", "model": {"uri": str(work / "none.onnx"), "format": "onnx", "version": "v1"},
                "input": {"path": str(work / "in.parquet"), "key": "user_id", "features": ["a"]},
                "outputs": {"delta": {"path": str(work / f"patch-{mode}")},
                            "redis": {"key_prefix": "b", "load": mode, "gc_grace_seconds": 0}},
                "runtime": {"report_dir": str(work / f"patch-runs-{mode}")}}))
            cfgs[mode] = load_model_config(path)

        def stage(mode: str, run_id: str, values: np.ndarray, day: int) -> None:
            cfg = cfgs[mode]
            d = Path(state.staged_path(cfg, run_id))
            d.mkdir(parents=True, exist_ok=True)
            for i, part in enumerate(np.array_split(np.arange(rows), FILES)):
                pq.write_table(pa.table({"user_id": keys[part], "score": values[part],
                                         "model_version": pa.array(["v1"] * len(part)),
                                         "run_id": pa.array([run_id] * len(part))}), d / f"part-{i:05d}.parquet")
            digest = delta.stage(cfg.outputs.delta.path, run_id).digest
            state.write_report(cfg, run_id, "score", {"input_rows": rows, "run_date": f"2026-11-{day:02d}",
                                                      "digest": digest})
            state.write_report(cfg, run_id, "validation", {"passed": True, "profile": {"columns": {}},
                                                           "digest": digest})

        for mode in times:  # the served publication, then a warm-up round
            stage(mode, "p0", scores, 1)
            publish(spark, cfgs[mode], run_id="p0", redis_url=servers[mode].url)
        current = scores
        for i in range(reps + 1):
            current = current.copy()
            picked = rng.choice(rows, size=rows // 100, replace=False)
            current[picked] = rng.random(len(picked), dtype=np.float32)
            order = list(times) if i % 2 == 0 else list(reversed(times))
            for mode in order:
                stage(mode, f"p{i + 1}", current, i + 2)
                started = time.perf_counter()
                rep = publish(spark, cfgs[mode], run_id=f"p{i + 1}", redis_url=servers[mode].url)
                if i:
                    times[mode].append(time.perf_counter() - started)
                assert rep.redis_load.startswith("patch of" if mode == "auto" else "full"), rep.redis_load
            for mode in times:  # what readers get equals the staged scores, on both sides
                sample = rng.choice(rows, size=200, replace=False)
                found = ScoreReader(servers[mode].url, prefix="b", pointer_ttl=0).get_many("p", keys[sample].tolist())
                assert [found[str(k)].value for k in keys[sample]] == current[sample].tolist()  # type: ignore[union-attr]
    spark.stop()
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="entities loaded into Redis")
    p.add_argument("--reps", type=int, default=5, help="timed loads (and redis-cli runs), interleaved")
    p.add_argument("--commit-rows", type=int, nargs=2, default=[100_000, 5_000_000])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        load = bench_load(args.rows, work, args.reps)
        small, big = (bench_commit(work, n) for n in args.commit_rows)
        patch = bench_patch(args.rows, work, args.reps)
    rate, pipe_rate = args.rows / load["publish_s"], args.rows / load["pipe_s"]
    rows = [
        ("publish load (Spark local[2] -> Redis)", f"{rate:,.0f} entities/s", f"{load['publish_s']:.2f} s"),
        ("redis-cli --pipe, HSET per entity", f"{pipe_rate:,.0f} entities/s", f"{load['pipe_s']:.2f} s"),
        ("redis-cli --pipe, SET per entity", f"{args.rows / load['set_pipe_s']:,.0f} entities/s",
         f"{load['set_pipe_s']:.2f} s"),
        ("publish / redis-cli (bar >= 0.7)", f"{load['ratio']:.2f}x",
         f"median of per-round ratios ({load['ratio_lo']:.2f}..{load['ratio_hi']:.2f})"),
        ("bytes/entity, bucketed hashes", f"{load['bucketed_bpe']:.1f} B", "INFO memory"),
        ("bytes/entity, key per entity", f"{load['per_key_bpe']:.1f} B", "INFO memory"),
        (f"Delta commit, {args.commit_rows[0]:,} rows", f"{small * 1000:.1f} ms", f"median, {FILES} files"),
        (f"Delta commit, {args.commit_rows[1]:,} rows", f"{big * 1000:.1f} ms", f"median, {FILES} files"),
        ("commit big / small (bar <= 1.5)", f"{big / small:.2f}x", ""),
        ("publish, 1 % changed, load: full", f"{patch['full']:.2f} s", "load + verify + commit + flip"),
        ("publish, 1 % changed, load: auto (patch)", f"{patch['auto']:.2f} s",
         f"{patch['auto'] / patch['full']:.2f}x of full"),
    ]
    print(f"publish benchmark: {args.rows:,} entities, 1 score column")
    for name, value, note in rows:
        print(f"  {name:<42} {value:>20}  {note}")
    ok = load["ratio"] >= 0.7 and big / small <= 1.5
    print("bars: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
