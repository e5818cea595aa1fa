"""Sticky traffic splits at lookup time (``batchscore.splits``), on a real redis-server with versions
published through the real protocol (the in-process loader): arm shares follow the weights, every
reader (sync, asyncio, Node) sends a key to the same arm and reports it, weight-0 arms are never
served, and lookups during split changes and flips never mix versions of an arm."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from test_node_reader import node  # noqa: F401 - the fixture: node on PATH, `npm ci` in readers/node when needed

from batchscore import splits
from batchscore.reader import AsyncScoreReader, ScoreReader
from batchscore.sinks import delta, publication
from batchscore.sinks.redis import RedisVersions
from batchscore.testing.local_redis import LocalRedis

from .conftest import inproc_loader

pytestmark = [pytest.mark.integration]
N = 100_000
KEYS = np.arange(N, dtype=np.int64)
ARMS = {"champion": 0.0, "a": 100.0, "b": 200.0, "c": 300.0}  # an arm's scores: key / N + its offset + run
NODE_DIR = Path(__file__).resolve().parents[3] / "readers" / "node"


def _publish(server: LocalRedis, root: Path, arm: str, run: int) -> str:
    """Publish version ``run`` of ``arm``: scores key / N + offset + run (so a value names its arm and run)."""
    model = "m" if arm == "champion" else f"m@{arm}"
    ns = splits.arm_namespace("s", "m", arm)
    table = root / model
    run_id = f"r{run}"
    d = table / "runs" / run_id
    d.mkdir(parents=True)
    scores = (KEYS / N + ARMS[arm] + run).astype(np.float32)
    pq.write_table(pa.table({"k": KEYS, "score": scores}), d / "part-00000.parquet")
    staged = delta.stage(str(table), run_id)
    target = publication.Target(model=model, table=str(table), key="k", columns=["score"], model_version=f"{arm}-v",
                                keep_versions=1, gc_grace_seconds=0.0, lock_ttl_seconds=30)
    out = publication.publish(RedisVersions(redis.Redis.from_url(server.url), ns), target, staged, run_id=run_id,
                              run_date=f"2026-12-{run:02d}", validated_digest=staged.digest, metadata={},
                              loader=inproc_loader(server.url, ns, "k", ["score"]))
    assert out.publication is not None
    return out.publication.redis_version


def _arm_of_value(value: float, key: int) -> tuple[str, int]:
    rest = int(round(value - key / N))
    by_offset = {int(v): a for a, v in ARMS.items()}
    return by_offset[rest // 100 * 100], rest % 100


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("splits")
    with LocalRedis() as server:
        for arm in ("champion", "a", "b", "c"):
            _publish(server, root, arm, 1)
        yield server, root


def _node_lookup(exe: str, url: str, keys: list[int], tmp: Path) -> dict[str, Any]:
    keys_file = tmp / "keys.json"
    keys_file.write_text(json.dumps([str(k) for k in keys]))
    env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
    res = subprocess.run([exe, "bin/lookup.js", "--url", url, "--prefix", "s", "--model", "m", "--keys-file",
                          str(keys_file), "--timeout-ms", "5000"], cwd=NODE_DIR, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)["scores"]


def test_shares_follow_the_weights_and_every_reader_agrees(world: Any, tmp_path: Path, node: str) -> None:  # noqa: F811
    server, _root = world
    r = redis.Redis.from_url(server.url)
    ns = splits.arm_namespace("s", "m", "champion")
    r.delete(splits.split_key(ns))
    split = splits.set_split(r, ns, (("champion", 70), ("a", 20), ("b", 10), ("c", 0)), expected=None)
    reader = ScoreReader(server.url, prefix="s", timeout=5.0)
    found = reader.get_many("m", KEYS.tolist())
    arms = Counter()
    for k in KEYS.tolist():
        s = found[str(k)]
        assert s is not None
        assert (s.arm, 1) == _arm_of_value(s.value, k)  # the score came from the arm it names
        assert s.arm == splits.assign(split, k) and s.model_version == f"{s.arm}-v"
        arms[s.arm] += 1
    for arm, weight in split.arms:
        assert abs(arms[arm] / N - weight / 100) < 0.01, (arm, arms[arm])
    assert arms["c"] == 0  # weight 0: shadow only

    sample = KEYS[::53].tolist()
    single = {k: reader.get("m", k) for k in sample}
    assert all(single[k] is not None and single[k].arm == found[str(k)].arm for k in sample)  # type: ignore[union-attr]

    async def via_async() -> dict[str, Any]:
        async with AsyncScoreReader(server.url, prefix="s", timeout=5.0) as ar:
            return await ar.get_many("m", sample)

    got = asyncio.run(via_async())
    assert all(got[str(k)].arm == found[str(k)].arm for k in sample)  # type: ignore[union-attr]
    by_node = _node_lookup(node, server.url, sample, tmp_path)
    assert all(by_node[str(k)]["arm"] == found[str(k)].arm for k in sample)  # type: ignore[union-attr]
    assert all(by_node[str(k)]["values"]["score"] == found[str(k)].value for k in sample)  # type: ignore[union-attr]

    fresh = ScoreReader(server.url, prefix="s", timeout=5.0)  # a restarted service: same arms
    again = fresh.get_many("m", sample)
    assert all(again[str(k)].arm == found[str(k)].arm for k in sample)  # type: ignore[union-attr]


def test_no_split_serves_the_champion(world: Any) -> None:
    server, _root = world
    r = redis.Redis.from_url(server.url)
    r.delete(splits.split_key("s:m"))
    found = ScoreReader(server.url, prefix="s", pointer_ttl=0.0).get_many("m", [1, 2, 3])
    assert {s.arm for s in found.values() if s} == {"champion"}


def test_lookups_during_split_changes_and_flips_never_mix_versions_of_an_arm(world: Any) -> None:
    server, root = world
    r = redis.Redis.from_url(server.url)
    ns = "s:m"
    r.delete(splits.split_key(ns))
    current = splits.set_split(r, ns, (("champion", 50), ("a", 50)), expected=None)
    sample = KEYS[::97].tolist()
    before = {k: splits.assign(current, k) for k in sample}
    stop = threading.Event()
    problems: list[str] = []
    lookups = [0]

    def read() -> None:
        reader = ScoreReader(server.url, prefix="s", pointer_ttl=0.0, timeout=5.0)
        while not stop.is_set():
            found = reader.get_many("m", sample)
            versions: dict[str, set[str]] = {}
            runs: dict[str, set[int]] = {}
            for k in sample:
                s = found[str(k)]
                if s is None:
                    problems.append(f"key {k} not found")
                    continue
                arm, run = _arm_of_value(s.value, k)
                if arm != s.arm:
                    problems.append(f"key {k}: value of arm {arm}, reported {s.arm}")
                versions.setdefault(s.arm, set()).add(s.version_id)
                runs.setdefault(s.arm, set()).add(run)
            problems.extend(f"arm {a} mixed versions {v}" for a, v in versions.items() if len(v) > 1)
            problems.extend(f"arm {a} mixed runs {v}" for a, v in runs.items() if len(v) > 1)
            lookups[0] += 1

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for run in (2, 3):
            _publish(server, root, "a", run)  # the challenger's pointer flips
            current = splits.set_split(r, ns, (("champion", 30 * run), ("a", 100 - 30 * run)), expected=current)
            _publish(server, root, "champion", run)  # a promotion is a champion flip like this one
        current = splits.set_split(r, ns, (("champion", 50), ("a", 50)), expected=current)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert lookups[0] > 4 and not problems, problems[:5]
    assert {k: splits.assign(current, k) for k in sample} == before  # same weights, same salt: same arms
