"""The publish-safety sequences, each replayed against real processes: a real redis-server
(restarted without persistence where the sequence says so), real Spark, Delta tables read back
with ``deltalake``. Each test names the numbered sequence of the publish-safety issue it replays;
each failed on the protocol before the publication record (the "before" column of the issue note).

After every sequence the same invariant is checked: Redis serves exactly the Delta head's run,
with the scores the Delta table holds (read back, key by key)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.errors import PublishRefusedError, SupersededError
from batchscore.jobs import _state as state
from batchscore.jobs import gc as gc_job
from batchscore.jobs import publish as publish_job
from batchscore.jobs import reconcile as reconcile_job
from batchscore.jobs import rollback as rollback_job
from batchscore.jobs.publish import publish
from batchscore.reader import ScoreReader
from batchscore.sinks import delta, publication
from batchscore.testing.local_redis import LocalRedis

from .conftest import stage_run, start_publish, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROWS = 1500
KEYS = np.arange(ROWS, dtype=np.int64) * 5 + 3


def scores(i: int) -> np.ndarray:
    return ((KEYS % 997) / 997 + i).astype(np.float32)


def assert_converged(url: str, cfg: Any, run_id: str) -> None:
    """Redis serves the Delta head's run, and every key's score equals the Delta table's."""
    table = cfg.outputs.delta.path
    head = publication.head(table)
    assert head is not None and head.run_id == run_id, head
    live = DeltaTable(table).to_pyarrow_table()
    assert set(live["run_id"].to_pylist()) == {run_id} and live.num_rows == ROWS
    want = dict(zip(live["user_id"].to_pylist(), live["score"].to_pylist(), strict=True))
    r = redis.Redis.from_url(url)
    rec = json.loads(r.get(layout.publication_key("t:m")))
    assert rec["seq"] == head.seq and rec["run_id"] == run_id and rec["digest"] == head.digest
    assert r.get(layout.pointer_key("t:m")).decode() == rec["redis_version"]
    found = ScoreReader(url, prefix="t", pointer_ttl=0).get_many("m", list(want))
    got = {int(k): s.value for k, s in found.items() if s is not None}
    assert got == pytest.approx(want, abs=0) and len(got) == ROWS


def _cfg(make_config: Any, **redis_over: Any) -> tuple[Path, Any]:
    over = {"keep_versions": 1, "gc_grace_seconds": 0, "lock_ttl_seconds": 5, **redis_over}
    path = make_config(outputs={"redis": over})
    return path, load_model_config(path)


def wait_lock_expired(url: str) -> None:
    """A SIGKILLed publisher holds the lock until its TTL (5 s here): others wait, as in production."""
    r = redis.Redis.from_url(url)
    wait_for(lambda: r.get(layout.lock_key("t:m")) is None, 15, "the dead publisher's lock to expire")


