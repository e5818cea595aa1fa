"""SIGKILL between every two side effects of publish, rollback and backfill (real subprocesses,
real Spark, a real redis-server, Delta read back with deltalake), then a rerun: readers stay on a
whole version throughout and the rerun converges (one commit per publication, exact bucket
counts, Redis serving the Delta head's run). Also a Spark task whose Python worker dies mid-load
and is retried by Spark."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs.publish import publish
from batchscore.sinks import delta, publication

from .conftest import stage_run, start_cli, start_publish, wait_for
from .test_publication_safety import KEYS, assert_converged, scores, wait_lock_expired

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _cfg(make_config: Any, **over: Any) -> tuple[Path, Any]:
    path = make_config(outputs={"redis": {"keep_versions": 0, "gc_grace_seconds": 0, "lock_ttl_seconds": 5, **over}})
    return path, load_model_config(path)


def _killed(proc: Any) -> str:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, out
    return out


def _serving(url: str) -> str:
    import json

    raw = redis.Redis.from_url(url).get(layout.publication_key("t:m"))
    return json.loads(raw)["run_id"]


@pytest.mark.parametrize("point,serves_while_dead", [
    ("after_redis_load", "r0"), ("after_delta_commit", "r0"), ("after_flip", "r1"), ("during_gc", "r1")])
def test_publish_killed_between_side_effects_then_rerun_converges(
        spark: Any, make_config: Any, redis_url: str, point: str, serves_while_dead: str) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    stage_run(cfg, "r1", KEYS, scores(1))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    _killed(start_publish(path, "r1", redis_url, BATCHSCORE_CRASH_AT=point))
    assert _serving(redis_url) == serves_while_dead  # a whole version, never a mix
    committed = [p["run_id"] for p in delta.publications(cfg.outputs.delta.path)]
    assert committed == (["r0"] if point == "after_redis_load" else ["r1", "r0"])

    rep = publish(spark, cfg, run_id="r1", redis_url=redis_url)  # the orchestrator's retry
    assert rep.delta_version == 1
    assert_converged(redis_url, cfg, "r1")
    assert [p["run_id"] for p in delta.publications(cfg.outputs.delta.path)] == ["r1", "r0"]  # committed once
    r = redis.Redis.from_url(redis_url)
    assert [v.decode() for v in r.zrange(layout.versions_key("t:m"), 0, -1)] == [rep.redis_version]
    assert not [k for k in r.keys("t:m:v*") if not k.decode().startswith(f"t:m:v{rep.redis_version}:")]


def test_rollback_killed_between_restore_and_flip_then_rerun_converges(
        spark: Any, make_config: Any, redis_url: str) -> None:
    path, cfg = _cfg(make_config, keep_versions=1)
    for i in range(2):
        stage_run(cfg, f"r{i}", KEYS, scores(i))
        publish(spark, cfg, run_id=f"r{i}", redis_url=redis_url)
    _killed(start_cli("rollback", path, redis_url, "--to-version", "0", "--master", "local[2]",
                      BATCHSCORE_CRASH_AT="rollback_after_restore"))
    head = publication.head(cfg.outputs.delta.path)
    assert head is not None and head.kind == "rollback" and head.run_id == "r0"  # Delta restored ...
    assert _serving(redis_url) == "r1"  # ... Redis not flipped yet: readers on r1's whole version
    wait_lock_expired(redis_url)
    proc = start_cli("rollback", path, redis_url, "--to-version", "0", "--master", "local[2]")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert_converged(redis_url, cfg, "r0")
    assert len(delta.publications(cfg.outputs.delta.path)) == 3  # the rerun made no second restore


def test_backfill_killed_between_write_and_commit_then_rerun_commits_once(
        spark: Any, make_config: Any, redis_url: str) -> None:
    from batchscore.jobs import backfill as bf

    path, cfg = _cfg(make_config)
    day = "2026-11-20"
    _killed(start_cli("backfill", path, redis_url, "--from", day, "--to", day, "--master", "local[2]",
                      BATCHSCORE_CRASH_AT="backfill_after_write"))
    table = bf.history_path(cfg)
    assert not DeltaTable.is_deltatable(table)  # written, never committed: invisible
    written = list(Path(table).glob(f"run_date={day}/*/part-*.parquet"))
    assert written
    proc = start_cli("backfill", path, redis_url, "--from", day, "--to", day, "--master", "local[2]")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    dt = DeltaTable(table)
    assert dt.version() == 0
    live = dt.to_pyarrow_table()
    assert live.num_rows == pq.read_table(cfg.input.path).num_rows  # the date exactly once
    assert len(set(live[cfg.input.key].to_pylist())) == live.num_rows
    assert not any(str(f) in {u.removeprefix("file://") for u in dt.file_uris()} for f in written)


def test_a_spark_task_whose_worker_dies_mid_load_is_retried_and_the_load_is_exact(
        spark: Any, make_config: Any, redis_url: str, tmp_path: Path) -> None:
    path, cfg = _cfg(make_config)
    rows = 60_000  # several pipelined rounds per task: the worker dies after writing its first
    keys = np.arange(rows, dtype=np.int64) * 3 + 1
    stage_run(cfg, "big", keys, (keys % 1000).astype(np.float32))
    marker = tmp_path / "killed-once"
    proc = start_publish(path, "big", redis_url, master="local[2,4]",  # 4 attempts per task
                         BATCHSCORE_KILL_TASK_ONCE=f"during_redis_load:{marker}")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert marker.exists()  # a worker really died mid-load
    r = redis.Redis.from_url(redis_url)
    vid = r.get(layout.pointer_key("t:m")).decode()
    meta = {k.decode(): v.decode() for k, v in r.hgetall(layout.meta_key("t:m", vid)).items()}
    assert sum(r.hlen(layout.data_key("t:m", vid, b)) for b in range(int(meta["buckets"]))) == rows
    wait_for(lambda: r.get(layout.lock_key("t:m")) is None, 5, "the lock released")


def test_batchscore_run_killed_after_its_commit_resumes_on_retry(spark: Any, make_config: Any, redis_url: str) -> None:
    """One-application mode (Airflow retries `batchscore run` as a whole): a retry after the Delta
    commit must not re-score (the run id is published) but finish the publish."""
    path, cfg = _cfg(make_config)
    _killed(start_cli("run", path, redis_url, "--run-id", "one", "--run-date", "2026-11-22", "--master", "local[2]",
                      BATCHSCORE_CRASH_AT="after_delta_commit"))
    assert [p["run_id"] for p in delta.publications(cfg.outputs.delta.path)] == ["one"]
    assert redis.Redis.from_url(redis_url).get(layout.pointer_key("t:m")) is None  # committed, not served
    proc = start_cli("run", path, redis_url, "--run-id", "one", "--run-date", "2026-11-22", "--master", "local[2]")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "resuming its publish" in out, out
    live = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    assert (live.num_rows == pq.read_table(cfg.input.path).num_rows
            and len(delta.publications(cfg.outputs.delta.path)) == 1)
    r = redis.Redis.from_url(redis_url)
    vid = r.get(layout.pointer_key("t:m")).decode()
    meta = {k.decode(): v.decode() for k, v in r.hgetall(layout.meta_key("t:m", vid)).items()}
    assert meta["run_id"] == "one" and int(meta["count"]) == live.num_rows
