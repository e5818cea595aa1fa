"""Readers polling continuously (threads) through 20 back-to-back publishes never see a mix of
versions, nor a missing key for an entity present in the version they read; GC with a short grace
period runs after every publish meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs.publish import publish
from batchscore.reader import AsyncScoreReader, ScoreReader

from .conftest import numbers, stage_run

pytestmark = [pytest.mark.integration, pytest.mark.spark]
PUBLISHES = 20
UNIVERSE = np.arange(600, dtype=np.int64)
SAMPLE = UNIVERSE[::3].tolist()


def _keys(i: int) -> np.ndarray:
    """Publish i drops a sliding window of 30 entities: some keys are in some versions only."""
    return UNIVERSE[(UNIVERSE < 20 * i % 570) | (UNIVERSE >= 20 * i % 570 + 30)]


def _score(i: int, keys: np.ndarray) -> np.ndarray:
    return (i * 1000 + keys).astype(np.float32)  # exact in float32: the value names its publish


def _check(batch: dict[str, Any], errors: list[str]) -> int | None:
    found = {int(k): s for k, s in batch.items() if s is not None}
    if not found:
        errors.append("a batch found nothing")
        return None
    pubs = {int(s.value) // 1000 for s in found.values()}
    versions = {s.version_id for s in found.values()}
    if len(pubs) != 1 or len(versions) != 1:
        errors.append(f"mixed batch: publishes {pubs}, versions {versions}")
        return None
    i = pubs.pop()
    present = set(_keys(i).tolist())
    missing = [k for k in batch if int(k) in present and batch[k] is None]
    extra = [k for k in found if k not in present]
    wrong = [k for k, s in found.items() if s.value != i * 1000 + k]
    if missing or extra or wrong:
        errors.append(f"publish {i}: missing {missing[:3]}, unexpected {extra[:3]}, wrong {wrong[:3]}")
    return i


def test_readers_never_see_a_mix_through_twenty_publishes(spark: Any, make_config: Any, redis_url: str) -> None:
    cfg = load_model_config(make_config(outputs={"redis": {"keep_versions": 1, "gc_grace_seconds": 0.5}}))
    for i in range(PUBLISHES + 1):
        stage_run(cfg, f"p{i}", _keys(i), _score(i, _keys(i)))
    publish(spark, cfg, run_id="p0", redis_url=redis_url)

    stop = threading.Event()
    errors: list[str] = []
    seen: list[set[int]] = [set(), set()]

    def poll() -> None:  # sync, pointer cached 0.1 s and refreshed by pub/sub on every flip
        reader = ScoreReader(redis_url, prefix="t", pointer_ttl=0.1, subscribe=True)
        try:
            while not stop.is_set():
                if (got := _check(reader.get_many("m", SAMPLE), errors)) is not None:
                    seen[0].add(got)
        except Exception as exc:  # a reader must never fail: surface it in the test
            errors.append(f"sync reader raised {exc!r}")
        finally:
            reader.close()

    async def apoll() -> None:  # asyncio, pointer re-read on every lookup
        async with AsyncScoreReader(redis_url, prefix="t", pointer_ttl=0) as reader:
            while not stop.is_set():
                if (got := _check(await reader.get_many("m", SAMPLE), errors)) is not None:
                    seen[1].add(got)

    def arun() -> None:
        try:
            asyncio.run(apoll())
        except Exception as exc:
            errors.append(f"async reader raised {exc!r}")

    threads = [threading.Thread(target=poll), threading.Thread(target=arun)]
    for t in threads:
        t.start()
    ids: dict[int, str] = {}
    try:
        for i in range(1, PUBLISHES + 1):
            rep = publish(spark, cfg, run_id=f"p{i}", redis_url=redis_url)
            assert layout.parse_version_id(rep.redis_version)[0] == i + 1
            ids[i + 1] = rep.redis_version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert len(seen[0] | seen[1]) >= 5  # the readers really saw the versions go by
    r = redis.Redis.from_url(redis_url)
    assert r.get(layout.pointer_key("t:m")).decode() == ids[PUBLISHES + 1]
    # GC kept the current version, the previous one, and those retired under the grace period.
    left = sorted(numbers(r))
    assert left[-2:] == [PUBLISHES, PUBLISHES + 1] and len(left) < PUBLISHES // 2
    for v, vid in ids.items():
        assert r.exists(layout.meta_key("t:m", vid), layout.data_key("t:m", vid, 0)) == (2 if v in left else 0)
