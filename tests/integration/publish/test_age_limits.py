"""Age limits, on a real redis-server and a real Delta table: ``outputs.redis.ttl_seconds`` puts an
expiry on every key of a publication (data, meta, pointer, record), counted from its flip and
renewed by the next one; once it lapses readers see nothing, reconcile and gc do not revive it, a
publish or a rollback serves again. The readers expose ``published_at`` / ``scored_at`` and judge
``max_age`` (mark or raise), sync and asyncio.

Most publishes go through the protocol with the executor-side loader run in-process (as in
``test_protocol_primitives.py``); one goes through ``batchscore publish`` on Spark to check that
the score report's ``scored_at`` reaches the readers."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from test_node_reader import node  # noqa: F401 - the fixture: node on PATH, `npm ci` in readers/node when needed

from batchscore import redis_layout as layout
from batchscore.errors import PublishRefusedError
from batchscore.reader import AsyncScoreReader, ScoreReader, StaleScoreError
from batchscore.sinks import delta, publication
from batchscore.sinks.redis import RedisVersions
from batchscore.testing.local_redis import LocalRedis

from .conftest import inproc_loader, stage_run, wait_for

pytestmark = [pytest.mark.integration]
NS = "a:m"
KEYS = np.arange(700, dtype=np.int64) * 7
SAMPLE = [str(k) for k in KEYS[:50]]


def _scores(shift: float) -> np.ndarray:
    return ((KEYS % 97) / 97 + shift).astype(np.float32)


def _stage(root: Path, run_id: str, shift: float) -> delta.StagedRun:
    d = root / "pred" / "runs" / run_id
    d.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": KEYS, "score": _scores(shift)}), d / "part-00000.parquet")
    return delta.stage(str(root / "pred"), run_id)


def _target(root: Path, **over: Any) -> publication.Target:
    base = dict(model="m", table=str(root / "pred"), key="user_id", columns=["score"], model_version="v1",
                keep_versions=1, gc_grace_seconds=0.0, lock_ttl_seconds=30)
    return publication.Target(**{**base, **over})  # type: ignore[arg-type]


def _loader(server: LocalRedis) -> publication.Loader:
    return inproc_loader(server.url, NS, "user_id", ["score"])


def _store(server: LocalRedis) -> RedisVersions:
    return RedisVersions(redis.Redis.from_url(server.url), NS)


def _publish(server: LocalRedis, root: Path, run_id: str, shift: float, *, scored_at: str | None = None,
             **over: Any) -> publication.Publication:
    staged = _stage(root, run_id, shift)
    out = publication.publish(_store(server), _target(root, **over), staged, run_id=run_id, run_date="2026-11-22",
                              validated_digest=staged.digest, metadata={}, loader=_loader(server),
                              scored_at=scored_at)
    assert out.action == "published" and out.publication is not None
    return out.publication


def _keys(r: Any, vid: str) -> tuple[list[str], list[str]]:
    """(control keys, data keys) of a version: its meta and run key; every bucket that exists."""
    meta = {k.decode(): v.decode() for k, v in r.hgetall(layout.meta_key(NS, vid)).items()}
    data = [layout.data_key(NS, vid, b) for b in range(int(meta["buckets"]))]
    present = [k for k in data if r.exists(k)]
    assert len(present) == len(data), "every bucket of the version holds entities"
    return [layout.meta_key(NS, vid), layout.run_key(NS, meta["run_id"])], present


def _values(shift: float) -> list[float]:
    return [float(v) for v in _scores(shift)[:50]]


def _sync_lookup(url: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    with ScoreReader(url, prefix="a", pointer_ttl=0, **kw) as reader:
        return reader.get("m", SAMPLE[0]), reader.get_many("m", SAMPLE)


def _async_lookup(url: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    async def go() -> tuple[Any, dict[str, Any]]:
        async with AsyncScoreReader(url, prefix="a", pointer_ttl=0, **kw) as reader:
            return await reader.get("m", SAMPLE[0]), await reader.get_many("m", SAMPLE)

    return asyncio.run(go())


def _serves(url: str, shift: float, vid: str) -> None:
    for one, many in (_sync_lookup(url), _async_lookup(url)):
        assert one is not None and one.version_id == vid and one.value == _values(shift)[0]
        assert [many[k].value for k in SAMPLE] == _values(shift)
        assert {many[k].version_id for k in SAMPLE} == {vid}


def _serves_nothing(url: str) -> None:
    for one, many in (_sync_lookup(url), _async_lookup(url)):
        assert one is None and set(many.values()) == {None}
    with ScoreReader(url, prefix="a") as reader:
        assert reader.current_version_id("m") is None


def test_every_key_of_a_publication_expires_after_the_ttl_and_each_publication_renews(
        redis_server: LocalRedis, tmp_path: Path) -> None:
    ttl, grace = 600, 60  # the pointer and record expire the grace (at most half the TTL) before the data
    r = redis.Redis.from_url(redis_server.url)
    first = _publish(redis_server, tmp_path, "a", 0.0, ttl_seconds=ttl, gc_grace_seconds=grace)
    control, data = _keys(r, first.redis_version)
    pointer_at = r.pexpiretime(layout.pointer_key(NS))
    assert r.pexpiretime(layout.publication_key(NS)) == pointer_at
    deadlines = {k: r.pexpiretime(k) for k in control + data}
    assert len(set(deadlines.values())) == 1, "data, meta and run key share one deadline"
    data_at = deadlines[control[0]]
    assert data_at - pointer_at == grace * 1000
    for k in control + data:
        assert 0 < r.pttl(k) <= ttl * 1000
    for k in (layout.pointer_key(NS), layout.publication_key(NS)):
        assert 0 < r.pttl(k) <= (ttl - grace) * 1000
    meta = r.hgetall(layout.meta_key(NS, first.redis_version))
    assert abs(float(meta[b"expires_at"]) * 1000 - data_at) <= 1
    assert abs(float(meta[b"published_at"]) * 1000 + ttl * 1000 - data_at) < 2000  # counted from the flip
    for k in (layout.seq_key(NS), layout.versions_key(NS), layout.fence_key(NS)):
        assert r.pttl(k) == -1  # counters and the GC index never expire

    second = _publish(redis_server, tmp_path, "b", 1.0, ttl_seconds=ttl, gc_grace_seconds=grace)
    control2, data2 = _keys(r, second.redis_version)
    assert {r.pexpiretime(k) for k in control2 + data2} == {r.pexpiretime(layout.pointer_key(NS)) + grace * 1000}
    assert r.pexpiretime(layout.pointer_key(NS)) > pointer_at  # renewed by the new publication
    assert r.pexpiretime(control2[0]) > data_at
    # The replaced version, kept for rollback, keeps its own deadline: it never outlives its TTL.
    assert r.hget(layout.meta_key(NS, first.redis_version), "state") == b"retired"
    assert {r.pexpiretime(k) for k in control + data} == {data_at}
    _serves(redis_server.url, 1.0, second.redis_version)

    # Without a TTL the next publication's keys are persistent again.
    third = _publish(redis_server, tmp_path, "c", 2.0, ttl_seconds=None, gc_grace_seconds=grace)
    control3, data3 = _keys(r, third.redis_version)
    assert {r.pttl(k) for k in [layout.pointer_key(NS), layout.publication_key(NS), *control3, *data3]} == {-1}


def test_a_publication_nobody_renews_expires_and_the_next_publish_serves_again(
        redis_server: LocalRedis, tmp_path: Path) -> None:
    over = dict(ttl_seconds=6, gc_grace_seconds=1.0)  # the pointer goes after 5 s, the data after 6 s
    r = redis.Redis.from_url(redis_server.url)
    first = _publish(redis_server, tmp_path, "a", 0.0, **over)
    control, data = _keys(r, first.redis_version)
    wait_for(lambda: not r.exists(layout.pointer_key(NS), layout.publication_key(NS), *control, *data), 60,
             "every key of the publication to expire")
    _serves_nothing(redis_server.url)  # "nothing published", as for a model never published

    # Reconcile and gc know it expired: they do not reload it from Delta, and vanished keys are no error.
    store = _store(redis_server)
    out = publication.reconcile(store, _target(tmp_path, **over), loader=_loader(redis_server))
    assert out.action == "expired" and out.publication is not None and out.publication.run_id == "a"
    collected = publication.gc(store, _target(tmp_path, **over), keep=1, grace_s=0, loader=_loader(redis_server))
    assert collected == [first.redis_version] and store.known_versions() == []
    _serves_nothing(redis_server.url)
    # Rolling back to the expired head's own content is refused in one line, changing nothing.
    with pytest.raises(PublishRefusedError, match="expired .outputs.redis.ttl_seconds = 6.") as exc:
        publication.rollback(store, _target(tmp_path, **over), to_version=0, loader=_loader(redis_server))
    assert "\n" not in str(exc.value) and delta.table_version(str(tmp_path / "pred")) == 0

    second = _publish(redis_server, tmp_path, "b", 1.0, **over)
    assert second.seq == 2 and r.pttl(layout.pointer_key(NS)) <= 5000
    _serves(redis_server.url, 1.0, second.redis_version)
    # A rollback to the expired version reloads it from Delta, with a fresh lifetime.
    back = publication.rollback(store, _target(tmp_path, **over), to_version=0, loader=_loader(redis_server))
    assert back.reloaded and back.publication is not None and back.publication.redis_version != first.redis_version
    assert 0 < r.pttl(layout.pointer_key(NS)) <= 5000
    _serves(redis_server.url, 0.0, back.publication.redis_version)


def test_a_reconcile_after_a_lost_server_serves_what_is_left_of_the_lifetime(
        redis_server: LocalRedis, tmp_path: Path) -> None:
    over = dict(ttl_seconds=600, gc_grace_seconds=30.0)
    r = redis.Redis.from_url(redis_server.url)
    first = _publish(redis_server, tmp_path, "a", 0.0, **over)
    data_at = r.pexpiretime(layout.meta_key(NS, first.redis_version))
    r.flushall()  # a server restarted without persistence, within the lifetime
    time.sleep(1.0)
    out = publication.reconcile(_store(redis_server), _target(tmp_path, **over), loader=_loader(redis_server))
    assert out.action == "repaired" and out.reloaded and out.publication is not None
    vid = out.publication.redis_version
    _serves(redis_server.url, 0.0, vid)
    control, data = _keys(r, vid)
    again = {r.pexpiretime(k) for k in control + data}
    assert len(again) == 1 and data_at - 5_000 <= again.pop() <= data_at + 100  # the commit's lifetime, not a new one
    assert r.pexpiretime(layout.pointer_key(NS)) == r.pexpiretime(control[0]) - 30_000


def test_max_age_marks_or_raises_in_both_readers(redis_server: LocalRedis, tmp_path: Path) -> None:
    scored = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    before = time.time()
    pub = _publish(redis_server, tmp_path, "old", 0.5, scored_at=scored.isoformat())
    after = time.time()
    vid = pub.redis_version
    for lookup in (_sync_lookup, _async_lookup):
        for kw in ({}, {"max_age": 3 * 3600}, {"max_age": 3 * 3600, "on_stale": "raise"}):
            one, many = lookup(redis_server.url, **kw)
            assert one.stale is False and {s.stale for s in many.values()} == {False}
            assert one.scored_at == scored and one.published_at is not None
            assert before - 1 <= one.published_at.timestamp() <= after + 1
        one, many = lookup(redis_server.url, max_age=3600)  # scored 2 h ago: past a 1 h limit
        assert one.stale is True and {s.stale for s in many.values()} == {True}
        assert one.value == _values(0.5)[0] and [many[k].value for k in SAMPLE] == _values(0.5)
        assert one.scored_at == scored and one.version_id == vid
        with pytest.raises(StaleScoreError) as exc:
            lookup(redis_server.url, max_age=3600, on_stale="raise")
        err = exc.value
        assert isinstance(err, LookupError) and err.model == "m" and err.version_id == vid
        assert err.age is not None and 7200 <= err.age < 7200 + 600
        assert "'m'" in str(err) and vid in str(err) and "max_age 3600 s" in str(err) and "\n" not in str(err)
    with pytest.raises(ValueError, match="on_stale must be 'mark' or 'raise'"):
        ScoreReader(redis_server.url, prefix="a", on_stale="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_age must be a number of seconds above 0"):
        AsyncScoreReader(redis_server.url, prefix="a", max_age=0)

    # A fresh publication is not stale; a rollback to the old content keeps its old scored_at, and a
    # reader that cached the old version's metadata sees the rollback's new published_at.
    with ScoreReader(redis_server.url, prefix="a", pointer_ttl=0, max_age=3600) as cached:
        old = cached.get("m", SAMPLE[0])
        assert old is not None and old.stale is True and old.published_at is not None
        fresh = datetime.now(UTC).replace(microsecond=0)
        _publish(redis_server, tmp_path, "new", 0.25, scored_at=fresh.isoformat())
        new = cached.get("m", SAMPLE[0])
        assert new is not None and new.stale is False and new.scored_at == fresh and new.value == _values(0.25)[0]
        out = publication.rollback(_store(redis_server), _target(tmp_path), to_version=0, loader=_loader(redis_server))
        assert not out.reloaded and out.publication is not None and out.publication.scored_at == scored.isoformat()
        got = cached.get("m", SAMPLE[0])
        assert got is not None and got.version_id == vid and got.stale is True and got.scored_at == scored
        assert got.published_at is not None and got.published_at > old.published_at


@pytest.mark.spark
def test_the_score_reports_scored_at_reaches_the_readers(spark: Any, make_config: Any, redis_url: str) -> None:
    from batchscore.config import load_model_config
    from batchscore.jobs import _state as state
    from batchscore.jobs.publish import publish

    cfg = load_model_config(make_config(outputs={"redis": {"ttl_seconds": 900, "gc_grace_seconds": 60}}))
    scored = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    stage_run(cfg, "r1", KEYS, _scores(0.0))
    digest = delta.stage(cfg.outputs.delta.path, "r1").digest
    state.write_report(cfg, "r1", "score", {"input_rows": len(KEYS), "run_date": "2026-11-22", "digest": digest,
                                            "scored_at": scored.isoformat()})
    before = time.time()
    report = publish(spark, cfg, run_id="r1", redis_url=redis_url)
    after = time.time()
    r = redis.Redis.from_url(redis_url)
    ns = layout.namespace("t", "m")
    meta = {k.decode(): v.decode() for k, v in r.hgetall(layout.meta_key(ns, report.redis_version)).items()}
    record = json.loads(r.get(layout.publication_key(ns)))
    in_delta = publication.head(cfg.outputs.delta.path)
    assert record["scored_at"] == scored.isoformat() and in_delta is not None
    assert in_delta.scored_at == scored.isoformat()
    assert float(meta["scored_at"]) == scored.timestamp() and before <= float(meta["published_at"]) <= after
    assert 0 < r.pttl(layout.pointer_key(ns)) <= 840_000 and 840_000 < r.pttl(layout.meta_key(ns, report.redis_version))
    with ScoreReader(redis_url, prefix="t") as reader:
        got = reader.get("m", int(KEYS[3]))
    assert got is not None and got.scored_at == scored and got.stale is False
    assert got.published_at == datetime.fromtimestamp(float(meta["published_at"]), UTC)

    async def aget() -> Any:
        async with AsyncScoreReader(redis_url, prefix="t", max_age=60) as ar:
            return await ar.get("m", int(KEYS[3]))

    got = asyncio.run(aget())
    assert got.scored_at == scored and got.stale is True  # scored in 2020: long past a minute


def test_the_expiry_is_set_on_every_master_of_a_cluster(redis_cluster: str, tmp_path: Path) -> None:
    from redis.cluster import RedisCluster

    from batchscore.udfs._redis_load import make_loader

    rc = RedisCluster.from_url(redis_cluster)
    ns = "ttl:m"

    def load(paths: list[str], version: Any, fence: tuple[str, str]) -> dict[int, int]:
        batches = pq.read_table(paths[0], columns=["user_id", "score"]).to_batches(max_chunksize=150)
        counts: dict[int, int] = {}
        run = make_loader(redis_cluster, ns, version.vid, version.buckets, ["score"], cluster=True, fence=fence)
        for out in run(iter(batches)):
            for b, n in zip(out.column(0).to_pylist(), out.column(1).to_pylist(), strict=True):
                counts[b] = counts.get(b, 0) + n
        return counts

    staged = _stage(tmp_path, "c", 0.0)
    out = publication.publish(RedisVersions(rc, ns), _target(tmp_path, ttl_seconds=600, gc_grace_seconds=30.0),
                              staged, run_id="c", run_date="2026-11-22", validated_digest=staged.digest,
                              metadata={}, loader=load)
    assert out.publication is not None
    vid = out.publication.redis_version
    buckets = int(rc.hget(layout.meta_key(ns, vid), "buckets"))
    data = [layout.data_key(ns, vid, b) for b in range(buckets)]
    assert len({rc.keyslot(k) for k in data}) > 1  # spread over slots (and masters)
    deadline = rc.pexpiretime(layout.meta_key(ns, vid))
    assert {rc.pexpiretime(k) for k in data} == {deadline} and 0 < rc.pttl(layout.meta_key(ns, vid)) <= 600_000
    assert rc.pexpiretime(layout.pointer_key(ns)) == deadline - 30_000


def test_max_age_in_the_node_reader(redis_server: LocalRedis, tmp_path: Path, node: str) -> None:  # noqa: F811
    import json
    import subprocess

    scored = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    vid = _publish(redis_server, tmp_path, "old", 0.5, scored_at=scored.isoformat()).redis_version
    node_dir = Path(__file__).resolve().parents[3] / "readers" / "node"

    def lookup(*extra: str) -> dict[str, Any]:
        res = subprocess.run([node, "bin/lookup.js", "--url", redis_server.url, "--prefix", "a", "--model", "m",
                              "--timeout-ms", "5000", *extra, *SAMPLE[:5]], cwd=node_dir, capture_output=True,
                             text=True, timeout=60, check=False)
        return {"rc": res.returncode, **json.loads(res.stdout)}

    fine = lookup("--max-age-ms", str(3 * 3600 * 1000))
    assert fine["rc"] == 0 and {s["stale"] for s in fine["scores"].values()} == {False}
    assert {s["scoredAt"] for s in fine["scores"].values()} == {scored.isoformat().replace("+00:00", ".000Z")}
    old = lookup("--max-age-ms", str(3600 * 1000))  # scored 2 h ago: past a 1 h limit, marked
    assert old["rc"] == 0 and {s["stale"] for s in old["scores"].values()} == {True}
    assert [old["scores"][k]["values"]["score"] for k in SAMPLE[:5]] == _values(0.5)[:5]
    raised = lookup("--max-age-ms", str(3600 * 1000), "--on-stale", "raise")
    assert raised["rc"] == 1 and raised["error"] == "StaleScoreError" and raised["kind"] == "stale"
    assert vid in raised["message"] and "'m'" in raised["message"]
