"""Fixtures for the Airflow tier; runs in the Airflow environment (.venv-airflow), which has no
pyspark/pandas/batchscore: the job environment is reached only through subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB_ENV = Path(os.environ.get("BATCHSCORE_JOB_ENV", REPO / ".venv"))
sys.path.insert(0, str(REPO / "dags"))
# Before anything imports airflow: the DAG bundle is this repo's dags/ folder.
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real redis-server on a free loopback port (raw socket PING: no redis client here)."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    url = f"redis://127.0.0.1:{port}/0"
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", url)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def job_python(code: str, *args: str) -> str:
    """Run ``code`` in the job environment and return its stdout."""
    res = subprocess.run([str(JOB_ENV / "bin" / "python"), "-c", code, *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout
