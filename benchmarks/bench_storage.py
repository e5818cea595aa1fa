"""The pipeline on an object store: ``batchscore run`` with every location on S3 (SeaweedFS on
loopback) vs every location on local disk, same data, same session (``make bench``; not part of
``make test``).

One Spark session (local[2]), one generated table (``--rows``, default 1M: ``id`` int64 + 32
float32 features, 8 files; ``bench_inference.make_data``) uploaded once to a ``weed mini`` bucket
(``batchscore.testing.local_s3.LocalS3``), the light (32->64->1) and heavy (32->512->512->512->1) ONNX
MLPs on disk and uploaded. For each model, one warm-up round, then ``--reps`` rounds (default 3),
each running ``batchscore.jobs.run.run`` twice: all locations local (``model.uri``, ``input.path``,
``outputs.delta.path``, ``outputs.history.path``, ``runtime.report_dir``) and all on ``s3://``
(the order alternates between rounds); every run gets fresh table/report locations and a fresh
redis-server, so every run does the same work (a first publication). Steps' seconds come from
the run report (``steps.score|validate|publish``).

Bytes moved, S3 runs only, per step: the bytes the S3 gateway received from and sent to clients
and its requests by type (SeaweedFS's own Prometheus counters,
``SeaweedFS_s3_bucket_traffic_{received,sent}_bytes_total`` and ``SeaweedFS_s3_request_total``);
the sizes of the objects the run left in the bucket (listed after it); and ``rchar``/``wchar`` of
the ``weed`` process from ``/proc/<pid>/io`` (every read()/write() it made: client sockets, the
loopback HTTP/gRPC between its own S3 gateway, filer and volume server, and its volume files).
Executors fetch the model once per machine into ``$BATCHSCORE_ARTIFACT_CACHE`` (a temp dir here)
and Python workers keep it loaded, so after the warm-up only the driver's check reads it.

Bars: the median of the per-round ratios s3/local throughput (= local seconds / s3 seconds) >= 0.8
for score and for publish (validate is printed, not judged); exit 1 when one is missed.

    .venv/bin/python benchmarks/bench_storage.py [--rows 1000000] [--models light heavy] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from bench_inference import MODELS, N_FEATURES, OUT, make_data  # noqa: E402

from batchscore.config import load_model_config  # noqa: E402
from batchscore.errors import BatchscoreError  # noqa: E402
from batchscore.testing.demo_data import write_onnx_mlp  # noqa: E402
from batchscore.testing.local_redis import LocalRedis, free_port  # noqa: E402
from batchscore.testing.local_s3 import LocalS3, weed_binary  # noqa: E402

BUCKET = "bench"
BARS = {"score": 0.8, "publish": 0.8}  # s3/local throughput, median of the per-round ratios
STEPS = ("score", "validate", "publish")
CASES = ("local", "s3")
_STEP = ["-"]  # the step jobs.run is in (set by StepMeter; labels the profile's rows)


# --- the store's own counters ---------------------------------------------------------------

class StoreProbe:
    """Snapshots of the S3 gateway's traffic counters and the weed process's I/O counters."""

    def __init__(self, s3: LocalS3, metrics_port: int) -> None:
        self.s3, self.url = s3, f"http://127.0.0.1:{metrics_port}/metrics"

    def snapshot(self) -> dict[str, float]:
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()
        out: Counter[str] = Counter()
        for line in text.splitlines():
            m = re.match(r'SeaweedFS_s3_bucket_traffic_(received|sent)_bytes_total\{bucket="([^"]*)"\} (\S+)', line)
            if m:
                out[f"net_{m.group(1)}"] += float(m.group(3))
                continue
            m = re.match(r'SeaweedFS_s3_request_total\{bucket="[^"]*",code="(\d+)",type="([^"]*)"\} (\S+)', line)
            if m:
                out[f"req_{m.group(2)}"] += float(m.group(3))
                out["requests"] += float(m.group(3))
        io = Path(f"/proc/{self.s3.pid}/io").read_text()
        for key in ("rchar", "wchar"):
            out[f"proc_{key}"] = float(re.search(rf"^{key}: (\d+)", io, re.MULTILINE).group(1))  # type: ignore[union-attr]
        stat = Path(f"/proc/{self.s3.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["proc_cpu"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return dict(out)

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}


class StepMeter:
    """Wraps ``batchscore.jobs.run``'s score/validate/publish so each S3 run records the store's counters
    around each step (one metrics GET + one /proc read per step: milliseconds, outside the steps'
    own timers) and the reports the steps return."""

    def __init__(self) -> None:
        import batchscore.jobs.run as run_mod

        self.probe: StoreProbe | None = None
        self.steps: dict[str, dict[str, float]] = {}
        self.cpu: dict[str, float] = {}  # step -> busy CPU-seconds of the whole machine (every process, all cores)
        self.reports: dict[str, Any] = {}  # step -> its typed report
        for step in STEPS:
            setattr(run_mod, step, self._wrap(step, getattr(run_mod, step)))

    def _wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kw: Any) -> Any:
            before = self.probe.snapshot() if self.probe else None
            _STEP[0] = step
            cpu0 = machine_cpu()
            try:
                rep = fn(*args, **kw)
            finally:
                _STEP[0] = "-"
            self.cpu[step] = machine_cpu() - cpu0
            if self.probe and before is not None:
                self.steps[step] = StoreProbe.delta(before, self.probe.snapshot())
            self.reports[step] = rep
            return rep

        return wrapped

    def reset(self, probe: StoreProbe | None) -> None:
        self.probe, self.steps, self.reports, self.cpu = probe, {}, {}, {}


def machine_cpu() -> float:
    """Busy CPU-seconds of the whole machine so far (``/proc/stat``: user + nice + system + irq + softirq + steal)."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(f[i]) for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