def _finish(proc: Any, timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# 1 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["..", ".", ".hidden", "-x", "a/b"])
def test_1_run_ids_that_leave_their_directory_are_refused(spark: Any, make_config: Any, redis_url: str,
                                                          bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    from batchscore.jobs import score as score_job

    assert score_job.main(["--model-config", str(path), f"--run-id={bad}", "--master", "local[2]"]) == 2
    assert "--run-id" in capsys.readouterr().err
    with pytest.raises(Exception, match="run-id"):
        score_job.score(spark, cfg, run_id=bad, run_date="2026-11-22")
    assert DeltaTable(cfg.outputs.delta.path).version() == 0  # the table is intact
    assert_converged(redis_url, cfg, "r0")


def test_1_model_names_that_leave_their_directory_are_refused(make_config: Any) -> None:
    from batchscore.errors import ConfigError

    for bad in ("..", ".", ".m"):
        with pytest.raises(ConfigError, match="name"):
            load_model_config(make_config(name=bad))


# 2 ------------------------------------------------------------------------------------------------

def test_2_a_publisher_paused_past_its_lock_ttl_changes_nothing_after_it_wakes(
        spark: Any, make_config: Any, redis_url: str) -> None:
    path, cfg = _cfg(make_config, lock_ttl_seconds=5)
    for i in range(3):
        stage_run(cfg, f"r{i}", KEYS, scores(i))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    proc = start_publish(path, "r1", redis_url, BATCHSCORE_PAUSE_AT="after_redis_load:3")
    r = redis.Redis.from_url(redis_url)
    try:
        def loaded() -> bool:
            vid = r.get(layout.run_key("t:m", "r1"))
            return bool(vid) and r.hget(layout.meta_key("t:m", vid.decode()), "state") == b"loaded"

        wait_for(loaded, 120, "r1's Redis version to be loaded")
        os.killpg(proc.pid, signal.SIGSTOP)  # paused (a GC pause, a frozen VM) right after its load
        wait_for(lambda: r.get(layout.lock_key("t:m")) is None, 15, "the paused publisher's lock to expire")
        publish(spark, cfg, run_id="r2", redis_url=redis_url)  # a second publisher finishes meanwhile
        os.killpg(proc.pid, signal.SIGCONT)
        rc, out = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            proc.kill()
    assert rc == 4 and "lost the publish lock" in out, out  # fenced at its next side effect: the commit
    assert [p["run_id"] for p in delta.publications(cfg.outputs.delta.path)] == ["r2", "r0"]
    assert_converged(redis_url, cfg, "r2")


# 3 ------------------------------------------------------------------------------------------------

def test_3_a_retry_after_a_rollback_is_refused_and_never_flips_forward(
        spark: Any, make_config: Any, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    stage_run(cfg, "r1", KEYS, scores(1))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    rc, out = _finish(start_publish(path, "r1", redis_url, BATCHSCORE_CRASH_AT="after_delta_commit"))
    assert rc == -signal.SIGKILL, out
    assert DeltaTable(cfg.outputs.delta.path).version() == 1  # committed, not flipped
    wait_lock_expired(redis_url)
    assert rollback_job.main(["--model-config", str(path), "--to-version", "0"]) == 0
    assert_converged(redis_url, cfg, "r0")
    capsys.readouterr()
    assert publish_job.main(["--model-config", str(path), "--run-id", "r1", "--master", "local[2]"]) == 2
    err = capsys.readouterr().err
    assert "superseded by publication 3 (rollback to Delta version 0)" in err and "batchscore rollback" in err
    assert_converged(redis_url, cfg, "r0")


# 4 ------------------------------------------------------------------------------------------------

def test_4_an_old_run_republished_after_gc_is_refused(spark: Any, make_config: Any, redis_url: str) -> None:
    path, cfg = _cfg(make_config, keep_versions=0)
    for i in range(3):
        stage_run(cfg, f"r{i}", KEYS, scores(i))
        publish(spark, cfg, run_id=f"r{i}", redis_url=redis_url)
    r = redis.Redis.from_url(redis_url)
    assert r.get(layout.run_key("t:m", "r0")) is None  # GC removed its run key
    with pytest.raises(SupersededError, match="run r0 .* superseded by publication 3 .run r2."):
        publish(spark, cfg, run_id="r0", redis_url=redis_url)
    assert_converged(redis_url, cfg, "r2")
    assert publish(spark, cfg, run_id="r2", redis_url=redis_url).already_published  # the served run: no-op
    assert_converged(redis_url, cfg, "r2")


def test_4_a_late_run_for_an_older_date_needs_allow_older(spark: Any, make_config: Any, redis_url: str) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "new", KEYS, scores(0), run_date="2026-11-22")
    stage_run(cfg, "late", KEYS, scores(1), run_date="2026-11-20")
    publish(spark, cfg, run_id="new", redis_url=redis_url)
    with pytest.raises(PublishRefusedError,
                       match="2026-11-20, older than the published run new .2026-11-22.*--allow-older"):
        publish(spark, cfg, run_id="late", redis_url=redis_url)
    assert_converged(redis_url, cfg, "new")
    publish(spark, cfg, run_id="late", redis_url=redis_url, allow_older=True)
    assert_converged(redis_url, cfg, "late")


# 5 ------------------------------------------------------------------------------------------------

def test_5_a_loaded_version_is_reused_only_for_the_same_content(spark: Any, make_config: Any, redis_url: str) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    stage_run(cfg, "r1", KEYS, scores(1))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    rc, out = _finish(start_publish(path, "r1", redis_url, BATCHSCORE_CRASH_AT="after_redis_load"))
    assert rc == -signal.SIGKILL, out
    r = redis.Redis.from_url(redis_url)
    first = r.get(layout.run_key("t:m", "r1")).decode()
    stage_run(cfg, "r1", KEYS, scores(7))  # re-scored: same run id, same rows and columns, other scores
    rep = publish(spark, cfg, run_id="r1", redis_url=redis_url)
    assert rep.redis_version != first  # not reused: a fresh version with the new content
    assert_converged(redis_url, cfg, "r1")
    assert DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()["score"].to_numpy()[0] >= 7


# 6 ------------------------------------------------------------------------------------------------

def test_6_rescoring_voids_the_validation_and_publish_needs_the_judged_content(
        spark: Any, make_config: Any, redis_url: str) -> None:
    from batchscore.jobs.score import score
    from batchscore.jobs.validate import validate

    path, cfg = _cfg(make_config)
    score(spark, cfg, run_id="r1", run_date="2026-11-22")
    judged = validate(spark, cfg, run_id="r1")
    assert judged.passed and judged.digest == state.read_report(cfg, "r1", "score")["digest"]
    score(spark, cfg, run_id="r1", run_date="2026-11-22")  # re-scored after a passing validation
    assert state.read_report(cfg, "r1", "validation") is None
    with pytest.raises(PublishRefusedError, match="was not validated since it was scored"):
        publish(spark, cfg, run_id="r1", redis_url=redis_url)
    validate(spark, cfg, run_id="r1")
    # the staged files changed behind the gate's back: the digest no longer matches
    staged = next(Path(state.staged_path(cfg, "r1")).glob("part-*.parquet"))
    import pyarrow.parquet as pq

    t = pq.read_table(staged)
    pq.write_table(t.set_column(1, "score", t.column("score").cast("float64").cast("float32")), staged,
                   compression="zstd")
    with pytest.raises(PublishRefusedError, match="not the ones validation judged"):
        publish(spark, cfg, run_id="r1", redis_url=redis_url)
    assert not DeltaTable.is_deltatable(cfg.outputs.delta.path)
    assert redis.Redis.from_url(redis_url).get(layout.pointer_key("t:m")) is None


# 9 ------------------------------------------------------------------------------------------------

def test_9_orphans_of_a_restart_mid_load_never_collide_and_gc_removes_them(
        spark: Any, make_config: Any, redis_url: str, redis_server: LocalRedis,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    r = redis.Redis.from_url(redis_url)
    # A restart without persistence during r1's load: the loader's later writes land after it.
    r.flushall()
    orphans = [layout.data_key("t:m", layout.version_id(n, "deadbeef"), b) for n in (1, 2, 3) for b in range(4)]
    for key in orphans:  # what still-running tasks wrote after the restart, under the numbers reused next
        r.hset(key, mapping={str(k): layout.encode_scores([9.0]) for k in KEYS[:40]})
    stage_run(cfg, "r1", KEYS, scores(1))
    rep = publish(spark, cfg, run_id="r1", redis_url=redis_url)  # reconciles r0 back, then publishes r1
    assert not rep.redis_version.endswith(".deadbeef")
    assert_converged(redis_url, cfg, "r1")  # every bucket exact: no orphan counted in
    capsys.readouterr()
    assert gc_job.main(["--model-config", str(path), "--orphans"]) == 0
    assert "12 key(s) of 3 unknown version(s) deleted" in capsys.readouterr().out
    assert not any(r.exists(k) for k in orphans)
    assert_converged(redis_url, cfg, "r1")


# 15 -----------------------------------------------------------------------------------------------

def test_15_two_commits_on_the_same_table_version_cannot_both_land(spark: Any, make_config: Any,
                                                                  redis_url: str) -> None:
    _, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0))
    stage_run(cfg, "r1", KEYS, scores(1))
    table = cfg.outputs.delta.path
    a = delta.stage(table, "r0")
    b = delta.stage(table, "r1")
    delta.commit(table, a, model="m", run_id="r0", metadata={}, expected=None)
    delta.commit(table, b, model="m", run_id="r1", metadata={}, expected=0)
    with pytest.raises(delta.CommitConflict):  # same app transaction, same expected version: refused
        delta.commit(table, b, model="m", run_id="r1", metadata={}, expected=0)
    with pytest.raises(delta.CommitConflict):
        delta.commit(table, a, model="m", run_id="r0", metadata={}, expected=None)
    assert DeltaTable(table).version() == 1 and len(DeltaTable(table).file_uris()) == 1


# 16 -----------------------------------------------------------------------------------------------

def test_16_a_commit_that_was_never_served_is_not_the_reference_and_reconcile_finishes_it(
        spark: Any, make_config: Any, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs.validate import load_reference

    path, cfg = _cfg(make_config)
    stage_run(cfg, "r0", KEYS, scores(0), profile={"columns": {"score": {"mean": 0.5}}})
    stage_run(cfg, "r1", KEYS, scores(1), profile={"columns": {"score": {"mean": 1.5}}})
    publish(spark, cfg, run_id="r0", redis_url=redis_url)
    rc, out = _finish(start_publish(path, "r1", redis_url, BATCHSCORE_CRASH_AT="after_delta_commit"))
    assert rc == -signal.SIGKILL, out
    profile, source, _ = load_reference(cfg)
    assert source is not None and source["run_id"] == "r0"
    assert profile is not None and profile.columns["score"].mean == 0.5
    wait_lock_expired(redis_url)
    assert reconcile_job.main(["--model-config", str(path)]) == 0
    assert_converged(redis_url, cfg, "r1")
    profile, source, _ = load_reference(cfg)
    assert source is not None and source["run_id"] == "r1"
    assert profile is not None and profile.columns["score"].mean == 1.5
    capsys.readouterr()
    assert reconcile_job.main(["--model-config", str(path)]) == 0
    assert "in-sync" in capsys.readouterr().out


# 17 + 9 -------------------------------------------------------------------------------------------

def test_17_a_replaced_redis_is_rebuilt_from_delta_and_history_matches_by_identity(
        spark: Any, make_config: Any, redis_server: LocalRedis, redis_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs import history as history_job

    path, cfg = _cfg(make_config, keep_versions=2)
    for i in range(3):
        stage_run(cfg, f"r{i}", KEYS, scores(i))
        publish(spark, cfg, run_id=f"r{i}", redis_url=redis_url)
    # The server is replaced by an empty one (no persistence); a restore brings back old numbers.
    redis_server.proc.terminate()
    redis_server.proc.wait(timeout=10)
    redis_server.start()
    r = redis.Redis.from_url(redis_url)
    assert r.dbsize() == 0
    assert reconcile_job.main(["--model-config", str(path)]) == 0  # reloads the head from Delta
    assert_converged(redis_url, cfg, "r2")
    capsys.readouterr()
    assert history_job.main(["--model-config", str(path), "--json"]) == 0
    hist = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(h["run_id"], h["redis"]) for h in hist] == [("r2", "current"), ("r1", "collected"), ("r0", "collected")]
    # Rolling back to r0 must reload r0's content, not reuse whatever version now has r0's number.
    assert rollback_job.main(["--model-config", str(path), "--to-version", "0"]) == 0
    assert_converged(redis_url, cfg, "r0")
    np.testing.assert_array_equal(
        np.array([ScoreReader(redis_url, prefix="t", pointer_ttl=0).get("m", int(k)).value for k in KEYS[:50]],
                 np.float32), scores(0)[:50])


# 18 -----------------------------------------------------------------------------------------------

def test_18_a_wrong_redis_password_is_exit_2(spark: Any, make_config: Any, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path, cfg = _cfg(make_config)
    stage_run(cfg, "r1", KEYS, scores(1))
    with LocalRedis(password="right-one") as server:
        monkeypatch.setenv("BATCHSCORE_REDIS_URL", server.url.replace("right-one", "wrong-one"))
        assert publish_job.main(["--model-config", str(path), "--run-id", "r1"]) == 2
        err = capsys.readouterr().err
        assert "refused the credentials" in err and "wrong-one" not in err
