"""The DAGs under a real Airflow deployment in miniature, started outside the repository.

``airflow api-server`` (which serves the execution API the tasks talk to), ``airflow scheduler``
(LocalExecutor) and ``airflow dag-processor`` run on a fresh SQLite home in tmp_path, with their
working directory in another temporary directory, everything bound to 127.0.0.1. The model configs
use *relative* paths: they resolve against their project root (the parent of their ``conf/``
folder), not the working directory, so nothing lands where the processes were started.

- ``batchscore_demo`` keeps its cron schedule: unpausing it (start date in the past, catchup off)
  makes exactly one scheduled run, for the latest tick. Its scoring task needs the
  ``batchscore_gpu`` pool (``device: auto``), created the way dags/README.md says. The published
  scores (``batchscore lookup --json``) are the model's own.
- ``batchscore_demoblock`` (``device: cpu``, manual runs, a range rule every score breaks) is
  triggered: ``validate`` fails once despite ``retries: 2``, ``publish`` is ``upstream_failed``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import AIRFLOW, DAGS, REPO, free_port, run_job_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
KEYS = ["0", "7", "1999"]
DEADLINE_S = 360
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _configs(project: Path) -> tuple[Path, Path]:
    """Two model configs under project/conf with paths relative to project/."""
    demo = yaml.safe_load((REPO / "conf" / "models" / "demo.yaml").read_text())
    demo["model"]["uri"] = "data/model.onnx"
    demo["input"]["path"] = "data/features.parquet"
    demo["outputs"]["delta"]["path"] = "data/predictions"
    demo["outputs"]["redis"]["key_prefix"] = "sched"
    demo["runtime"] = {"report_dir": "runs"}
    demo["spark"] = {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": 2}}
    block = json.loads(json.dumps(demo))
    block["name"] = "demoblock"
    block["outputs"]["delta"]["path"] = "data/block_predictions"
    block["scoring"]["device"] = "cpu"
    block["validation"]["range"] = {"min": 0.0, "max": 0.05, "level": "block"}
    (project / "conf").mkdir(parents=True)
    paths = project / "conf" / "demo.yaml", project / "conf" / "demoblock.yaml"
    for path, cfg in zip(paths, (demo, block), strict=True):
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a zombie waits for its parent, it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Deployment:
    """The three Airflow components as subprocesses (each its own process group), in ``cwd``."""

    def __init__(self, home: Path, cwd: Path, env: dict[str, str]) -> None:
        self.home, self.cwd, self.env = home, cwd, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def cli(self, *args: str) -> str:
        res = subprocess.run([str(AIRFLOW), *args], cwd=self.cwd, env=self.env, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, f"airflow {' '.join(args)}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
        return res.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen([str(AIRFLOW), *args], cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"airflow {name} exited {proc.returncode}:\n{tail}")

    def tree(self) -> set[int]:
        """Our components and every process below them (task supervisors run in their own
        sessions, spark-submit's JVM below those)."""
        parent = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
        found = {p.pid for p in self.procs.values() if p.poll() is None}
        while True:
            more = {pid for pid, ppid in parent.items() if ppid in found} - found
            if not more:
                return found
            found |= more

    def stop(self) -> None:
        """SIGTERM to the components and all below them, then SIGKILL to whatever is left."""
        pids = self.tree()  # before any exits: orphans would be reparented out of the tree
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            while pids and time.monotonic() < deadline:
                pids = {pid for pid in pids if _running(pid)}
                time.sleep(0.2)
            if not pids:
                return

    def query(self, sql: str, *params: object) -> list[tuple]:  # type: ignore[type-arg]
        with sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def listening(self) -> list[str]:
        """Non-loopback TCP listeners of our processes ("addr:port" in /proc's hex)."""
        inodes = set()
        for pid in self.tree():
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue
        wide = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                addr, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and inode in inodes and addr.split(":")[0] not in LOOPBACK:
                    wide.append(addr)
        return wide


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str, job_env: Path) -> Iterator[Deployment]:
    home, cwd = tmp_path / "airflow-home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    settings = yaml.safe_load((DAGS / "dag_settings.yaml").read_text())
    settings.update(retries=2, retry_delay_seconds=1, execution_timeout_minutes=15,
                    models={"demoblock": {"schedule": None}})
    (tmp_path / "dag_settings.yaml").write_text(yaml.safe_dump(settings))
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        # The task runner reaches the execution API here; the api-server listens only on loopback.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "BATCHSCORE_DAG_SETTINGS": str(tmp_path / "dag_settings.yaml"),
        "BATCHSCORE_CONF_DIR": str(tmp_path / "project" / "conf"),
        "BATCHSCORE_JOB_ENV": str(job_env),
        "BATCHSCORE_REDIS_URL": redis_url,  # the worker's environment, as dags/README.md says
        "SPARK_LOCAL_IP": "127.0.0.1",  # the Spark driver binds to loopback too
    })
    env.pop("BATCHSCORE_PROJECT_ROOT", None)
    d = Deployment(home, cwd, env)
    d.cli("db", "migrate")
    d.cli("pools", "set", "batchscore_gpu", "1", "GPU scoring slots")
    try:
        d.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
        # Its log server binds every interface (no address setting in Airflow 3.3): skipped; the
        # api-server reads task logs from the shared local log folder instead.
        d.start("scheduler", "scheduler", "--skip-serve-logs")
        d.start("dag-processor", "dag-processor")
        yield d
    finally:
        d.stop()