PROFILED = {  # --profile: driver-side calls timed in both cases (module, names); Spark tasks are not
    "batchscore.storage": ("read_bytes", "write_bytes", "info", "list_files", "delete_file", "delete_dir",
                           "open_input", "parquet_file", "sha256", "check_reachable"),
    "batchscore.sinks.delta": ("stage_dir", "content_digest", "publications", "committed_version", "is_table",
                               "history", "commit", "write_manifest", "null_count", "add_actions"),
    "batchscore.jobs._state": ("write_report", "write_file", "read_report", "invalidate"),
    "batchscore.jobs.score": ("resolve_artifact", "check_artifact", "open_input", "check_input", "stage_predictions",
                   "check_staged_keys", "plan_fragments"),
    "batchscore.jobs.validate": ("load_reference", "staged_frame", "compute_profile", "evaluate", "plot_histograms"),
    "batchscore.jobs.publish": ("store_of", "preflight", "parquet_files", "plan_fragments", "load_version"),
    "batchscore.sinks.publication": ("publish",),
}


class Profiler:
    """Inclusive seconds and calls of the :data:`PROFILED` driver-side functions, per run; for
    ``batchscore.storage`` also the outermost calls only (``storage total``: time the driver spent
    waiting on the store, without double counting nested calls)."""

    def __init__(self) -> None:
        import importlib

        self.calls: Counter[str] = Counter()
        self.secs: Counter[str] = Counter()
        self._depth = 0
        for mod_name, names in PROFILED.items():
            mod = importlib.import_module(mod_name)
            short = mod_name.rsplit(".", 1)[-1]
            for name in names:
                setattr(mod, name, self._wrap(f"{short}.{name}", getattr(mod, name), mod_name == "batchscore.storage"))

    def _wrap(self, label: str, fn: Callable[..., Any], store: bool) -> Callable[..., Any]:
        def wrapped(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            if store:
                self._depth += 1
            try:
                return fn(*args, **kw)
            finally:
                dt = time.perf_counter() - t
                key = f"{_STEP[0]}: {label}"
                self.calls[key] += 1
                self.secs[key] += dt
                if store:
                    self._depth -= 1
                    if self._depth == 0:
                        self.calls[f"{_STEP[0]}: storage total"] += 1
                        self.secs[f"{_STEP[0]}: storage total"] += dt

        return wrapped

    def take(self) -> dict[str, tuple[int, float]]:
        out = {k: (self.calls[k], self.secs[k]) for k in self.calls}
        self.calls, self.secs = Counter(), Counter()
        return out


# --- configs and data ------------------------------------------------------------------------

def upload(fs: Any, local: Path, path: str) -> int:
    """Copy a local file or the files of a folder to ``path`` on ``fs``; returns the bytes."""
    files = sorted(p for p in local.iterdir() if p.is_file()) if local.is_dir() else [local]
    total = 0
    for f in files:
        data = f.read_bytes()
        with fs.open_output_stream(f"{path}/{f.name}" if local.is_dir() else path) as out:
            out.write(data)
        total += len(data)
    return total


def config(work: Path, model: str, case: str, tag: str, locations: dict[str, str]) -> Path:
    """A model config whose every location is local or on the bucket (``locations[case]`` roots)."""
    batch = MODELS[model][1]
    root = locations[case]
    sep = "/" if case == "s3" else os.sep
    run_root = f"{root}{sep}{model}-{case}-{tag}"
    path = work / f"{model}-{case}-{tag}.yaml"
    path.write_text(yaml.safe_dump({
        "name": model, "model": {"uri": locations[f"{case}:{model}"], "format": "onnx", "version": "v1"},
        "input": {"path": locations[f"{case}:input"], "key": "id", "features": [f"f{i}" for i in range(N_FEATURES)]},
        "outputs": {"columns": ["score"], "delta": {"path": f"{run_root}{sep}pred"},
                    "history": {"path": f"{run_root}{sep}history"},
                    "redis": {"key_prefix": "bs", "keep_versions": 0, "gc_grace_seconds": 0}},
        "scoring": {"batch_size": batch, "device": "cpu"},
        "runtime": {"report_dir": f"{run_root}{sep}runs"}}))
    return path


def stored_bytes(case: str, root: str, fs: Any) -> tuple[int, int]:
    """(objects, bytes) under a run's root after the run (the bucket listing, or the local folder)."""
    import pyarrow.fs as pafs

    if case == "local":
        files = [p for p in Path(root).rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)
    infos = fs.get_file_info(pafs.FileSelector(root.removeprefix("s3://"), recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    return len(files), sum(int(i.size) for i in files)


# --- one run -----------------------------------------------------------------------------------

def one_run(spark: Any, meter: StepMeter, probe: StoreProbe, fs: Any, work: Path, model: str, case: str,
            tag: str, locations: dict[str, str], profiler: Profiler | None = None) -> dict[str, Any]:
    from batchscore.jobs.run import run

    cfg = load_model_config(config(work, model, case, tag, locations))
    meter.reset(probe if case == "s3" else None)
    if profiler is not None:
        profiler.take()
    log = work / "runs.log"  # the steps' own log lines and validation tables (printed when a run fails)
    with LocalRedis() as server, open(log, "a") as out:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                rep = run(spark, cfg, run_id=f"{model}-{case}-{tag}", run_date="2026-12-02", redis_url=server.url)
        except BaseException:
            out.flush()
            print(log.read_text()[-6000:], file=sys.stderr)
            raise
    sep = "/" if case == "s3" else os.sep
    objects, written = stored_bytes(case, f"{locations[case]}{sep}{model}-{case}-{tag}", fs)
    score_rep = meter.reports["score"].to_json() if "score" in meter.reports else {}
    val_rep = meter.reports["validate"].to_json() if "validate" in meter.reports else {}
    return {"steps": {s: float(rep.steps[s]) for s in STEPS}, "run": float(rep.seconds),
            "bytes": dict(meter.steps), "cpu": dict(meter.cpu), "objects": objects, "written": written,
            "staged_bytes": int(score_rep.get("staged_bytes", 0)),
            "staged_files": int(score_rep.get("staged_files", 0)),
            "model_loads": rep.model_loads, "validate_timings": val_rep.get("timings", {}),
            "profile": profiler.take() if profiler is not None else {}}


# --- report ------------------------------------------------------------------------------------

def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def print_profile(results: dict[str, dict[str, list[dict[str, Any]]]], models: list[str]) -> None:
    """Per model: each profiled function's median calls and seconds per run, local vs s3, by s3 - local."""
    print("\n  --profile: driver-side calls per run (median of the rounds; inclusive seconds, nested calls counted "
          "in their callers too; 'storage total' = outermost batchscore.storage calls)")
    for model in models:
        loc, rem = results[model]["local"], results[model]["s3"]
        names = {k for x in loc + rem for k in x["profile"]}

        def med(runs: list[dict[str, Any]], name: str, i: int) -> float:
            return statistics.median(x["profile"].get(name, (0, 0.0))[i] for x in runs)

        order = {s: i for i, s in enumerate(STEPS)}
        rows = sorted(names, key=lambda n: (order.get(n.split(":")[0], 9), -(med(rem, n, 1) - med(loc, n, 1))))
        print(f"  {model}: {'step: function':<42} {'calls local':>11} {'calls s3':>9} {'local s':>8} {'s3 s':>8} "
              f"{'s3 - local':>10}")
        for n in rows:
            lc, rc, ls, rs = med(loc, n, 0), med(rem, n, 0), med(loc, n, 1), med(rem, n, 1)
            if max(ls, rs) < 0.005:
                continue
            print(f"  {'':<{len(model)}}  {n:<42} {lc:>11.0f} {rc:>9.0f} {ls:>8.3f} {rs:>8.3f} {rs - ls:>+10.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--models", nargs="+", default=["light", "heavy"], choices=sorted(MODELS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--profile", action="store_true",
                   help="also time the driver-side store, Delta, report and Spark-job calls of each step (both cases)")
    args = p.parse_args()

    try:
        weed_binary()
    except BatchscoreError as e:
        print(f"storage benchmark: {e}")
        return 1
    data = make_data(args.rows)
    for model in args.models:
        if not (OUT / f"{model}.onnx").exists():
            write_onnx_mlp(OUT / f"{model}.onnx", MODELS[model][0])
    load0 = os.getloadavg()
    metrics_port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, \
            LocalS3(buckets=(BUCKET,), args=[f"-metricsPort={metrics_port}", "-metricsIp=127.0.0.1"]) as s3:
        work = Path(tmp)
        os.environ.update(s3.env())  # before the session: local-mode executors inherit the driver's env
        os.environ["BATCHSCORE_ARTIFACT_CACHE"] = str(work / "artifact-cache")
        from batchscore.storage import Storage

        fs, _ = Storage().filesystem(f"s3://{BUCKET}/x")
        t0 = time.perf_counter()
        input_bytes = upload(fs, data, f"{BUCKET}/input/{data.name}")
        model_bytes = {m: upload(fs, OUT / f"{m}.onnx", f"{BUCKET}/models/{m}.onnx") for m in args.models}
        up_s = time.perf_counter() - t0
        (work / "local").mkdir()
        locations = {"local": str(work / "local"), "s3": f"s3://{BUCKET}/runs",
                     "local:input": str(data), "s3:input": f"s3://{BUCKET}/input/{data.name}"}
        for m in args.models:
            locations[f"local:{m}"] = str(OUT / f"{m}.onnx")
            locations[f"s3:{m}"] = f"s3://{BUCKET}/models/{m}.onnx"

        from batchscore.jobs._session import build_session

        spark = build_session("bench-storage", master="local[2]", conf={"spark.ui.showConsoleProgress": "false",
                                                                        "spark.sql.shuffle.partitions": "2"})
        meter = StepMeter()
        profiler = Profiler() if args.profile else None
        probe = StoreProbe(s3, metrics_port)
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        t_bench = time.perf_counter()
        for model in args.models:
            results[model] = {c: [] for c in CASES}
            for r in range(args.reps + 1):  # round 0: warm-up (JIT, Python workers, model caches, imports)
                order = CASES if r % 2 == 0 else CASES[::-1]
                for case in order:
                    got = one_run(spark, meter, probe, fs, work, model, case, f"r{r}", locations, profiler)
                    print(f"  [{model} round {r}{' (warm-up)' if r == 0 else ''} {case:<5}] "
                          + " ".join(f"{s} {got['steps'][s]:.2f}s" for s in STEPS)
                          + f"  run {got['run']:.2f}s", flush=True)
                    if r > 0:
                        results[model][case].append(got)
        bench_s = time.perf_counter() - t_bench
        spark.stop()
        load1 = os.getloadavg()

        ok = True
        print(f"\nstorage benchmark: batchscore run, every location local vs on S3 (SeaweedFS {s3.endpoint}), "
              f"{args.rows:,} rows x {N_FEATURES} float32, local[2], fresh redis-server per run; "
              f"median of {args.reps} rounds after 1 warm-up")
        print(f"  input {mb(input_bytes)} in {len(list(data.glob('*.parquet')))} files; models "
              + ", ".join(f"{m} {model_bytes[m]:,} B" for m in args.models)
              + f"; upload {up_s:.1f}s; benchmark {bench_s:.0f}s; "
              f"load average {load0[0]:.2f} before, {load1[0]:.2f} after")
        print(f"\n  {'model':<6} {'step':<9} {'local s':>8} {'s3 s':>8} {'local rows/s':>13} {'s3 rows/s':>11} "
              f"{'s3/local':>9} {'rounds':>16}  bar")
        for model in args.models:
            loc, rem = results[model]["local"], results[model]["s3"]
            for step in (*STEPS, "run"):
                ls = [x["steps"][step] if step != "run" else x["run"] for x in loc]
                ss = [x["steps"][step] if step != "run" else x["run"] for x in rem]
                ratios = [a / b for a, b in zip(ls, ss, strict=True)]
                ratio = statistics.median(ratios)
                bar = BARS.get(step)
                if bar is not None:
                    met = ratio >= bar
                    ok &= met
                    verdict = f">= {bar:.2f}x: {'met' if met else 'MISSED'}"
                else:
                    verdict = "(informational)"
                lm, sm = statistics.median(ls), statistics.median(ss)
                print(f"  {model:<6} {step:<9} {lm:>8.2f} {sm:>8.2f} {args.rows / lm:>13,.0f} {args.rows / sm:>11,.0f} "
                      f"{ratio:>8.2f}x {min(ratios):>7.2f}..{max(ratios):<7.2f}  {verdict}")

        print("\n  bytes moved per S3 run (median of the rounds): S3 gateway counters (client <-> store), "
              "requests by type, weed process rchar/wchar")
        print(f"  {'model':<6} {'step':<9} {'to store':>10} {'from store':>11} {'GET+HEAD':>8} {'PUT':>5} "
              f"{'POST':>5} {'LIST':>5} {'DEL':>5} {'weed rchar':>11} {'weed wchar':>11} {'weed CPU':>8}  "
              "from-store / staged bytes")
        for model in args.models:
            rem = results[model]["s3"]
            staged = statistics.median(x["staged_bytes"] for x in rem)
            for step in (*STEPS, "run"):
                def med(key: str, step: str = step, rem: list[dict[str, Any]] = rem) -> float:
                    if step == "run":
                        return statistics.median(sum(x["bytes"][s].get(key, 0.0) for s in STEPS) for x in rem)
                    return statistics.median(x["bytes"][step].get(key, 0.0) for x in rem)
                sent = med("net_sent")
                extra = ""
                if step in ("score", "run"):  # the driver reads the model once a run (executors: cached)
                    inferred = sent - model_bytes[model] - input_bytes
                    extra = f"{inferred / staged:.2f}x after model + input" if staged else ""
                else:
                    extra = f"{sent / staged:.2f}x" if staged else ""
                print(f"  {model:<6} {step:<9} {mb(med('net_received')):>10} {mb(sent):>11} {med('req_GET'):>8.0f} "
                      f"{med('req_PUT'):>5.0f} {med('req_POST'):>5.0f} {med('req_LIST'):>5.0f} "
                      f"{med('req_DELETE'):>5.0f} {mb(med('proc_rchar')):>11} {mb(med('proc_wchar')):>11} "
                      f"{med('proc_cpu'):>7.2f}s  {extra}")
            objs = statistics.median(x["objects"] for x in rem)
            written = statistics.median(x["written"] for x in rem)
            lw = statistics.median(x["written"] for x in results[model]["local"])
            print(f"  {model:<6} left in the bucket: {objs:.0f} objects, {mb(written)} (local run: {mb(lw)} on disk); "
                  f"staged {mb(staged)} in {rem[0]['staged_files']} files; model {model_bytes[model]:,} B, "
                  f"input {mb(input_bytes)}")
        print("  (to/from store: HTTP bodies of client requests as the S3 gateway counts them; weed rchar/wchar: "
              "every read()/write() of the weed process, i.e. client sockets + its internal gateway/filer/volume "
              "loopback traffic + volume files; weed CPU: its user + system seconds, on the same 2 cores as Spark)")
        cores = os.cpu_count() or 1
        print(f"\n  CPU budget per step (median of the rounds): busy CPU-seconds of the whole machine ({cores} cores: "
              "Spark's JVM, its Python workers, weed, redis-server) and the fastest S3 step they allow")
        print(f"  {'model':<6} {'step':<9} {'local CPU-s':>11} {'s3 CPU-s':>9} {'of it weed':>10} {'s3 floor s':>10} "
              f"{'local s':>8} {'best s3/local':>13}")
        for model in args.models:
            loc, rem = results[model]["local"], results[model]["s3"]
            for step in STEPS:
                lc = statistics.median(x["cpu"].get(step, 0.0) for x in loc)
                sc = statistics.median(x["cpu"].get(step, 0.0) for x in rem)
                weed = statistics.median(x["bytes"].get(step, {}).get("proc_cpu", 0.0) for x in rem)
                lw = statistics.median(x["steps"][step] for x in loc)
                floor = sc / cores
                print(f"  {model:<6} {step:<9} {lc:>11.2f} {sc:>9.2f} {weed:>10.2f} {floor:>10.2f} {lw:>8.2f} "
                      f"{(lw / floor if floor else float('inf')):>12.2f}x")
        print("  (s3 floor: the S3 step's CPU-seconds spread perfectly over every core; a step cannot be faster while "
              "the store's CPU is the executors': best s3/local = local s / s3 floor)")
        if profiler is not None:
            print_profile(results, args.models)
        print("goals: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
