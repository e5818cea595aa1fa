"""``spark-submit jobs/run.py`` (score -> validate -> publish) on a standalone cluster whose worker
shares no disk with the driver (isolated.py: its own mount namespace, with /tmp (pytest's temporary
root: the driver's working directory and local model/feature copies; the driver's Spark scratch
dirs), the repo and the driver's artifact caches hidden under empty tmpfs mounts), every location
on S3 (SeaweedFS on loopback), the credentials in the driver's environment only.

The Delta table read back from S3 and the Redis lookups equal the model run directly with
onnxruntime on the local copies (bit-exact float32). The executors are proven to have run inside
the worker's namespace without the driver's files or credentials: the worker's descendants
(executor JVM, Python workers), sampled while the job runs, are in its mount namespace and see
none of the driver's paths nor any AWS_* variable, and the model's ``<sha256>`` landed in the
artifact cache inside that namespace (a tmpfs the host cannot see) while the driver's cache
stayed empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscore import ScoreReader
from batchscore.config import load_model_config
from batchscore.storage import artifact_cache_dir
from batchscore.testing.local_redis import free_port
from tests.integration.storage import conftest as storage_fixtures
from tests.integration.storage.conftest import delta_table, local_scores

from .isolated import (
    IsolatedWorker,
    ProcessWatch,
    cannot_isolate,
    hidden_dirs,
    isolated_env_archive,
    job_env,
    mnt_ns,
    spark_home_inside,
    spawn_isolated,
)
from .standalone import REPO, alive_workers, build_py_files, spark_home, spawn, stop

_WHY_NOT = cannot_isolate()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.spark,
    pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT)),
]
s3_project = storage_fixtures.s3_project  # the fixture: a config with every location on a fresh bucket
SCRUBBED = ("PYSPARK_", "SPARK_", "AWS_", "BATCHSCORE_", "PYTHONPATH", "VIRTUAL_ENV")


def _pytest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp().resolve()
    return base.parent if base.parent.name.startswith("pytest-of-") else base  # every pytest run's tmp dirs


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, IsolatedWorker]]:
    """(master URL, the worker): a master in this namespace, the worker in its own."""
    root = tmp_path_factory.mktemp("isolated")
    logs = root / "logs"
    logs.mkdir()
    private = Path(tempfile.mkdtemp(prefix="batchscore-worker-"))
    hidden = hidden_dirs(Path(tempfile.gettempdir()), REPO, _pytest_root(tmp_path_factory), Path.cwd(),
                         Path(artifact_cache_dir()), Path.home() / ".cache" / "batchscore")
    assert private not in hidden, (private, hidden)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    base.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_HOSTNAME="127.0.0.1")
    port, web = free_port(), free_port()
    master_url, web_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web}"
    procs = [spawn("org.apache.spark.deploy.master.Master",
                   ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)], logs / "master.log", base)]
    # The worker's environment: nothing of the driver's (no credentials, no batchscore settings).
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    env.update(SPARK_HOME=str(spark_home_inside(private)), SPARK_LOCAL_IP="127.0.0.1",
               SPARK_LOCAL_HOSTNAME="127.0.0.1", SPARK_LOCAL_DIRS=str(private / "local"),
               BATCHSCORE_ARTIFACT_CACHE=str(private / "cache"))
    try:
        worker_proc = spawn_isolated(["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                                      "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                                      "--work-dir", str(private / "work")], logs / "worker.log", env, private, hidden)
        procs.append(worker_proc)
        worker = IsolatedWorker(worker_proc.pid, private, hidden, logs)
        deadline = time.monotonic() + 60
        while alive_workers(web_url) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(f"the standalone master/isolated worker did not come up\n{worker.log_tail()}")
            time.sleep(0.25)
        yield master_url, worker
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(private, ignore_errors=True)  # an empty mountpoint on the host


def shipped(dest: Path, worker: IsolatedWorker) -> list[str]:
    """The docs/cluster.md options: the code as --py-files, the executors' Python as an archive."""
    dest.mkdir()
    return ["--archives", f"{isolated_env_archive(dest, worker.private)}#env", "--py-files", str(build_py_files(dest)),
            "--conf", "spark.pyspark.python=./env/bin/python",
            "--conf", f"spark.pyspark.driver.python={sys.executable}"]


