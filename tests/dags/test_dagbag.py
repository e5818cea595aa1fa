"""The DAG files load in a real Airflow DagBag, match the job contract and import nothing heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DAGS, REPO

HEAVY = ["pyspark", "pandas", "numpy", "pyarrow", "great_expectations", "torch", "onnxruntime",
         "deltalake", "redis", "batchscore", "jobs", "udfs", "validation"]
ALLOWED_IMPORTS = {"airflow", "yaml", "_lib", "__future__"}
MODEL_CONFIGS = sorted((REPO / "conf" / "models").glob("*.yaml"))


@pytest.fixture(scope="module")
def bag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_model_config_gets_one_dag_and_nothing_fails_to_import(bag) -> None:  # type: ignore[no-untyped-def]
    assert bag.import_errors == {}
    names = [yaml.safe_load(p.read_text())["name"] for p in MODEL_CONFIGS]
    assert names, "no conf/models/*.yaml"
    assert sorted(bag.dag_ids) == sorted(f"batchscore_{n}" for n in names)


def test_dag_files_parse_within_budget(bag) -> None:  # type: ignore[no-untyped-def]
    stats = {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats}
    assert set(stats) == {"batchscore_models.py"}, stats  # _lib/ is .airflowignore'd
    assert all(seconds < 1.0 for seconds in stats.values()), stats


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_tasks_follow_the_job_contract(bag, config: Path) -> None:  # type: ignore[no-untyped-def]
    from _lib.retry import ExitCodeRetryPolicy

    model = yaml.safe_load(config.read_text())
    name = model["name"]
    dag = bag.get_dag(f"batchscore_{name}")
    assert {t.task_id for t in dag.tasks} == {"route", "score", "validate", "publish", "backfill"}
    assert dag.get_task("route").downstream_task_ids == {"score", "backfill"}
    assert dag.get_task("score").downstream_task_ids == {"validate"}
    assert dag.get_task("backfill").downstream_task_ids == set()
    assert dag.get_task("validate").downstream_task_ids == {"publish"}
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.params["run_date"] == ""
    device = (model.get("scoring") or {}).get("device", "auto")
    for scoring in ("score", "backfill"):
        assert dag.get_task(scoring).pool == ("default_pool" if device == "cpu" else "batchscore_gpu")
    for task in dag.tasks:
        if task.task_id == "route":  # the branch: a Python task in the Airflow worker
            continue
        assert task.name == f"batchscore-{task.task_id}-{name}"
        assert task.application == str(REPO / "jobs" / f"{task.task_id}.py")
        assert Path(task.application).exists()
        assert task.pool == "default_pool" or task.task_id in ("score", "backfill")
        assert task.retries == 2 and isinstance(task.retry_policy, ExitCodeRetryPolicy)
        assert task.execution_timeout is not None
        args = task.application_args
        assert args[:2] == ["--model-config", str(config.resolve())]
        if task.task_id == "backfill":  # one date, the same window, into the history table
            assert args[args.index("--from") + 1] == args[args.index("--to") + 1]
            assert "params.run_date" in args[args.index("--from") + 1] and "--run-id" not in args
        else:
            assert "params.run_date" in args[args.index("--run-date") + 1]
            assert "batchscore_run_id" in args[args.index("--run-id") + 1]
        # The job environment's own interpreter and spark-submit, not whatever is on PATH.
        job_python = str(REPO / ".venv" / "bin" / "python")
        assert task.conf["spark.pyspark.python"] == job_python
        assert task.env_vars == {"PYSPARK_PYTHON": job_python, "PYSPARK_DRIVER_PYTHON": job_python}
        assert task._spark_binary == str(REPO / ".venv" / "bin" / "spark-submit")
        # Task logs without progress bars or Spark's INFO lines (the shipped log4j2 file).
        assert task.conf["spark.ui.showConsoleProgress"] == "false"
        log_config = DAGS / "spark-log4j2.properties"
        assert task.conf["spark.driver.extraJavaOptions"].startswith(f"-Dlog4j2.configurationFile=file:{log_config}")
        assert log_config.is_file()
        for key, value in ((model.get("spark") or {}).get("conf") or {}).items():
            assert task.conf[key] == str(value)


def test_secrets_stay_out_of_rendered_fields(bag) -> None:  # type: ignore[no-untyped-def]
    """The Redis URL is inherited from the worker's environment, never templated into a task."""
    for dag in bag.dags.values():
        for task in dag.tasks:
            if task.task_id == "route":
                continue
            fields = json.dumps([task.application_args, task.conf, task.env_vars])
            assert "REDIS" not in fields.upper(), (dag.dag_id, task.task_id)


def test_dag_files_import_nothing_heavy() -> None:
    """A fresh interpreter per DAG file: no pyspark, pandas, numpy, GX, model runtime or batchscore."""
    files = sorted(DAGS.glob("*.py"))
    assert files
    for path in files:
        code = (
            "import json, runpy, sys; "
            f"runpy.run_path({str(path)!r}, run_name='dag_file'); "
            "print(json.dumps(sorted(sys.modules)))"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        loaded = {m.split(".")[0] for m in json.loads(res.stdout.strip().splitlines()[-1])}
        assert "airflow" in loaded  # the file really ran
        assert not loaded & set(HEAVY), (path.name, sorted(loaded & set(HEAVY)))


def test_dag_code_imports_only_airflow_yaml_and_the_stdlib() -> None:
    """Static check of every module under dags/, including imports inside functions."""
    for path in sorted(DAGS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            bad = [r for r in roots if r not in ALLOWED_IMPORTS and r not in sys.stdlib_module_names]
            assert not bad, f"{path.relative_to(REPO)}:{node.lineno} imports {bad}"


def test_job_environment_has_no_pyspark_client() -> None:
    """The provider's pyspark-client overwrites pyspark's files: it belongs to .venv-airflow only."""
    job_python = REPO / ".venv" / "bin" / "python"
    if not job_python.exists():
        pytest.skip("no job environment (.venv)")
    code = ("import importlib.metadata as m, sys; "
            "sys.exit(0 if 'pyspark-client' not in {d.metadata['Name'].lower() for d in m.distributions()} else 1)")
    assert subprocess.run([str(job_python), "-c", code], timeout=120).returncode == 0
