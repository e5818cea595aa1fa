"""``outputs.redis.load: auto``: a publication that changed few entities is built as a server-side
copy of the served version plus the entities that differ; what readers then get equals a full load
of the same content, entity for entity (changed, new and removed keys), and a patch killed midway
converges on a rerun, whether the rerun patches again or loads in full."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs.publish import publish
from batchscore.reader import ScoreReader

from .conftest import stage_run, start_publish, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _served(r: Redis, ns: str) -> tuple[str, int]:
    vid = r.get(layout.pointer_key(ns)).decode()  # type: ignore[union-attr]
    return vid, int(r.hget(layout.meta_key(ns, vid), "buckets"))  # type: ignore[arg-type]


def _check(url: str, model: str, keys: np.ndarray, scores: np.ndarray, gone: np.ndarray) -> None:
    """Readers get exactly ``scores`` for ``keys`` and nothing for ``gone``; no other entity is stored."""
    reader = ScoreReader(url, prefix="t", pointer_ttl=0)
    found = reader.get_many(model, [*keys.tolist(), *gone.tolist()])
    assert [found[str(k)].value for k in keys] == scores.astype(np.float32).tolist()  # type: ignore[union-attr]
    assert all(found[str(k)] is None for k in gone)
    reader.close()
    r = Redis.from_url(url)
    vid, buckets = _served(r, f"t:{model}")
    assert sum(r.hlen(layout.data_key(f"t:{model}", vid, b)) for b in range(buckets)) == len(keys)


def test_a_few_changes_are_published_as_a_patch_equal_to_a_full_load(spark: Any, make_config: Any,
                                                                   redis_url: str) -> None:
    cfg = load_model_config(make_config(name="pt"))
    rng = np.random.default_rng(7)
    keys = np.arange(20_000, dtype=np.int64)
    scores = rng.random(len(keys)).astype(np.float32)
    stage_run(cfg, "p0", keys, scores)
    assert publish(spark, cfg, run_id="p0", redis_url=redis_url).redis_load == "full"  # nothing served yet
    r = Redis.from_url(redis_url)
    first, buckets = _served(r, "t:pt")

    # 1 % rescored, 150 keys gone, 120 new: 320 entities written, 150 removed, the rest copied.
    changed = rng.choice(len(keys), size=200, replace=False)
    scores = scores.copy()
    scores[changed] += np.float32(0.5)
    drop = np.setdiff1d(rng.choice(len(keys), size=150, replace=False), changed)
    gone = keys[drop]
    keys2 = np.concatenate([np.delete(keys, drop), np.arange(50_000, 50_120, dtype=np.int64)])
    scores2 = np.concatenate([np.delete(scores, drop), rng.random(120).astype(np.float32)])
    stage_run(cfg, "p1", keys2, scores2)
    rep = publish(spark, cfg, run_id="p1", redis_url=redis_url)
    assert rep.redis_load == f"patch of {first}: {200 + 120} written, {len(drop)} removed"
    assert _served(r, "t:pt")[1] == buckets  # the bucket count was kept, so the copy applies
    _check(redis_url, "pt", keys2, scores2, gone)

    # The same content under a new run id: a patch that writes and removes nothing.
    stage_run(cfg, "p2", keys2, scores2, run_date="2026-11-23")
    assert publish(spark, cfg, run_id="p2", redis_url=redis_url).redis_load.endswith(": 0 written, 0 removed")
    _check(redis_url, "pt", keys2, scores2, gone)

    # Most entities changed: a full load from the executors.
    scores3 = (scores2 + np.float32(0.25)).astype(np.float32)
    stage_run(cfg, "p3", keys2, scores3, run_date="2026-11-24")
    assert publish(spark, cfg, run_id="p3", redis_url=redis_url).redis_load == "full"
    _check(redis_url, "pt", keys2, scores3, gone)


def test_duplicate_keys_in_a_patchable_run_are_refused_and_nothing_changes(spark: Any, make_config: Any,
                                                                          redis_url: str) -> None:
    from batchscore.errors import InputDataError

    cfg = load_model_config(make_config(name="pd"))
    keys = np.arange(5_000, dtype=np.int64)
    stage_run(cfg, "d0", keys, (keys % 13).astype(np.float32))
    publish(spark, cfg, run_id="d0", redis_url=redis_url)
    served = _served(Redis.from_url(redis_url), "t:pd")
    dup = np.concatenate([keys, keys[:3]])
    stage_run(cfg, "d1", dup, (dup % 13).astype(np.float32))
    with pytest.raises(InputDataError, match=r"3 duplicate key\(s\) in 'user_id' \(e\.g\. 0, 1, 2"):
        publish(spark, cfg, run_id="d1", redis_url=redis_url)
    assert _served(Redis.from_url(redis_url), "t:pd") == served
    _check(redis_url, "pd", keys, (keys % 13).astype(np.float32), np.array([], np.int64))


@pytest.mark.parametrize("rerun", ["auto", "full"])
def test_a_patch_killed_midway_converges_on_a_rerun(spark: Any, make_config: Any, redis_url: str, tmp_path: Path,
                                                     rerun: str) -> None:
    """SIGKILL after the patch's first write round (the copy done, dropped keys not yet removed);
    the rerun patches the same version again, or (``load: full``) empties it and loads it in full."""
    name = f"pk{rerun}"
    over = {"delta": {"path": str(tmp_path / f"pred-{rerun}")}}
    path = make_config(name=name, outputs={**over, "redis": {"key_prefix": "t", "lock_ttl_seconds": 5}})
    cfg = load_model_config(path)
    keys = np.arange(30_000, dtype=np.int64)
    stage_run(cfg, "k0", keys, (keys % 101).astype(np.float32))
    publish(spark, cfg, run_id="k0", redis_url=redis_url)
    keys2 = np.concatenate([keys[500:], np.arange(90_000, 90_400, dtype=np.int64)])
    scores2 = (keys2 % 101).astype(np.float32)
    scores2[:300] += np.float32(1.0)
    stage_run(cfg, "k1", keys2, scores2)
    proc = start_publish(path, "k1", redis_url, BATCHSCORE_CRASH_AT="during_redis_load")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, out
    r = Redis.from_url(redis_url)
    vid = r.get(layout.run_key(f"t:{name}", "k1")).decode()  # type: ignore[union-attr]
    assert r.hget(layout.meta_key(f"t:{name}", vid), "patch_of")  # it was killed inside a patch
    wait_for(lambda: not r.exists(layout.lock_key(f"t:{name}")), 30, "the killed publisher's lock to lapse")
    path = make_config(name=name, outputs={**over, "redis": {"key_prefix": "t", "load": rerun}})
    proc = start_publish(path, "k1", redis_url)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert ("patched" in out) == (rerun == "auto"), out[-2000:]
    assert _served(r, f"t:{name}")[0] == vid  # the version the killed try began
    _check(redis_url, name, keys2, scores2, keys[:500])
