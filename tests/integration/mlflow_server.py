"""A throwaway ``mlflow server`` on a free loopback port: SQLite backend store, artifacts served by
the server from a temporary directory. Started by a fixture, stopped (its whole process group)
after.

The server needs the full ``mlflow`` package (Flask, SQLAlchemy, alembic...), which the job
environment does not carry (its ``mlflow`` extra is mlflow-skinny, the client): it runs from
``$BATCHSCORE_MLFLOW_SERVER`` (an ``mlflow`` executable), else ``.venv-mlflow/bin/mlflow`` (``make
mlflow-env``), else the ``mlflow`` next to this interpreter when the full package is installed here.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from batchscore.testing.local_redis import free_port

REPO = Path(__file__).resolve().parents[2]
HINT = "make mlflow-env (a .venv-mlflow with the full mlflow package), or set BATCHSCORE_MLFLOW_SERVER"


def server_binary() -> str | None:
    """The ``mlflow`` executable that can run ``mlflow server``, or None."""
    env = os.environ.get("BATCHSCORE_MLFLOW_SERVER")
    if env:
        return env
    venv = REPO / ".venv-mlflow" / "bin" / "mlflow"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    here = Path(sys.executable).parent / "mlflow"
    if here.is_file() and all(importlib.util.find_spec(m) for m in ("flask", "sqlalchemy", "alembic")):
        return str(here)
    return None


class MlflowServer:
    def __init__(self, root: Path, exe: str) -> None:
        self.root, self.exe = root, exe
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner / huey workers: a quicker start
        cmd = [self.exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        with self.log.open("wb") as out:
            # Its own session: stop() ends the server and the workers it forks, and nothing else.
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the one this fixture started
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers left behind by a server that died first
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
