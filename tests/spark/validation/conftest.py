"""Fixtures for the validation gate on real local Spark: staged candidates written as Parquet.

Candidates are written straight to where ``batchscore score`` stages them (with its score
report), so each test controls the score distribution exactly; publishing goes through the real
``batchscore.jobs.publish.publish`` (real redis-server, real Delta table).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

N = 20_000


@pytest.fixture
def vconfig(tmp_path: Path) -> Callable[..., Any]:
    """``vconfig(validation={...}, version="v1")`` -> a loaded ModelConfig writing under tmp_path."""
    from batchscore.config import load_model_config

    def make(validation: dict[str, Any] | None = None, version: str = "v1",
             columns: tuple[str, ...] = ("score",)) -> Any:
        raw = {
            "name": "vm",
            "model": {"uri": str(tmp_path / "unused.onnx"), "format": "onnx", "version": version},
            "input": {"path": str(tmp_path / "unused.parquet"), "key": "user_id", "features": ["f0"]},
            "outputs": {"columns": list(columns), "delta": {"path": str(tmp_path / "predictions")},
                        "redis": {"key_prefix": "tv", "keep_versions": 1}},
            "validation": validation if validation is not None else {"range": {"min": 0.0, "max": 1.0}},
            "runtime": {"report_dir": str(tmp_path / "runs")},
        }
        path = tmp_path / f"vm-{version}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return load_model_config(path)

    return make


def scores(seed: int, n: int = N, shift_sigmas: float = 0.0) -> np.ndarray:
    """Beta(2, 5) scores (mean 0.286, std 0.160), optionally moved by ``shift_sigmas`` std."""
    x = np.random.default_rng(seed).beta(2.0, 5.0, size=n)
    return (x + shift_sigmas * 0.1597).astype(np.float32)


def stage(cfg: Any, run_id: str, values: np.ndarray | dict[str, np.ndarray]) -> str:
    """Write ``values`` as the run's staged Parquet plus its score report; return the staged path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchscore.jobs import _state as state

    cols = values if isinstance(values, dict) else {"score": values}
    n = len(next(iter(cols.values())))
    target = Path(state.staged_path(cfg, run_id))
    target.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user_id": pa.array(np.arange(n, dtype=np.int64)),
                      **{c: pa.array(np.asarray(v, dtype=np.float32)) for c, v in cols.items()},
                      "model_version": pa.array([cfg.model.version] * n), "run_id": pa.array([run_id] * n)})
    pq.write_table(table, target / "part-00000.parquet")
    from batchscore.sinks import delta

    digest = delta.stage(cfg.outputs.delta.path, run_id).digest  # what `score` records of the staged files
    state.write_report(cfg, run_id, "score", {"model": cfg.name, "run_id": run_id, "input_rows": n, "digest": digest,
                                              "staged_path": str(target), "model_version": cfg.model.version})
    return str(target)
