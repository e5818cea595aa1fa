"""The base install (the online reader) must not drag in Spark, pandas or model runtimes."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["pyspark", "pandas", "numpy", "pyarrow", "great_expectations", "onnxruntime", "torch", "deltalake"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


def test_reader_imports_nothing_heavy() -> None:
    loaded = _modules_after("from batchscore import ScoreReader, Score\nimport batchscore.config, batchscore.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_cli_help_works_without_spark() -> None:
    res = subprocess.run([sys.executable, "-m", "batchscore", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for verb in ("run", "score", "validate", "publish", "lookup"):
        assert verb in res.stdout
    assert "3 validation rejected" in res.stdout


def test_the_shared_test_plugins_load_without_the_job_environment() -> None:
    """tests/conftest.py's plugins also load in the Airflow environment (the DAG suite), which has no
    redis-py, Spark, pandas or Arrow: importing them must not pull any of those in (a CI run failed when
    local_azure imported local_redis, whose module imports redis)."""
    import ast
    from pathlib import Path

    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    plugins = next(ast.literal_eval(node.value) for node in ast.parse(conftest.read_text()).body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "pytest_plugins")
    assert plugins, "tests/conftest.py names no pytest_plugins"
    root = str(conftest.parents[1])
    loaded = _modules_after(f"import sys; sys.path.insert(0, {root!r})\n" + "\n".join(f"import {p}" for p in plugins))
    job_env = set(HEAVY) | {"redis"}
    assert not loaded & job_env, f"{plugins} import {sorted(loaded & job_env)}"
