"""The fenced primitives one by one, on a real redis-server and a real Delta table: each test
pins one guarantee that a deliberate bug in ``make mutants`` breaks (the flip's compare-and-set,
verify of every bucket, the GC grace period, the lock renewal, resume by content)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.errors import FencedError, InfrastructureError
from batchscore.sinks import delta, publication
from batchscore.sinks.redis import RedisVersions
from batchscore.sinks.redis_gc import collect
from batchscore.testing import crashpoint
from batchscore.testing.local_redis import LocalRedis

from .conftest import inproc_loader

pytestmark = [pytest.mark.integration]
NS = "p:m"
KEYS = np.arange(700, dtype=np.int64) * 13


def _stage(root: Path, run_id: str, shift: float) -> delta.StagedRun:
    d = root / "pred" / "runs" / run_id
    d.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": KEYS, "score": ((KEYS % 101) / 101 + shift).astype(np.float32)}),
                   d / "part-00000.parquet")
    return delta.stage(str(root / "pred"), run_id)


def _target(root: Path, **over: Any) -> publication.Target:
    base = dict(model="m", table=str(root / "pred"), key="user_id", columns=["score"], model_version="v1",
                keep_versions=1, gc_grace_seconds=0.0, lock_ttl_seconds=30)
    return publication.Target(**{**base, **over})  # type: ignore[arg-type]


def _publish(server: LocalRedis, root: Path, run_id: str, shift: float, **over: Any) -> publication.Outcome:
    staged = _stage(root, run_id, shift)
    store = RedisVersions(redis.Redis.from_url(server.url), NS)
    return publication.publish(store, _target(root, **over), staged, run_id=run_id, run_date="2026-11-22",
                               validated_digest=staged.digest, metadata={},
                               loader=inproc_loader(server.url, NS, "user_id", ["score"]))


def test_the_flip_refuses_a_record_it_did_not_expect(redis_server: LocalRedis, tmp_path: Path) -> None:
    _publish(redis_server, tmp_path, "a", 0)
    out = _publish(redis_server, tmp_path, "b", 1)
    store = RedisVersions(redis.Redis.from_url(redis_server.url), NS)
    rec = store.served_record()
    assert rec is not None and rec["run_id"] == "b" and rec["seq"] == 2
    old = store.complete(out.previous_redis_version, publication.head(str(tmp_path / "pred")).digest) or \
        store.version(out.previous_redis_version)
    assert old is not None
    with store.locked("x", ttl_s=10):
        for stale_seq in (None, 0, 1, 3):  # what a publisher that read an older record would expect
            with pytest.raises(FencedError, match="served publication changed"):
                store.flip(old, expected_seq=stale_seq, expected_pointer=store.current(),
                           record={**rec, "seq": 9, "redis_version": old.vid})
        with pytest.raises(FencedError, match="served publication changed"):  # right seq, stale pointer
            store.flip(old, expected_seq=2, expected_pointer=old.vid, record={**rec, "seq": 9})
    assert store.served_record() == rec and store.current() == rec["redis_version"]


def test_verify_checks_every_bucket(redis_server: LocalRedis, tmp_path: Path) -> None:
    staged = _stage(tmp_path, "a", 0)
    r = redis.Redis.from_url(redis_server.url)
    store = RedisVersions(r, NS)
    load = inproc_loader(redis_server.url, NS, "user_id", ["score"])
    with store.locked("a", ttl_s=30):
        v = store.allocate(run_id="a", rows=staged.total_rows, columns=["score"], model_version="v1",
                           digest=staged.digest)
        counts = load([staged.run_path], v, store.fence())
        assert v.buckets >= 4
        for b in range(v.buckets):  # one entity missing from any single bucket is caught
            key = layout.data_key(NS, v.vid, b)
            field = r.hkeys(key)[0]
            value = r.hget(key, field)
            r.hdel(key, field)
            with pytest.raises(InfrastructureError, match=f"bucket {b} holds"):
                store.verify(v, counts)
            r.hset(key, field, value)
        assert store.verify(v, counts).state == "loaded"


def test_gc_keeps_a_replaced_version_for_the_grace_period(redis_server: LocalRedis, tmp_path: Path) -> None:
    grace = 1.5
    first = _publish(redis_server, tmp_path, "a", 0, keep_versions=0, gc_grace_seconds=grace)
    _publish(redis_server, tmp_path, "b", 1, keep_versions=0, gc_grace_seconds=grace)
    store = RedisVersions(redis.Redis.from_url(redis_server.url), NS)
    old = first.publication.redis_version  # type: ignore[union-attr]
    with store.locked("gc", ttl_s=10):
        assert collect(store, keep=0, grace_s=grace) == []  # replaced a moment ago: readers may hold it
        assert store.meta(old)["state"] == "retired"
        data = store.r.keys(layout.data_prefix(NS, old) + "*")
        assert data  # the retired version's buckets are still there for its readers
        time.sleep(grace + 0.2)
        assert collect(store, keep=0, grace_s=grace) == [old]
    assert store.meta(old) == {}
    assert store.r.keys(layout.data_prefix(NS, old) + "*") == []  # every bucket went with it


def test_the_lock_is_renewed_while_a_publish_outlives_its_ttl(redis_server: LocalRedis, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_PAUSE_AT", "after_redis_load:7")
    monkeypatch.setattr(crashpoint, "_passed", set())
    started = time.monotonic()
    out = _publish(redis_server, tmp_path, "slow", 0, lock_ttl_seconds=5)  # 7 s > the 5 s TTL
    assert time.monotonic() - started > 7
    assert out.action == "published"
    assert RedisVersions(redis.Redis.from_url(redis_server.url), NS).served_record()["run_id"] == "slow"


def test_a_stale_lock_holder_is_fenced_at_every_side_effect(redis_server: LocalRedis, tmp_path: Path) -> None:
    staged = _stage(tmp_path, "a", 0)
    r = redis.Redis.from_url(redis_server.url)
    stale, fresh = RedisVersions(r, NS), RedisVersions(r, NS)
    stale.lock(owner="a", ttl_s=30)
    v = stale.allocate(run_id="a", rows=staged.total_rows, columns=["score"], model_version="v1", digest=staged.digest)
    fresh.lock(owner="a", ttl_s=30)  # an orchestrator retry of the same run takes the lock over
    load = inproc_loader(redis_server.url, NS, "user_id", ["score"])
    with pytest.raises(FencedError):
        load([staged.run_path], v, stale.fence())  # the executor-side load checks the token
    with pytest.raises(FencedError):
        stale.allocate(run_id="a", rows=1, columns=["score"], model_version="v1", digest="x")
    with pytest.raises(FencedError):
        stale.annotate(v.vid, state="loaded")
    with pytest.raises(FencedError):
        delta.commit(str(tmp_path / "pred"), staged, model="m", run_id="a", metadata={}, expected=None,
                     check=lambda: stale.check_fence("commit"))
    with pytest.raises(FencedError):
        stale.flip(v, expected_seq=None, expected_pointer=None, record={"seq": 1, "redis_version": v.vid})
    with pytest.raises(FencedError):
        stale.delete(v.vid, stale.meta(v.vid))
    assert not (tmp_path / "pred" / "_delta_log").exists()  # nothing committed
    assert r.get(layout.pointer_key(NS)) is None and stale.meta(v.vid)["state"] == "loading"
    fresh.unlock()
    stale.unlock()


def test_resume_reuses_only_a_version_of_the_same_content(redis_server: LocalRedis, tmp_path: Path) -> None:
    staged = _stage(tmp_path, "a", 0)
    store = RedisVersions(redis.Redis.from_url(redis_server.url), NS)
    with store.locked("a", ttl_s=30):
        v = store.allocate(run_id="a", rows=staged.total_rows, columns=["score"], model_version="v1",
                           digest=staged.digest)
        assert store.resume(run_id="a", digest=staged.digest, columns=["score"]) == v
        assert store.resume(run_id="a", digest="other-content", columns=["score"]) is None
        assert store.resume(run_id="a", digest=staged.digest, columns=["score", "extra"]) is None


def test_the_publication_record_is_the_delta_commits(redis_server: LocalRedis, tmp_path: Path) -> None:
    out = _publish(redis_server, tmp_path, "a", 0)
    pub = out.publication
    assert pub is not None
    info = delta.commit_info(str(tmp_path / "pred"), 0)
    assert info is not None and json.loads(info["batchscore.publication"])["digest"] == pub.digest
    assert publication.head(str(tmp_path / "pred")) == pub


def test_a_full_redis_is_exit_2_and_nothing_is_lost(tmp_path: Path) -> None:
    """Sequence 10: a load that runs out of memory (the pre-flight skipped, as a wrong estimate
    would) is refused as bad input, never retried as exit 4; the served version stays whole."""
    from batchscore.errors import PublishRefusedError
    from batchscore.reader import ScoreReader

    with LocalRedis() as server:
        first = _publish(server, tmp_path, "a", 0)
        r = redis.Redis.from_url(server.url)
        big = tmp_path / "pred" / "runs" / "b"
        big.mkdir(parents=True)
        many = np.arange(40_000, dtype=np.int64) * 7
        pq.write_table(pa.table({"user_id": many, "score": (many % 7).astype(np.float32)}), big / "part-00000.parquet")
        staged = delta.stage(str(tmp_path / "pred"), "b")  # ~0.6 MB in Redis; room is left for ~0.2 MB
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 200_000)
        store = RedisVersions(r, NS)
        with pytest.raises(PublishRefusedError, match="ran out of memory .maxmemory. while loading") as refused:
            publication.publish(store, _target(tmp_path), staged, run_id="b", run_date="2026-11-22",
                                validated_digest=staged.digest, metadata={},
                                loader=inproc_loader(server.url, NS, "user_id", ["score"]))
        assert refused.value.exit_code == 2
        assert store.known_versions() == [first.publication.redis_version]  # type: ignore[union-attr]
        assert not r.keys(f"{NS}:v2.*")  # the partial version is gone
        found = ScoreReader(server.url, prefix="p", pointer_ttl=0).get_many("m", KEYS.tolist())
        want = ((KEYS % 101) / 101).astype(np.float32)
        assert [found[str(k)].value for k in KEYS] == want.tolist()  # type: ignore[union-attr]
        assert len(delta.publications(str(tmp_path / "pred"))) == 1
