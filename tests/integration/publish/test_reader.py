"""The light readers (sync and asyncio) and the pointer flip, on real redis-server processes
(plain, with a password, with TLS). Versions are written with :class:`RedisVersions` directly, so
these tests need no Spark."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.errors import InfrastructureError, PublishRefusedError
from batchscore.local_redis import LocalRedis, free_port
from batchscore.reader import AsyncScoreReader, ScoreReader
from batchscore.redis_conn import connect
from batchscore.sinks.redis import RedisVersions, Version

pytestmark = pytest.mark.integration
NS = "t:m"
KEYS = [str(k) for k in range(1000)]
PASSWORD = "pw-Sh0uld-Never-Show"


def load(store: RedisVersions, run_id: str, offset: float, *, flip: bool = True) -> Version:
    v = store.allocate(run_id=run_id, rows=len(KEYS), columns=["score"], model_version=run_id)
    pipe = store.r.pipeline(transaction=False)
    counts: dict[int, int] = {}
    for k in KEYS:
        b = layout.bucket_of(k, v.buckets)
        pipe.hset(layout.data_key(NS, v.number, b), k, layout.encode_scores([int(k) + offset]))
        counts[b] = counts.get(b, 0) + 1
    pipe.execute()
    store.verify(v, counts, rows=len(KEYS))
    v = Version(v.number, v.buckets, "loaded", store.current())
    if flip:
        store.lock(run_id=run_id)
        try:
            store.flip(v)
        finally:
            store.unlock()
    return v


def test_lookups_are_one_round_trip_once_the_pointer_is_cached(redis_server: Any) -> None:
    store = RedisVersions(connect(redis_server.url), NS)
    v = load(store, "a", 0.5)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60)
    assert reader.get("m", 3).value == 3.5  # type: ignore[union-attr]  # warms pointer + metadata
    r = redis.Redis.from_url(redis_server.url)
    r.config_resetstat()
    assert reader.get("m", 7).value == 7.5  # type: ignore[union-attr]
    many = reader.get_many("m", KEYS[:200] + ["nope"])
    assert [many[k].value for k in KEYS[:200]] == [int(k) + 0.5 for k in KEYS[:200]] and many["nope"] is None  # type: ignore[union-attr]
    stats = r.info("commandstats")
    r.config_resetstat()
    buckets = {layout.bucket_of(k, v.buckets) for k in [*KEYS[:200], "nope"]}
    assert stats["cmdstat_hget"]["calls"] == 1  # one command for a single lookup
    assert stats["cmdstat_hmget"]["calls"] == len(buckets)  # one HMGET per bucket, one pipeline
    assert set(stats) - {"cmdstat_config|resetstat"} == {"cmdstat_hget", "cmdstat_hmget"}  # no pointer or meta reads


def test_pointer_cache_follows_a_flip_by_pubsub_or_ttl(redis_server: Any) -> None:
    store = RedisVersions(connect(redis_server.url), NS)
    first = load(store, "a", 0.5)
    subscribed = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True)
    cached = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60)
    short = ScoreReader(redis_server.url, prefix="t", pointer_ttl=0.2)

    async def aread(reader: AsyncScoreReader) -> float:
        return (await reader.get("m", 1)).value  # type: ignore[union-attr]

    async def scenario() -> tuple[float, float]:
        async with AsyncScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True) as ar:
            before = await aread(ar)
            for rd in (subscribed, cached, short):
                assert rd.get("m", 1).value == 1.5  # type: ignore[union-attr]
            second = await asyncio.to_thread(load, store, "b", 0.25)
            deadline = time.monotonic() + 5
            while await ar.current_version("m") != second.number and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return before, await aread(ar)

    assert asyncio.run(scenario()) == (1.5, 1.25)
    deadline = time.monotonic() + 5
    while subscribed.current_version("m") == first.number and time.monotonic() < deadline:
        time.sleep(0.02)
    assert subscribed.get("m", 1).value == 1.25  # type: ignore[union-attr]  # told by the flip message
    assert cached.get("m", 1).value == 1.5  # type: ignore[union-attr]  # still within its TTL: the old version
    time.sleep(0.25)
    assert short.get("m", 1).value == 1.25  # type: ignore[union-attr]  # TTL expired
    cached.invalidate("m")
    assert cached.get("m", 1).value == 1.25  # type: ignore[union-attr]
    subscribed.close()


def test_the_flip_only_moves_forward_under_the_lock(redis_server: Any) -> None:
    store = RedisVersions(connect(redis_server.url), NS)
    v1 = load(store, "a", 0.5)
    v2 = load(store, "b", 0.25, flip=False)
    v3 = load(store, "c", 0.75)  # published over v1 while v2 waited
    store.lock(run_id="b")
    try:
        with pytest.raises(PublishRefusedError, match="may not replace it"):
            store.flip(v2)  # expected v1 as current: stale
        with pytest.raises(PublishRefusedError, match="may not replace it"):
            store.flip(Version(v2.number, v2.buckets, "loaded", v3.number))  # backwards
        store.r.set(layout.lock_key(NS), "someone-else")
        with pytest.raises(InfrastructureError, match="lost the publish lock"):
            store.flip(Version(v1.number, v1.buckets, "retired", v3.number), rollback=True)
    finally:
        store.unlock()
    assert store.current() == v3.number
    unverified = store.allocate(run_id="d", rows=1, columns=["score"], model_version="d")
    store.r.delete(layout.lock_key(NS))
    store.lock(run_id="d")
    with pytest.raises(InfrastructureError, match="not fully loaded"):
        store.flip(Version(unverified.number, unverified.buckets, "loading", v3.number))
    store.flip(Version(v1.number, v1.buckets, "retired", v3.number), rollback=True)  # explicit rollback
    store.unlock()
    assert store.current() == v1.number
    store.lock(run_id="x")
    with pytest.raises(InfrastructureError, match="run x is publishing"):
        RedisVersions(connect(redis_server.url), NS).lock(run_id="y")
    store.unlock()
    assert not store.r.exists(layout.lock_key(NS))


def test_password_urls_work_and_the_password_is_never_printed(tmp_path: Path) -> None:
    with LocalRedis(password=PASSWORD) as server:
        load(RedisVersions(connect(server.url), NS), "a", 0.5)
        assert ScoreReader(server.url, prefix="t").get("m", 9).value == 9.5  # type: ignore[union-attr]
        wrong = server.url.replace(PASSWORD, PASSWORD[::-1])
        with pytest.raises(InfrastructureError) as exc:
            connect(wrong)
        assert "refused the credentials" in str(exc.value) and PASSWORD[::-1] not in str(exc.value)
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"name: m\nmodel: {{uri: {tmp_path}/x.onnx, format: onnx, version: v1}}\n"
                       f"input: {{path: {tmp_path}/in.parquet, key: k, features: [a]}}\n"
                       f"outputs: {{delta: {{path: {tmp_path}/d}}, redis: {{key_prefix: t}}}}\n")
        for url, code in ((server.url, 0), (wrong, 4)):
            res = subprocess.run([sys.executable, "-m", "batchscore", "lookup", "--model-config", str(cfg), "9"],
                                 capture_output=True, text=True, env={"BATCHSCORE_REDIS_URL": url},
                                 cwd=Path(__file__).resolve().parents[3])
            assert res.returncode == code, res.stderr
            assert ("score=9.5" in res.stdout) == (code == 0)
            assert PASSWORD not in res.stdout + res.stderr and PASSWORD[::-1] not in res.stdout + res.stderr


def test_rediss_tls_url(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem")], check=True, capture_output=True)
    port = free_port()
    server = LocalRedis(port=free_port(), password=PASSWORD, args=[
        "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "c.pem"), "--tls-key-file", str(tmp_path / "k.pem"),
        "--tls-ca-cert-file", str(tmp_path / "c.pem"), "--tls-auth-clients", "no"]).start()
    try:
        load(RedisVersions(connect(server.url), NS), "a", 0.5)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'c.pem'}"
        assert ScoreReader(url, prefix="t").get("m", 5).value == 5.5  # type: ignore[union-attr]
        assert RedisVersions(connect(url), NS).current() == 1
    finally:
        server.stop()
