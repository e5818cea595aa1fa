"""Publish to and read from a Redis Cluster of three masters (started by the fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from redis.cluster import RedisCluster

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs.publish import publish
from batchscore.jobs.rollback import rollback
from batchscore.reader import AsyncScoreReader, ScoreReader
from batchscore.testing.local_redis import cli_binary

from .conftest import stage_run

pytestmark = [pytest.mark.integration, pytest.mark.spark]
KEYS = np.arange(5000, dtype=np.int64)


def test_publish_lookup_and_rollback_through_a_cluster(spark: Any, make_config: Any, redis_cluster: str) -> None:
    cfg = load_model_config(make_config(outputs={"redis": {"cluster": True, "keep_versions": 1}}))
    for i in range(2):
        stage_run(cfg, f"c{i}", KEYS, (KEYS + i * 10_000).astype(np.float32))
        rep = publish(spark, cfg, run_id=f"c{i}", redis_url=redis_cluster)
        assert layout.parse_version_id(rep.redis_version)[0] == i + 1

    rc = RedisCluster.from_url(redis_cluster)
    masters = rc.get_primaries()
    assert len(masters) == 3
    held = [rc.get_redis_connection(n).dbsize() for n in masters]
    assert all(h > 5 for h in held), held  # the buckets spread over every master
    assert rc.get(layout.pointer_key("t:m")).decode() == rep.redis_version

    reader = ScoreReader(redis_cluster, prefix="t", cluster=True)
    found = reader.get_many("m", KEYS.tolist())
    assert [found[str(k)].value for k in KEYS] == [float(k + 10_000) for k in KEYS]  # type: ignore[union-attr]
    assert reader.get("m", 17).value == 10_017.0  # type: ignore[union-attr]
    assert reader.get("m", 10**9) is None
    reader.close()

    async def aread() -> dict[str, Any]:
        async with AsyncScoreReader(redis_cluster, prefix="t", cluster=True) as ar:
            return await ar.get_many("m", KEYS[:300].tolist())

    got = asyncio.run(aread())
    assert [got[str(k)].value for k in KEYS[:300]] == [float(k + 10_000) for k in KEYS[:300]]  # type: ignore[union-attr]

    # Rollback on the Cluster: Delta version 0's Redis version 1 is kept; the Lua CAS moves the pointer.
    first = state.read_report(cfg, "c0", "publish")["redis_version"]
    back = rollback(cfg, to_version=0, redis_url=redis_cluster)
    assert back["redis_version"] == first and not back["reloaded"]
    assert ScoreReader(redis_cluster, prefix="t", cluster=True).get("m", 17).value == 17.0  # type: ignore[union-attr]


def test_slots_migrated_during_a_cluster_load_and_a_killed_load_then_rerun(
        spark: Any, make_config: Any, redis_cluster: str) -> None:
    """A load that meets MOVED replies (slots resharded to another master while it runs) still
    writes every entity exactly; a load SIGKILLed mid-way on the Cluster resumes to the same end."""
    import signal
    import subprocess

    from .conftest import start_publish, wait_for

    path = make_config(name="mv", outputs={"redis": {"cluster": True, "keep_versions": 1, "lock_ttl_seconds": 5}})
    cfg = load_model_config(path)
    keys = np.arange(120_000, dtype=np.int64) * 3  # 60k rows a task: three pipelined rounds, paused after the first
    stage_run(cfg, "k0", keys, (keys % 1000).astype(np.float32))
    proc = start_publish(path, "k0", redis_cluster, BATCHSCORE_CRASH_AT="during_redis_load")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, out
    stage_run(cfg, "k1", keys, (keys % 1000 + 5).astype(np.float32))
    rc = RedisCluster.from_url(redis_cluster)
    src, dst = rc.get_primaries()[:2]
    # The killed publisher's lock lapses after its TTL (5 s); a publish started before then is refused.
    wait_for(lambda: not rc.exists(layout.lock_key("t:mv")), 30, "the dead publisher's lock to lapse")
    proc = start_publish(path, "k1", redis_cluster, BATCHSCORE_PAUSE_AT="during_redis_load:6")
    try:
        vid = wait_for(lambda: rc.get(layout.run_key("t:mv", "k1")), 120, "the version's allocation", proc).decode()
        wait_for(lambda: next(rc.scan_iter(match=layout.data_key("t:mv", vid, 0)[:-1] + "*", count=1000), None), 120,
                 "the load's first round (then it pauses)", proc)
        moved = subprocess.run(
            [cli_binary(), "--cluster", "reshard", f"{src.host}:{src.port}", "--cluster-from", _node_id(rc, src),
             "--cluster-to", _node_id(rc, dst), "--cluster-slots", "600", "--cluster-yes"],
            capture_output=True, text=True, timeout=120)
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr[-2000:]
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "followed" in out and "MOVED" in out, out[-3000:]  # the resumed rounds met the moved slots
    reader = ScoreReader(redis_cluster, prefix="t", cluster=True, pointer_ttl=0)
    found = reader.get_many("mv", keys.tolist())
    assert [found[str(k)].value for k in keys] == (keys % 1000 + 5).astype(np.float32).tolist()  # type: ignore[union-attr]
    reader.close()
    vid = rc.get(layout.pointer_key("t:mv")).decode()
    meta = rc.hgetall(layout.meta_key("t:mv", vid))
    buckets = int(meta[b"buckets"])
    assert sum(rc.hlen(layout.data_key("t:mv", vid, b)) for b in range(buckets)) == len(keys)


def _node_id(rc: Any, node: Any) -> str:
    raw = rc.get_redis_connection(node).execute_command("CLUSTER MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def test_a_load_into_slots_being_migrated_follows_ask(spark: Any, make_config: Any, redis_cluster: str) -> None:
    """Slots in the middle of a migration (``MIGRATING`` on their owner, ``IMPORTING`` on the
    target): the owner answers ``ASK`` for every new bucket there; the load sends those HSETs to
    the importing master with ``ASKING`` first, and once the migration ends every entity reads back."""
    from .conftest import start_publish

    path = make_config(name="ask", outputs={"redis": {"cluster": True, "keep_versions": 1}})
    cfg = load_model_config(path)
    keys = np.arange(30_000, dtype=np.int64) * 7
    stage_run(cfg, "a0", keys, (keys % 977).astype(np.float32))
    rc = RedisCluster.from_url(redis_cluster)
    src, dst, other = rc.get_primaries()[:3]
    ids = {n.name: _node_id(rc, n) for n in (src, dst, other)}
    control = rc.keyslot(layout.lock_key("t:ask"))
    owned = [s for s in range(16384) if rc.nodes_manager.get_node_from_slot(s).name == src.name and s != control]
    moving = owned[:800]
    for s in moving:
        rc.get_redis_connection(dst).execute_command("CLUSTER SETSLOT", s, "IMPORTING", ids[src.name])
        rc.get_redis_connection(src).execute_command("CLUSTER SETSLOT", s, "MIGRATING", ids[dst.name])
    try:
        proc = start_publish(path, "a0", redis_cluster)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        assert "ASK redirection" in out and "followed 0 MOVED" in out, out[-3000:]
    finally:
        for node in (dst, src, other):  # end the migration: the slots belong to dst now
            conn = rc.get_redis_connection(node)
            for s in moving:
                conn.execute_command("CLUSTER SETSLOT", s, "NODE", ids[dst.name])
    rc.nodes_manager.initialize()
    vid = rc.get(layout.pointer_key("t:ask")).decode()
    landed = [b for b in range(int(rc.hget(layout.meta_key("t:ask", vid), "buckets")))
              if rc.keyslot(layout.data_key("t:ask", vid, b)) in set(moving)]
    assert landed, "no bucket of the version fell into the migrating slots"
    reader = ScoreReader(redis_cluster, prefix="t", cluster=True, pointer_ttl=0)
    found = reader.get_many("ask", keys.tolist())
    assert [found[str(k)].value for k in keys] == (keys % 977).astype(np.float32).tolist()  # type: ignore[union-attr]
    reader.close()
