"""The DAG files load in a real Airflow DagBag and import nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["pyspark", "pandas", "numpy", "great_expectations", "torch", "onnxruntime", "deltalake", "batchscore", "jobs"]


def _dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_model_config_gets_a_dag_that_loads() -> None:
    bag = _dagbag()
    assert bag.import_errors == {}
    names = {yaml.safe_load(p.read_text())["name"] for p in (REPO / "conf" / "models").glob("*.yaml")}
    assert set(bag.dag_ids) == {f"batchscore_{n}" for n in names}
    dag = bag.get_dag("batchscore_demo")
    assert [t.task_id for t in dag.topological_sort()] == ["score", "validate", "publish"]
    score = dag.get_task("score")
    assert score.downstream_task_ids == {"validate"}
    assert dag.get_task("validate").downstream_task_ids == {"publish"}
    assert score.pool == "batchscore_gpu"  # demo's device is auto: it takes a GPU slot
    assert dag.get_task("publish").pool == "default_pool"
    for task in dag.tasks:
        assert task.name == f"batchscore-{task.task_id}-demo"
        assert task.application.endswith(f"jobs/{task.task_id}.py")
        assert task.retries == 2
        args = task.application_args
        assert args[args.index("--run-date") + 1].startswith("{{ params.run_date")
        assert "--run-id" in args
        assert task.conf["spark.pyspark.python"].endswith(".venv/bin/python")
        assert task._spark_binary.endswith("/bin/spark-submit")  # the job environment's, not PATH's


def test_dag_files_import_nothing_heavy() -> None:
    for path in (REPO / "dags").glob("*.py"):
        code = (
            f"import sys, json, runpy; sys.path.insert(0, {str(path.parent)!r}); "
            f"runpy.run_path({str(path)!r}); print(json.dumps(sorted(sys.modules)))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        loaded = {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}
        assert not loaded & set(HEAVY), (path.name, sorted(loaded & set(HEAVY)))
