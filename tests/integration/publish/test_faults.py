"""Crash safety with real processes: the publish job SIGKILLed during the Redis load and between
the Delta commit and the flip, and Redis restarted mid-load. Readers keep the old version's scores
throughout, and a rerun converges to the new version exactly once (Delta commits and Redis counts
checked)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import publish as publish_job
from batchscore.jobs.publish import publish
from batchscore.reader import ScoreReader

from .conftest import restart, served_number, stage_run, start_publish, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROWS = 3000
KEYS = np.arange(ROWS, dtype=np.int64) * 7 + 1
OLD = (KEYS % 1000).astype(np.float32) / 1000
NEW = OLD + 1


def _setup(spark: Any, make_config: Any, url: str) -> tuple[Path, Any]:
    cfg_path = make_config(outputs={"redis": {"keep_versions": 1, "gc_grace_seconds": 0}})
    cfg = load_model_config(cfg_path)
    stage_run(cfg, "r0", KEYS, OLD)
    stage_run(cfg, "r1", KEYS, NEW)
    publish(spark, cfg, run_id="r0", redis_url=url)
    return cfg_path, cfg


def _assert_serves(url: str, expected: np.ndarray, version: int) -> None:
    found = ScoreReader(url, prefix="t", pointer_ttl=0).get_many("m", KEYS.tolist())
    assert all(s is not None and s.version == version for s in found.values())
    assert served_number(redis.Redis.from_url(url)) == version
    got = np.array([found[str(k)].value for k in KEYS], dtype=np.float32)  # type: ignore[union-attr]
    assert np.array_equal(got, expected)


def _assert_converged(url: str, cfg: Any, delta_commits: int) -> None:
    r = redis.Redis.from_url(url)
    cur = r.get(layout.pointer_key("t:m")).decode()
    meta = {k.decode(): v.decode() for k, v in r.hgetall(layout.meta_key("t:m", cur)).items()}
    assert meta["run_id"] == "r1" and meta["state"] == "published" and int(meta["count"]) == ROWS
    held = sum(r.hlen(layout.data_key("t:m", cur, b)) for b in range(int(meta["buckets"])))
    assert held == ROWS  # nothing lost or doubled
    dt = DeltaTable(cfg.outputs.delta.path)
    assert len(dt.history()) == delta_commits and dt.version() == delta_commits - 1  # committed once
    live = dt.to_pyarrow_table()
    assert live.num_rows == ROWS and set(live["run_id"].to_pylist()) == {"r1"}
    rec = json.loads(r.get(layout.publication_key("t:m")))
    assert rec["delta_version"] == dt.version() and rec["run_id"] == "r1" and rec["redis_version"] == cur
    _assert_serves(url, NEW, layout.parse_version_id(cur)[0])


def _finish(proc: Any) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, out


def test_sigkill_during_redis_load_then_rerun_converges(spark: Any, make_config: Any, redis_url: str) -> None:
    cfg_path, cfg = _setup(spark, make_config, redis_url)
    rc, out = _finish(start_publish(cfg_path, "r1", redis_url, BATCHSCORE_CRASH_AT="during_redis_load"))
    assert rc == -signal.SIGKILL, out
    r = redis.Redis.from_url(redis_url)
    loading = r.get(layout.run_key("t:m", "r1")).decode()
    assert r.hget(layout.meta_key("t:m", loading), "state") == b"loading"  # killed mid-load
    assert sum(r.hlen(k) for k in r.keys(f"t:m:v{loading}:b*")) > 0  # killed after writing, before verify
    _assert_serves(redis_url, OLD, 1)
    assert len(DeltaTable(cfg.outputs.delta.path).history()) == 1

    rep = publish(spark, cfg, run_id="r1", redis_url=redis_url)  # the rerun resumes the same version
    assert rep.redis_version == loading
    _assert_converged(redis_url, cfg, delta_commits=2)


def test_sigkill_between_delta_commit_and_flip_then_rerun_flips(spark: Any, make_config: Any, redis_url: str) -> None:
    cfg_path, cfg = _setup(spark, make_config, redis_url)
    rc, out = _finish(start_publish(cfg_path, "r1", redis_url, BATCHSCORE_CRASH_AT="after_delta_commit"))
    assert rc == -signal.SIGKILL, out
    assert DeltaTable(cfg.outputs.delta.path).version() == 1  # committed ...
    _assert_serves(redis_url, OLD, 1)  # ... but not flipped: readers still on r0

    rep = publish(spark, cfg, run_id="r1", redis_url=redis_url)
    assert rep.delta_version == 1  # the recorded app transaction: no second commit
    _assert_converged(redis_url, cfg, delta_commits=2)
    # A third try is a no-op, and never moves anything.
    again = publish(spark, cfg, run_id="r1", redis_url=redis_url)
    assert again.already_published and again.redis_version == rep.redis_version
    _assert_converged(redis_url, cfg, delta_commits=2)


def test_redis_restarted_mid_load_and_a_concurrent_publish_is_refused(
        spark: Any, make_config: Any, aof_redis: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = aof_redis.url
    cfg_path, cfg = _setup(spark, make_config, url)
    stage_run(cfg, "other", KEYS, OLD + 2)
    proc = start_publish(cfg_path, "r1", url, BATCHSCORE_PAUSE_AT="during_redis_load:6")
    try:
        r = redis.Redis.from_url(url)
        vid = wait_for(lambda: r.get(layout.run_key("t:m", "r1")), 90, "the load to start").decode()
        wait_for(lambda: r.keys(f"t:m:v{vid}:b*"), 30, "some of r1's buckets written")
        assert r.hget(layout.meta_key("t:m", vid), "state") == b"loading"
        # A second publish of the model meanwhile is refused clearly and changes nothing.
        assert publish_job.main(["--model-config", str(cfg_path), "--run-id", "other"]) == 4
        line = capsys.readouterr().err.splitlines()[-1]
        assert "r1 holds the publish lock" in line and "one publish, rollback, gc or reconcile per model" in line
        assert r.get(layout.run_key("t:m", "other")) is None
        restart(aof_redis)
        _assert_serves(url, OLD, 1)  # the live version survived the restart
        assert len(DeltaTable(cfg.outputs.delta.path).history()) == 1
        rc, out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The restart took well under the loader's retry budget and the AOF kept the lock: the job rides it out.
    assert rc == 0, out
    _assert_converged(url, cfg, delta_commits=2)