def submit(master_url: str, ship: list[str], args: list[str], cwd: Path, driver_cache: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}  # AWS_* stay: the driver's
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1", BATCHSCORE_ARTIFACT_CACHE=str(driver_cache))
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", master_url, "--deploy-mode", "client",
           "--driver-memory", "1g", "--executor-memory", "1g", "--total-executor-cores", "1", *ship,
           "--conf", "spark.ui.enabled=false", "--conf", "spark.ui.showConsoleProgress=false",
           str(REPO / "jobs" / "run.py"), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_run_on_a_worker_that_shares_no_disk_with_the_driver(
    isolated: tuple[str, IsolatedWorker], s3_project: Any, s3_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    master_url, worker = isolated
    cfg_path = s3_project(rows=3000)
    cfg = load_model_config(cfg_path)
    locations = [cfg.model.uri, cfg.input.path, cfg.outputs.delta.path, cfg.outputs.history.path,  # type: ignore[union-attr]
                 cfg.runtime.report_dir]
    assert all(str(u).startswith("s3://") for u in locations), locations
    model = tmp_path / "model.onnx"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    want = local_scores(cfg_path)
    driver_cache = tmp_path / "driver-cache"

    # What the worker must not see: each exists here (so the check is not vacuous) and not there.
    probes = [REPO / "pyproject.toml", REPO / "udfs", job_env() / "pyvenv.cfg", cfg_path, model,
              tmp_path / "local-features.parquet", tmp_path]
    home_cache = Path.home() / ".cache" / "batchscore"
    probes += [p for p in (Path(artifact_cache_dir()), *home_cache.glob("*")) if p.exists()]
    assert all(p.exists() for p in probes)
    assert mnt_ns(worker.pid) != mnt_ns("self")
    assert not [p for p in probes if worker.inside(p).exists()], worker.hidden
    repo_there = worker.inside(REPO)  # an empty tmpfs over the repo (or no repo: a checkout under the hidden /tmp)
    assert not repo_there.exists() or not os.listdir(repo_there)
    assert not home_cache.is_dir() or not os.listdir(worker.inside(home_cache))
    assert not any(worker.private.iterdir())  # the private tmpfs: invisible here
    fresh_tmp = {n for n in os.listdir(worker.inside(tempfile.gettempdir())) if not n.startswith("hsperfdata_")}
    assert fresh_tmp == {worker.private.name}, fresh_tmp  # a /tmp of its own there (and the JVMs' perf data)

    ship = shipped(tmp_path / "ship", worker)
    args = ["--model-config", str(cfg_path), "--run-date", "2026-11-30", "--run-id", "isolated"]
    with ProcessWatch(worker.pid, probes) as watch:
        proc = submit(master_url, ship, args, tmp_path, driver_cache)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        logs = worker.log_tail()  # the executors' stderr lives in the worker's tmpfs: read it now
    assert proc.returncode == 0, f"spark-submit jobs/run.py: exit {proc.returncode}\n{err[-6000:]}\n{logs}"
    assert "== run m ==" in out, out

    # The executors and their Python workers ran in the worker's namespace, blind to the driver's files.
    executors, pythons = watch.of_kind("executor"), watch.of_kind("python")
    assert executors and pythons, ({s.pid: s.cmdline[:3] for s in watch.seen.values()}, logs)
    for seen in executors + pythons:
        assert seen.mnt == mnt_ns(worker.pid) != mnt_ns("self"), seen
        assert not any(seen.sees.values()), (seen.pid, seen.kind, seen.sees)
        assert not {n for n in seen.env_names if n.startswith("AWS_")}, (seen.kind, seen.env_names)
    assert all(s.cmdline[0] == "./env/bin/python" for s in pythons), [s.cmdline for s in pythons]
    apps = sorted(worker.inside(worker.work).glob("app-*/*"))
    assert apps and (apps[-1] / "env" / "bin" / "python").exists(), apps
    # The model came from S3 into the cache inside the worker's namespace, not into the driver's.
    cached = worker.inside(worker.cache / sha)
    assert cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == sha, \
        list(worker.inside(worker.cache).iterdir())
    assert not worker.cache.exists()  # seen from here, the worker's cache does not exist
    assert not driver_cache.exists() or sha not in os.listdir(driver_cache)

    # The results: bit-exact float32 from S3 (Delta) and from Redis.
    dt = delta_table(cfg.outputs.delta.path)
    got = dt.to_pyarrow_table()
    assert got.num_rows == len(want) == 3000
    assert dict(zip(got["user_id"].to_pylist(), got["score"].to_pylist(), strict=True)) == want
    assert set(got["run_id"].to_pylist()) == {"isolated"}
    found = ScoreReader(redis_url, prefix="t").get_many("m", list(want))
    assert all(found[str(k)] is not None and found[str(k)].value == want[k] for k in want)  # type: ignore[union-attr]
