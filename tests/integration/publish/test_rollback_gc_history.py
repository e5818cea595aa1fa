"""``batchscore rollback`` (kept Redis version, or reloaded from Delta), ``gc`` and ``history``,
on a real redis-server and a Delta table read back with ``deltalake``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import redis
from deltalake import DeltaTable

from batchscore.config import load_model_config
from batchscore.errors import SupersededError
from batchscore.jobs import gc as gc_job
from batchscore.jobs import history as history_job
from batchscore.jobs import rollback as rollback_job
from batchscore.jobs.publish import publish
from batchscore.reader import ScoreReader

from .conftest import numbers, served_number, stage_run

pytestmark = [pytest.mark.integration, pytest.mark.spark]
KEYS = np.arange(1500, dtype=np.int64) * 3


def _scores(i: int) -> np.ndarray:
    return (i * 10_000 + KEYS).astype(np.float32)


def _serves(url: str, i: int, version: int) -> None:
    found = ScoreReader(url, prefix="t", pointer_ttl=0).get_many("m", KEYS.tolist())
    assert all(s is not None and s.version == version for s in found.values())
    assert served_number(redis.Redis.from_url(url)) == version
    assert np.array_equal(np.array([found[str(k)].value for k in KEYS], np.float32), _scores(i))  # type: ignore[union-attr]


def _history(cfg_path: Any, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert history_job.main(["--model-config", str(cfg_path), "--json"]) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def test_rollback_gc_history(spark: Any, make_config: Any, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = make_config(outputs={"redis": {"keep_versions": 1, "gc_grace_seconds": 0}})
    cfg = load_model_config(cfg_path)
    for i in range(3):
        stage_run(cfg, f"r{i}", KEYS, _scores(i))
        publish(spark, cfg, run_id=f"r{i}", redis_url=redis_url)
    r = redis.Redis.from_url(redis_url)
    assert numbers(r) == [2, 3]  # v1 collected
    hist = _history(cfg_path, capsys)
    assert [(h["delta_version"], h["publication"], h["run_id"], int(h["redis_version"].split(".")[0]), h["redis"])
            for h in hist] == [(2, 3, "r2", 3, "current"), (1, 2, "r1", 2, "kept"), (0, 1, "r0", 1, "collected")]
    assert all(h["rows"] == len(KEYS) and h["model_version"] == "v1" for h in hist)

    # Back to Delta version 1: its Redis version 2 is still kept, so the pointer just moves.
    assert rollback_job.main(["--model-config", str(cfg_path), "--to-version", "1"]) == 0
    _serves(redis_url, 1, 2)
    dt = DeltaTable(cfg.outputs.delta.path)
    assert dt.version() == 3 and set(dt.to_pyarrow_table()["run_id"].to_pylist()) == {"r1"}
    assert dt.history()[0]["batchscore.rollback_to"] == "1" and dt.history()[0]["batchscore.run_id"] == "r1"
    # A stale retry of the rolled-back run is refused (exit 2) and changes nothing.
    with pytest.raises(SupersededError, match="superseded by publication 4 .rollback to Delta version 1"):
        publish(spark, cfg, run_id="r2", redis_url=redis_url)
    assert served_number(r) == 2 and DeltaTable(cfg.outputs.delta.path).version() == 3

    # Back to Delta version 0: its Redis version 1 was collected, so it is reloaded from Delta.
    assert rollback_job.main(["--model-config", str(cfg_path), "--to-version", "0"]) == 0
    _serves(redis_url, 0, 4)
    dt = DeltaTable(cfg.outputs.delta.path)
    assert dt.version() == 4 and set(dt.to_pyarrow_table()["run_id"].to_pylist()) == {"r0"}
    assert _history(cfg_path, capsys)[0]["rollback_to"] == 0

    # gc on demand: keep nothing but the current version.
    assert gc_job.main(["--model-config", str(cfg_path), "--keep", "0", "--grace-seconds", "0"]) == 0
    assert numbers(r) == [4]
    assert not r.keys("t:m:v2.*") and not r.keys("t:m:v3.*") and r.keys("t:m:v4.*")

    # A new publish after the rollbacks goes forward again.
    stage_run(cfg, "r3", KEYS, _scores(3))
    assert publish(spark, cfg, run_id="r3", redis_url=redis_url).redis_version.startswith("5.")
    _serves(redis_url, 3, 5)
    assert rollback_job.main(["--model-config", str(cfg_path), "--to-version", "42"]) == 2
    assert "no Delta version 42" in capsys.readouterr().err
