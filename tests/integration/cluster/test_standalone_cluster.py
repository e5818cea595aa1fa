"""The model scored on a real Spark standalone cluster (master + worker on 127.0.0.1) through
``spark-submit --master spark://...`` with the packaged code, compared with local mode.

Executors get the code only from the wheel (``--py-files``, as .zip) and their Python from an
archive (``--archives ...#env``, ``spark.pyspark.python=./env/bin/python``): the docs/cluster.md
recipe. ``BATCHSCORE_CLUSTER_BACKFILL=1`` adds ``spark-submit jobs/backfill.py`` on the same cluster
(about a minute more on two cores, so not in the default run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchscore.config import load_model_config
from batchscore.jobs.score import score
from batchscore.testing.demo_data import mlp_forward, mlp_weights

from .standalone import REPO, Standalone, build_py_files, spark_home, thin_env_archive

pytestmark = [pytest.mark.integration, pytest.mark.spark]
LAYERS = (8, 16, 1)
DAYS = ["2026-11-01", "2026-11-02"]


def model_outputs(features: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, scores) of the MLP computed directly in numpy, ordered by key."""
    t = pq.read_table(features).sort_by("user_id")
    x = np.column_stack([t[f"f{i}"].to_numpy() for i in range(LAYERS[0])])
    return t["user_id"].to_numpy(), mlp_forward(mlp_weights(LAYERS), x)[:, 0]


def staged(path: str) -> dict[str, np.ndarray]:
    t = pq.read_table(path).sort_by("user_id")
    return {c: t[c].to_numpy() for c in ("user_id", "score")} | {"model_version": np.asarray(t["model_version"])}


def submit(cluster: Standalone, ship: list[str], script: str, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1")
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url, "--deploy-mode", "client",
           "--driver-memory", "1g", "--executor-memory", "1g", "--total-executor-cores", "1", *ship,
           "--conf", "spark.ui.enabled=false", str(REPO / "jobs" / script), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], cluster: Standalone) -> str:
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"{' '.join(proc.args[-8:])}\n{err[-4000:]}\n{cluster.log_tail()}"  # type: ignore[index]
    return out


def shipped(tmp_path: Path) -> list[str]:
    """The spark-submit options that ship the packaged code and environment to the executors."""
    ship_dir = tmp_path / "ship"
    ship_dir.mkdir()
    py_files = build_py_files(ship_dir)
    archive = Path(os.environ.get("BATCHSCORE_CLUSTER_ENV_ARCHIVE") or thin_env_archive(ship_dir)).resolve()
    return ["--archives", f"{archive}#env", "--py-files", str(py_files),
            "--conf", "spark.pyspark.python=./env/bin/python",  # executors: the shipped environment
            "--conf", f"spark.pyspark.driver.python={sys.executable}"]  # driver (client mode): the job env


def ran_on_the_worker(cluster: Standalone) -> None:
    """The work really ran on the worker's executor, in the unpacked archive."""
    apps = sorted(cluster.work_dir.glob("app-*/*"))
    assert apps and (apps[-1] / "env" / "bin" / "python").exists(), apps


def test_spark_submit_to_a_standalone_cluster_matches_local_mode(
    standalone: Standalone, spark: Any, make_config: Any, tmp_path: Path
) -> None:
    cfg_path = make_config(rows=3000, layers=LAYERS)
    cfg = load_model_config(cfg_path)
    args = ["--model-config", str(cfg_path), "--run-date", "2026-11-22", "--run-id", "on-cluster"]
    assert "== score m ==" in finish(submit(standalone, shipped(tmp_path), "score.py", args, tmp_path), standalone)
    ran_on_the_worker(standalone)

    keys, want = model_outputs(cfg.input.path)
    local = score(spark, cfg, run_id="local-mode", run_date="2026-11-22")
    on_cluster, in_local = staged(f"{cfg.outputs.delta.path}/runs/on-cluster"), staged(local.staged_path)
    np.testing.assert_array_equal(on_cluster["user_id"], keys)
    np.testing.assert_array_equal(in_local["user_id"], keys)
    np.testing.assert_allclose(on_cluster["score"], in_local["score"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(on_cluster["score"], want, atol=1e-5)  # and both are the model's own outputs
    assert set(on_cluster["model_version"]) == {"v1"}


@pytest.mark.skipif(not os.environ.get("BATCHSCORE_CLUSTER_BACKFILL"), reason="set BATCHSCORE_CLUSTER_BACKFILL=1")
def test_spark_submit_backfill_on_the_cluster(standalone: Standalone, make_config: Any, tmp_path: Path) -> None:
    cfg_path = make_config(rows=500, layers=LAYERS)
    cfg = load_model_config(cfg_path)
    args = ["--model-config", str(cfg_path), "--from", DAYS[0], "--to", DAYS[-1]]
    finish(submit(standalone, shipped(tmp_path), "backfill.py", args, tmp_path), standalone)
    ran_on_the_worker(standalone)

    history = DeltaTable(f"{cfg.outputs.delta.path}_history")  # one commit, one partition per date
    got = history.to_pyarrow_table(columns=["run_date", "user_id", "score"])
    got = got.sort_by([("run_date", "ascending"), ("user_id", "ascending")])
    assert history.version() == len(DAYS) - 1
    assert sorted({str(d) for d in got["run_date"].to_pylist()}) == DAYS
    _, want = model_outputs(cfg.input.path)
    np.testing.assert_allclose(got["score"].to_numpy(), np.concatenate([want] * len(DAYS)), atol=1e-5)