def _wait(d: Deployment, what: str, check, timeout: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.alive()
        got = check()
        if got:
            return got
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_scheduler_runs_the_dags_from_another_working_directory(
    tmp_path: Path, deployment: Deployment, job_env: Path,
) -> None:
    started = time.monotonic()
    d = deployment
    demo, block = _configs(tmp_path / "project")
    py = str(job_env / "bin" / "python")
    run_job_env(py, "-m", "batchscore.jobs.demo", "--model-config", str(demo), "--rows", "2000", "--setup-only",
                cwd=d.cwd)

    ids = ("batchscore_demo", "batchscore_demoblock")
    _wait(d, "the DAG processor to store both DAGs", lambda: len(d.query(
        "select dag_id from serialized_dag where dag_id in (?, ?)", *ids)) == 2)
    unpaused_at = datetime.now(UTC)
    for proc in [subprocess.Popen([str(AIRFLOW), *args], cwd=d.cwd, env=d.env, stdout=subprocess.DEVNULL)
                 for args in (("dags", "unpause", "--treat-dag-id-as-regex", "-y", "^batchscore_"),
                              ("dags", "trigger", "batchscore_demoblock"))]:
        assert proc.wait(timeout=180) == 0

    def finished() -> list[tuple] | None:  # type: ignore[type-arg]
        runs = d.query("select dag_id, run_id, run_type, state, logical_date from dag_run order by dag_id")
        done = [r for r in runs if r[3] in ("success", "failed")]
        return runs if len(done) == len(runs) == 2 else None

    runs = {r[0]: r for r in _wait(d, "both DAG runs to finish", finished)}
    took = time.monotonic() - started
    states = {(dag, task): (state, tries) for dag, task, state, tries in d.query(
        "select dag_id, task_id, state, try_number from task_instance")}
    logs = d.home / "logs"

    # Unpausing a DAG whose start date is long past: one run, for the latest cron tick (no catchup).
    _, _, run_type, state, logical = runs["batchscore_demo"]
    assert (run_type, state) == ("scheduled", "success"), (runs, states)
    tick = unpaused_at.replace(hour=3, minute=0, second=0, microsecond=0)
    tick -= timedelta(days=1) if tick > unpaused_at else timedelta(0)
    assert logical.startswith(tick.strftime("%Y-%m-%d %H:%M:%S")), (logical, tick)
    assert {t: states[("batchscore_demo", t)][0] for t in ("route", "score", "validate", "publish", "backfill")} == {
        "route": "success", "score": "success", "validate": "success", "publish": "success", "backfill": "skipped"}

    # The blocking model: exit 3 at validate, no retry despite retries=2, nothing published.
    assert runs["batchscore_demoblock"][2:4] == ("manual", "failed")
    assert states[("batchscore_demoblock", "validate")] == ("failed", 1)
    assert states[("batchscore_demoblock", "publish")][0] == "upstream_failed"

    # The published scores are the model's own; read from yet another directory.
    out = run_job_env(str(job_env / "bin" / "batchscore"), "lookup", "--json", "--model-config", str(demo), *KEYS,
                      cwd=tmp_path)
    got = {r["key"]: r for r in map(json.loads, filter(None, out.splitlines()))}
    want = json.loads(run_job_env(py, str(REPO / "tests" / "dags" / "expected_scores.py"), str(demo), *KEYS,
                                  cwd=tmp_path))
    for key in KEYS:
        (value,) = got[key]["values"].values()
        assert math.isclose(value, want[key][0], rel_tol=1e-6, abs_tol=1e-7), (key, got[key], want[key])
    blocked = run_job_env(str(job_env / "bin" / "batchscore"), "lookup", "--json", "--model-config", str(block),
                          *KEYS, cwd=tmp_path)
    assert all(json.loads(line)["values"] is None for line in blocked.splitlines() if line)

    # Relative paths landed under the project root, nothing under the working directory.
    assert (tmp_path / "project" / "data" / "predictions" / "_delta_log").is_dir()
    assert (tmp_path / "project" / "runs" / "demo").is_dir()
    assert sorted(p.name for p in d.cwd.iterdir()) == []

    # Task logs: the job's own lines, no Spark INFO lines.
    (score_log,) = logs.glob("dag_id=batchscore_demo/run_id=*/task_id=score/attempt=1.log")
    text = score_log.read_text(errors="replace")
    assert "== score demo ==" in text, text[-3000:]
    assert "INFO SparkContext" not in text and "INFO Executor" not in text, text[-3000:]

    assert "[Stage " not in text, text[-3000:]  # no progress bars: spark-submit's --conf wins over the defaults
    assert d.listening() == []  # every component on loopback
    print(f"scheduler test: both runs finished {took:.0f} s after the deployment started")
