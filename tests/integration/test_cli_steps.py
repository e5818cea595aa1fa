"""The steps one by one through real entry points: spark-submit jobs/score.py, then the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchscore.testing.demo_data import expected_scores

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_spark_submit_score_then_cli_validate_publish_lookup(make_config: Any, redis_url: str) -> None:
    cfg = make_config(rows=1000)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    args = ["--model-config", str(cfg), "--run-date", "2026-11-22", "--run-id", "steps1"]
    out = _run([str(bindir / "spark-submit"), "--master", "local[2]", str(REPO / "jobs" / "score.py"), *args], env)
    assert "== score m ==" in out.stdout
    _run([sys.executable, "-m", "batchscore", "validate", "--model-config", str(cfg)], env)  # latest scored run
    out = _run([sys.executable, "-m", "batchscore", "publish", *args], env)
    assert "redis version" in out.stdout and "delta version : 0" in out.stdout
    keys = [0, 7, 999]
    out = _run([sys.executable, "-m", "batchscore", "lookup", "--model-config", str(cfg), "--json", *map(str, keys)],
               env)
    import json

    got = [json.loads(line) for line in out.stdout.splitlines()]
    from batchscore.config import load_model_config

    c = load_model_config(cfg)
    want = expected_scores(c.model_path, c.input.path, "user_id", keys, c.input.features or [])
    assert [g["key"] for g in got] == ["0", "7", "999"]
    assert [g["values"]["score"] for g in got] == [float(w[0]) for w in want]
    assert {g["model_version"] for g in got} == {"v1"}


def test_step_help_and_unknown_verb() -> None:
    res = subprocess.run([sys.executable, "-m", "batchscore", "publish", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--model-config" in res.stdout and "--run-id" in res.stdout
    res = subprocess.run([sys.executable, "-m", "batchscore", "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr


def test_the_cli_keeps_spark_logs_in_a_file_and_warns_once_for_a_cpu_fallback(
        make_config: Any, tmp_path: Path) -> None:
    """``batchscore score`` without ``--verbose``: Spark's own WARN lines and progress bars go to the
    log file it names, and ``device: auto`` without a GPU warns once per run (not once per Python
    worker: the four tasks below load the model in two workers). ``--verbose`` puts Spark's lines
    back on the console."""
    import re

    cfg = make_config(rows=4000, scoring={"device": "auto"}, spark={"conf": {"spark.sql.shuffle.partitions": "4"}})
    logs = tmp_path / "logs"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "BATCHSCORE_LOG_DIR": str(logs),
           "CUDA_VISIBLE_DEVICES": ""}
    res = _run([sys.executable, "-m", "batchscore", "score", "--model-config", str(cfg), "--run-id", "q1",
                "--master", "local[2]"], env)
    err = res.stderr
    assert len(re.findall(r"found no GPU; scored on CPU", err)) == 1, err
    assert "no GPU is visible" not in err, err  # the per-worker warning is gone
    assert not re.search(r"^\S+ \S+ WARN ", err, flags=re.M) and "[Stage" not in err, err
    named = re.search(r"Spark's log: (\S+)", err)
    assert named and Path(named.group(1)).parent == logs and Path(named.group(1)).is_file(), err
    loud = _run([sys.executable, "-m", "batchscore", "score", "--model-config", str(cfg), "--run-id", "q2",
                 "--master", "local[2]", "--verbose"], env)
    assert "Spark's log:" not in loud.stderr and re.search(r"WARN", loud.stderr), loud.stderr[-2000:]
