"""``batchscore history`` names a publication whose ``outputs.redis.ttl_seconds`` lifetime ended ``expired``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from batchscore.config import load_model_config
from batchscore.jobs import history
from batchscore.jobs import run as run_job
from batchscore.jobs.targets import store_of

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_history_shows_an_expired_publication(spark: Any, make_config: Any, redis_url: str) -> None:
    cfg = load_model_config(make_config(rows=500, outputs={"redis": {"ttl_seconds": 6, "gc_grace_seconds": 0}}))
    rep = run_job.run(spark, cfg, run_id="e1", run_date="2026-12-01", redis_url=redis_url)
    store = store_of(cfg, redis_url)
    assert history.rows(cfg, store)[0]["redis"] == "current"
    deadline = time.monotonic() + 60
    while store.meta(rep.redis_version) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not store.meta(rep.redis_version), "the version's meta did not expire within 60 s"
    row = history.rows(cfg, store)[0]
    assert (row["run_id"], row["redis"]) == ("e1", "expired")
