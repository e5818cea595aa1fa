"""Shared fixtures: a real local[2] SparkSession, real redis-server processes, generated models.

Nothing here mocks Spark, Redis or Delta: tests run against the real things on loopback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests.s3_fixtures` importable however pytest was started (the Airflow env too)
    sys.path.insert(0, str(REPO))
pytest_plugins = [
    "tests.s3_fixtures",  # s3_server, s3_env, s3_bucket, s3_server_private (SeaweedFS)
    "tests.azure_fixtures",  # azure_server, azure_env, azure_container (Azurite)
]
N_FEATURES = 8


def _job_python() -> str | None:
    """An interpreter whose pyspark ships Spark's jars: this one, or the job env's (the DAG tests)."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is not None and spec.origin and (Path(spec.origin).parent / "jars").is_dir():
        return sys.executable
    job_env = os.environ.get("BATCHSCORE_JOB_ENV")
    candidate = Path(job_env, "bin", "python") if job_env else None
    return str(candidate) if candidate is not None and candidate.is_file() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every JVM the tests start (the session fixture, spark-submit and CLI subprocesses) is
    short-lived: C1-only JIT, the serial GC and a class-data-sharing archive of Spark's classes
    (batchscore.testing.jvm_archive) take a local[2] start plus a small job from ~10 s to ~5 s on
    the 2-core VM. Built once (~40 s) when a selected test is outside tests/unit. Test-only: user
    runs keep the JVM's defaults; a SPARK_SUBMIT_OPTS already set is left as it is."""
    if "SPARK_SUBMIT_OPTS" in os.environ:
        return
    from batchscore.testing import jvm_archive

    unit = REPO / "tests" / "unit"
    python = _job_python()
    needs_jvm = any(unit not in Path(str(item.path)).parents for item in items)
    archive = jvm_archive.ensure_archive(REPO / ".batchscore" / "cache" / "jvm-cds", python=python) \
        if needs_jvm and python is not None else None
    os.environ["SPARK_SUBMIT_OPTS"] = jvm_archive.java_options(archive)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from batchscore.jobs._session import build_session

    session = build_session(
        "batchscore-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse")),
        },
    )
    yield session
    session.stop()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    from batchscore.testing.local_redis import LocalRedis

    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", redis_server.url)
    return str(redis_server.url)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a small model, a feature table and a model config under ``tmp_path``.

    Keyword overrides are deep-merged into the YAML (``None`` deletes a key); ``rows`` sets the
    table size; ``layers`` the MLP shape; ``fmt`` 'onnx' or 'torchscript'.
    """
    from batchscore.testing.demo_data import (
        write_features,
        write_onnx_mlp,
        write_torchscript_mlp,
    )

    def make(*, rows: int = 2000, layers: tuple[int, ...] = (N_FEATURES, 16, 1), fmt: str = "onnx",
             name: str = "m", **overrides: Any) -> Path:
        model = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
        if not model.exists():
            (write_onnx_mlp if fmt == "onnx" else write_torchscript_mlp)(model, layers)
        feats = tmp_path / "features.parquet"
        if not feats.exists():
            write_features(feats, rows, layers[0])
        cfg: dict[str, Any] = {
            "name": name,
            "model": {"uri": str(model), "format": fmt, "version": "v1"},
            "input": {"path": str(feats), "key": "user_id", "features": [f"f{i}" for i in range(layers[0])]},
            "outputs": {
                "columns": ["score"] if layers[-1] == 1 else [f"s{i}" for i in range(layers[-1])],
                "delta": {"path": str(tmp_path / "predictions")},
                "redis": {"key_prefix": "t", "keep_versions": 1},
            },
            "scoring": {"batch_size": 512, "device": "cpu"},
            "validation": {"range": {"min": 0.0, "max": 1.0}},
            "runtime": {"report_dir": str(tmp_path / "runs")},
        }
        _merge(cfg, overrides)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
