"""Helpers for the standalone-cluster test: master/worker processes from the job environment's
pyspark distribution, and the packaged code and environment shipped to executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


@dataclass
class Standalone:
    master_url: str
    web_url: str
    work_dir: Path
    logs: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the master's, worker's and executors' logs, for failure messages."""
        files = sorted(self.logs.glob("*.log")) + sorted(self.work_dir.glob("app-*/*/stderr"))
        return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-chars:]}" for f in files)


def spawn(cls: str, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # spark-class execs the JVM; its own session lets teardown signal it and the executors it forked.
    with log.open("wb") as out:
        return subprocess.Popen([str(spark_home() / "bin" / "spark-class"), cls, *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def alive_workers(web_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{web_url}/json/", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    except (OSError, ValueError):  # not up yet, or still serving its HTML page while it starts
        return 0


def thin_env_archive(dest: Path) -> Path:
    """A tiny stand-in for ``make package``'s packed environment: a venv that sees the job
    environment's third-party packages but NOT this repo (no editable install), so executors can
    only import batchscore/udfs from the wheel shipped with ``--py-files``. Set
    ``BATCHSCORE_CLUSTER_ENV_ARCHIVE=dist/batchscore-env.tar.gz`` to test the real packed env."""
    env_dir = dest / "thin-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    job_site = sysconfig.get_paths()["purelib"]
    (site / "job_env.pth").write_text(job_site + "\n")  # a path line: the job env's .pth files stay unread
    probe = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import batchscore"], cwd=dest, capture_output=True)
    assert probe.returncode != 0, "the thin env must not see the repo, or the test proves nothing"
    archive = dest / "thin-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env_dir, arcname=".")
    return archive


def build_py_files(dest: Path) -> Path:
    """``pip wheel`` of this repo, as a .zip: what ``make package`` puts in dist/ for ``--py-files``
    (PySpark puts only .zip/.egg/.jar py-files on the workers' sys.path, not .whl)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dest), str(REPO)], check=True, capture_output=True, timeout=120)
    wheel = next(dest.glob("batchscore-*.whl"))
    return wheel.rename(dest / "batchscore.zip")
