"""Publish to and read from a Redis Cluster of three masters (started by the fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from redis.cluster import RedisCluster

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.reader import AsyncScoreReader, ScoreReader
from jobs import state
from jobs.publish import publish
from jobs.rollback import rollback

from .conftest import stage_run

pytestmark = [pytest.mark.integration, pytest.mark.spark]
KEYS = np.arange(5000, dtype=np.int64)


def test_publish_lookup_and_rollback_through_a_cluster(spark: Any, make_config: Any, redis_cluster: str) -> None:
    cfg = load_model_config(make_config(outputs={"redis": {"cluster": True, "keep_versions": 1}}))
    for i in range(2):
        stage_run(cfg, f"c{i}", KEYS, (KEYS + i * 10_000).astype(np.float32))
        rep = publish(spark, cfg, run_id=f"c{i}", redis_url=redis_cluster)
        assert layout.parse_version_id(rep["redis_version"])[0] == i + 1

    rc = RedisCluster.from_url(redis_cluster)
    masters = rc.get_primaries()
    assert len(masters) == 3
    held = [rc.get_redis_connection(n).dbsize() for n in masters]
    assert all(h > 5 for h in held), held  # the buckets spread over every master
    assert rc.get(layout.pointer_key("t:m")).decode() == rep["redis_version"]

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
    rep = rollback(cfg, to_version=0, redis_url=redis_cluster)
    assert rep["redis_version"] == first and not rep["reloaded"]
    assert ScoreReader(redis_cluster, prefix="t", cluster=True).get("m", 17).value == 17.0  # type: ignore[union-attr]
