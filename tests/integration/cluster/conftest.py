"""A real Spark standalone cluster on 127.0.0.1: one master and one worker, started from the job
environment's pyspark distribution and stopped (with their executors) at teardown."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from batchscore.testing.local_redis import free_port

from .standalone import Standalone, alive_workers, spark_home, spawn, stop


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    root = tmp_path_factory.mktemp("standalone")
    logs, work = root / "logs", root / "work"
    logs.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_HOSTNAME="127.0.0.1")
    port, web = free_port(), free_port()
    master_url, web_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web}"
    procs = [spawn("org.apache.spark.deploy.master.Master",
                   ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)], logs / "master.log", env)]
    cluster = Standalone(master_url, web_url, work, logs)
    try:
        procs.append(spawn("org.apache.spark.deploy.worker.Worker",
                           [master_url, "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                            "--webui-port", str(free_port()), "--work-dir", str(work)], logs / "worker.log", env))
        deadline = time.monotonic() + 60
        while alive_workers(web_url) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(f"the standalone master/worker did not come up\n{cluster.log_tail()}")
            time.sleep(0.25)
        yield cluster
    finally:
        for proc in reversed(procs):
            stop(proc)
