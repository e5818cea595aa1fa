"""End to end in the Airflow environment: `airflow db migrate` on SQLite, then `dag.test()` runs
the real chain through the job environment's real spark-submit on local Spark and a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import JOB_ENV, REPO, job_python

AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="module", autouse=True)
def airflow_db() -> None:
    assert os.environ.get("AIRFLOW_HOME"), "run through `make test-dags` (sets AIRFLOW_HOME)"
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def _model(tmp_path: Path, **validation: object) -> Path:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir(exist_ok=True)
    job_python(
        "import sys; from jobs.demo import write_onnx_mlp, write_features; "
        "write_onnx_mlp(sys.argv[1], (8, 16, 1)); write_features(sys.argv[2], 1000, 8)",
        str(tmp_path / "model.onnx"), str(tmp_path / "features.parquet"),
    )
    cfg = {
        "name": "e2e",
        "model": {"uri": str(tmp_path / "model.onnx"), "format": "onnx", "version": "v1"},
        "input": {"path": str(tmp_path / "features.parquet"), "key": "user_id", "features": [f"f{i}" for i in range(8)]},
        "outputs": {"delta": {"path": str(tmp_path / "pred")}, "redis": {"key_prefix": "af"}},
        "scoring": {"device": "cpu"},
        "validation": {"range": {"min": 0.0, "max": 1.0}, **validation},
        "runtime": {"report_dir": str(tmp_path / "runs")},
        "spark": {"conf": {"spark.sql.shuffle.partitions": 2}},
    }
    path = conf_dir / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dag(monkeypatch: pytest.MonkeyPatch, conf: Path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BATCHSCORE_CONF_DIR", str(conf.parent))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    from _lib.dag_factory import build_all

    return build_all()["batchscore_e2e"]


def test_dag_test_scores_validates_and_publishes(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _model(tmp_path)
    dag = _dag(monkeypatch, conf)
    run = dag.test(logical_date=datetime(2026, 11, 22, tzinfo=UTC))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"score": "success", "validate": "success", "publish": "success"}, states
    check = """
import json, sys
from deltalake import DeltaTable
from batchscore.config import load_model_config
from batchscore.reader import ScoreReader
from jobs.demo import expected_scores
cfg = load_model_config(sys.argv[1])
dt = DeltaTable(cfg.outputs.delta.path)
t = dt.to_pyarrow_table()
keys = [0, 5, 999]
want = expected_scores(cfg.model_path, cfg.input.path, "user_id", keys, cfg.input.features)
got = ScoreReader(sys.argv[2], prefix="af").get_many("e2e", keys)
print(json.dumps({"version": dt.version(), "rows": t.num_rows, "run_ids": sorted(set(t["run_id"].to_pylist())),
                  "run_date": dt.history()[0].get("batchscore.run_id"),
                  "same": all(got[str(k)].value == float(w[0]) for k, w in zip(keys, want))}))
"""
    result = json.loads(job_python(check, str(conf), redis_url).strip().splitlines()[-1])
    assert result["version"] == 0 and result["rows"] == 1000 and result["same"] is True
    assert len(result["run_ids"]) == 1 and result["run_ids"][0].startswith("manual__")
    # run_date reached the job explicitly: the score report records it.
    report = json.loads(next((tmp_path / "runs" / "e2e").glob("*/score.json")).read_text())
    assert report["run_date"] == "2026-11-22"


def test_exit_codes_decide_retry(tmp_path: Path) -> None:
    """Rejections (3) and bad input (2) fail fast; infrastructure errors (4) stay retryable."""
    from _lib.dag_factory import BatchscoreSubmitOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    app = tmp_path / "exit_with.py"
    app.write_text("import sys; sys.exit(int(sys.argv[1]))\n")
    os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": "local[1]"})

    def op(code: int) -> BatchscoreSubmitOperator:
        py = str(JOB_ENV / "bin" / "python")
        return BatchscoreSubmitOperator(
            task_id=f"exit{code}", application=str(app), application_args=[str(code)],
            spark_binary=str(JOB_ENV / "bin" / "spark-submit"), durable=False,
            env_vars={"PYSPARK_PYTHON": py, "PYSPARK_DRIVER_PYTHON": py},
        )

    for code in (2, 3):
        with pytest.raises(AirflowFailException, match=f"exited {code}"):
            op(code).execute({})
    with pytest.raises(AirflowException) as err:
        op(4).execute({})
    assert not isinstance(err.value, AirflowFailException)
    assert REPO.exists()
