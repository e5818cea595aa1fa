"""The pre-flight memory estimate against a real redis-server, and its refusals.

Each shape is loaded with the real loader (:func:`make_loader`, in-process) into a fresh
redis-server; ``INFO memory`` ``used_memory`` before and after gives the measured growth, which
the estimate must cover without over-stating it more than 2.5x. Run with ``-s`` for the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.errors import EXIT_BAD_INPUT, PublishRefusedError
from batchscore.redis_conn import connect
from batchscore.sinks import redis_preflight as pf
from batchscore.testing.local_redis import LocalRedis
from batchscore.udfs._redis_load import make_loader

pytestmark = pytest.mark.integration

NS = "t:m"


def keys_of(kind: str, n: int, seed: int = 0) -> pa.Array:
    if kind == "int":  # realistic ids: 9-10 digits, not 0..n
        return pa.array(np.arange(n, dtype=np.int64) * 7 + 100_000_000)
    rng = np.random.default_rng(seed)
    width = {"str40": 40, "str80": 80}[kind]  # 80 > hash-max-listpack-value 64: hashtable by keys
    return pa.array([f"user-{i:08d}-" + "".join(rng.choice(list("abcdef0123456789"), width - 14)) for i in range(n)])


def batch_of(keys: pa.Array, columns: int, seed: int = 1) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    cols = [pa.array(rng.random(len(keys), dtype=np.float32)) for _ in range(columns)]
    return pa.RecordBatch.from_arrays([keys, *cols], names=["k", *[f"s{i}" for i in range(columns)]])


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def load(url: str, batch: pa.RecordBatch, vid: str = "1.abc") -> int:
    """Load ``batch`` as version ``vid`` and return the used_memory growth it caused."""
    r = redis.Redis.from_url(url)
    before = used(r)
    buckets = layout.bucket_count(batch.num_rows)
    out = list(make_loader(url, NS, vid, buckets, batch.schema.names[1:])(iter([batch])))
    assert sum(int(x) for o in out for x in o.column(1).to_pylist()) == batch.num_rows
    time.sleep(0.05)
    grown = used(r) - before
    r.close()
    return grown


def avg_len(keys: pa.Array) -> float:
    """As the publish job measures it: the mean UTF-8 length of the keys cast to strings."""
    return float(pc.mean(pc.utf8_length(keys.cast(pa.string()))).as_py())


# (config, key kind, output columns, entities)
SHAPES = [
    ([], "int", 1, 30_000),
    ([], "int", 8, 30_000),
    ([], "int", 40, 30_000),  # 160-byte values > 64: hashtable
    ([], "str40", 1, 20_000),
    ([], "str40", 8, 50_000),
    ([], "str40", 40, 20_000),
    ([], "str80", 1, 20_000),  # 80-byte keys > 64: hashtable
    (["--hash-max-listpack-entries", "128"], "int", 1, 30_000),  # limit = mean bucket: ~half hashtable
    (["--hash-max-listpack-entries", "128"], "str40", 8, 30_000),
    (["--hash-max-listpack-entries", "64"], "int", 8, 20_000),  # every bucket over the limit
    (["--hash-max-listpack-value", "200"], "int", 40, 30_000),  # 160 B values fit again: listpack
]


@pytest.fixture(scope="module")
def table() -> Iterator[list[str]]:
    rows: list[str] = []
    yield rows
    print(f"\n\npre-flight estimate vs measured used_memory growth (redis-server {_server_version()})")
    print(f"{'server args':<34} {'keys':<6} {'cols':>4} {'entities':>8} {'estimated encoding':<18} "
          f"{'real buckets (ht/lp)':<20} {'measured':>11} {'estimated':>11} {'B/ent m':>7} {'B/ent e':>7} "
          f"{'est/meas':>8}")
    for line in rows:
        print(line)


def _server_version() -> str:
    with LocalRedis() as s:
        return str(redis.Redis.from_url(s.url).info("server")["redis_version"])


@pytest.mark.parametrize(("args", "kind", "columns", "n"), SHAPES,
                         ids=[f"{' '.join(a[-1:]) or 'default'}-{k}-{c}col-{n}" for a, k, c, n in SHAPES])
def test_estimate_covers_measured_growth(table: list[str], args: list[str], kind: str, columns: int, n: int) -> None:
    keys = keys_of(kind, n)
    with LocalRedis(args=args) as server:
        client = connect(server.url)
        est = pf.estimate(client, rows=n, avg_key_len=avg_len(keys), columns=columns)
        assert est.limits_read
        grown = load(server.url, batch_of(keys, columns))
        encodings: dict[str, int] = {}
        for key in client.scan_iter(f"{NS}:v*", count=1000):
            enc = client.object("encoding", key).decode()
            encodings[enc] = encodings.get(enc, 0) + 1
        client.close()
    real = f"{encodings.get('hashtable', 0)}/{encodings.get('listpack', 0)}"
    ratio = est.bytes / grown
    table.append(f"{' '.join(args) or '(defaults 512/64)':<34} {kind:<6} {columns:>4} {n:>8,} "
                 f"{est.encoding:<18} {real:<20} {grown:>11,} {est.bytes:>11,} {grown / n:>7.1f} "
                 f"{est.bytes_per_entity:>7.1f} {ratio:>8.2f}")
    if "hashtable" not in encodings:
        assert est.hashtable_share < 0.01
    if "listpack" not in encodings:
        assert est.hashtable_share > 0.99
    assert est.bytes >= grown, f"under-estimate: {est.describe()} vs measured {grown:,} B"
    assert ratio <= 2.5, f"over-estimate {ratio:.2f}x: {est.describe()} vs measured {grown:,} B"


def test_bucket_sizes_follow_the_binomial_model() -> None:
    """The estimate costs buckets by Binomial(rows, 1/buckets); real keys' crc32 spread matches."""
    for kind, n in (("int", 50_000), ("str40", 20_000)):
        keys = keys_of(kind, n)
        buckets = layout.bucket_count(n)
        counts = np.bincount([layout.bucket_of(k, buckets) for k in keys.cast(pa.string()).to_pylist()],
                             minlength=buckets)
        mean = n / buckets
        assert counts.std() < 1.3 * np.sqrt(mean)
        assert counts.max() <= pf.model(rows=n, avg_key_len=10, columns=1, entries_limit=512,
                                        value_limit=64).max_bucket


# --- the old bug: reusing the live version's measured bytes per entity -----------------------


def test_wider_new_version_is_estimated_from_its_own_shape_and_refused() -> None:
    """Live version: 1 column (listpack, ~13 B/entity measured). New one: 32 columns (128-byte
    values: hashtable, ~20x as much). The old pre-flight took ``measured x 1.1`` and let it through
    into a server that cannot hold it; the new estimate covers what the load really takes."""
    n = 30_000
    keys = keys_of("int", n)
    with LocalRedis() as scratch:  # what the 32-column version really takes
        real_new = load(scratch.url, batch_of(keys, 32), vid="2.def")
    with LocalRedis(args=["--maxmemory-policy", "noeviction"]) as server:
        live_grown = load(server.url, batch_of(keys, 1))
        measured_bpe = round(live_grown / n, 1)  # what publish records as the live bytes_per_entity
        old_estimate = int(n * measured_bpe * 1.1)  # the old estimate(measured_bpe, ...)
        client = connect(server.url)
        now = used(client)
        # Room for the old estimate (and then some), not for the real new version.
        fraction = 0.9
        maxmemory = int((now + (old_estimate + real_new) / 2) / fraction)
        assert now + old_estimate <= int(maxmemory * fraction) < now + real_new
        client.config_set("maxmemory", maxmemory)
        est = pf.estimate(client, rows=n, avg_key_len=avg_len(keys), columns=32)
        print(f"\nlive 1-column version measured {measured_bpe} B/entity -> old estimate {old_estimate:,} B; "
              f"new 32-column version: estimated {est.bytes:,} B ({est.describe()}), really {real_new:,} B; "
              f"room {int(maxmemory * fraction) - now:,} B")
        assert est.bytes > old_estimate * 5
        assert est.bytes >= real_new
        keys_before = client.dbsize()
        warnings: list[str] = []
        with pytest.raises(PublishRefusedError) as exc:
            pf.check(client, ns=NS, rows=n, est=est, fraction=fraction, allow_evicting_policy=False,
                     warn=warnings.append)
        msg = str(exc.value)
        assert exc.value.exit_code == EXIT_BAD_INPUT
        assert "\n" not in msg
        for part in ("the new version needs ~", "30,000 entities", "hashtable", "is used and the limit is",
                     "of maxmemory", "raise maxmemory", "keep_versions", "batchscore gc", "nothing was written",
                     f"127.0.0.1:{server.port}"):
            assert part in msg, (part, msg)
        assert client.dbsize() == keys_before and warnings == []
        # The same server takes a version shaped like the live one.
        pf.check(client, ns=NS, rows=n, est=pf.estimate(client, rows=n, avg_key_len=avg_len(keys), columns=1),
                 fraction=fraction, allow_evicting_policy=False, warn=warnings.append)
        assert warnings == []
        client.close()


# --- eviction policies and maxmemory -----------------------------------------------------------


def _est(client: Any, rows: int = 10_000) -> pf.Estimate:
    return pf.estimate(client, rows=rows, avg_key_len=9, columns=2)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policy_refuses_unless_allowed(policy: str) -> None:
    with LocalRedis(args=["--maxmemory", "50mb", "--maxmemory-policy", policy], password="s3cr3t") as server:
        client = connect(server.url)
        warnings: list[str] = []
        with pytest.raises(PublishRefusedError) as exc:
            pf.check(client, ns=NS, rows=10_000, est=_est(client), fraction=0.9, allow_evicting_policy=False,
                     warn=warnings.append)
        msg = str(exc.value)
        assert exc.value.exit_code == EXIT_BAD_INPUT and "\n" not in msg
        assert f"maxmemory-policy {policy}" in msg
        assert f"127.0.0.1:{server.port}" in msg and "s3cr3t" not in msg
        assert "CONFIG SET maxmemory-policy noeviction" in msg
        assert "outputs.redis.allow_evicting_policy: true" in msg and "nothing was written" in msg
        assert client.dbsize() == 0 and warnings == []

        pf.check(client, ns=NS, rows=10_000, est=_est(client), fraction=0.9, allow_evicting_policy=True,
                 warn=warnings.append)
        assert len(warnings) == 1 and f"maxmemory-policy {policy}" in warnings[0]
        assert "allow_evicting_policy" in warnings[0]
        client.close()


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-ttl"])
def test_noeviction_and_volatile_policies_pass_quietly(policy: str) -> None:
    with LocalRedis(args=["--maxmemory", "50mb", "--maxmemory-policy", policy]) as server:
        client = connect(server.url)
        warnings: list[str] = []
        pf.check(client, ns=NS, rows=10_000, est=_est(client), fraction=0.9, allow_evicting_policy=False,
                 warn=warnings.append)
        assert warnings == []
        client.close()


def test_no_maxmemory_warns() -> None:
    with LocalRedis() as server:
        client = connect(server.url)
        warnings: list[str] = []
        pf.check(client, ns=NS, rows=10_000, est=_est(client), fraction=0.9, allow_evicting_policy=False,
                 warn=warnings.append)
        assert len(warnings) == 1 and "has no maxmemory" in warnings[0] and "set maxmemory" in warnings[0]
        client.close()


def test_not_fitting_is_refused_before_anything_is_written() -> None:
    with LocalRedis(args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]) as server:
        client = connect(server.url)
        est = pf.estimate(client, rows=200_000, avg_key_len=10, columns=4)
        with pytest.raises(PublishRefusedError) as exc:
            pf.check(client, ns=NS, rows=200_000, est=est, fraction=0.9, allow_evicting_policy=False,
                     warn=lambda w: None)
        msg = str(exc.value)
        assert "200,000 entities" in msg and "of maxmemory 4.0 MiB" in msg and "limit is 3.6 MiB" in msg
        assert "raise maxmemory" in msg and "nothing was written" in msg
        assert client.dbsize() == 0
        client.close()


def test_cluster_checks_every_master(redis_cluster: str) -> None:
    from redis.cluster import RedisCluster

    from batchscore.redis_conn import memory_of, primaries

    client = connect(redis_cluster, cluster=True)
    assert isinstance(client, RedisCluster)
    nodes = primaries(client)
    assert len(nodes) == 3
    try:
        est = pf.estimate(client, rows=100_000, avg_key_len=10, columns=2)
        assert est.limits_read
        warnings: list[str] = []
        pf.check(client, ns=NS, rows=100_000, est=est, fraction=0.9, warn=warnings.append)
        assert len(warnings) == 3 and all("has no maxmemory" in w for w in warnings)
        # One master too small for its third (a bit more: skew) of the version: refused, naming it.
        small = nodes[1]
        share = est.bytes / 3
        small.config_set("maxmemory", int((memory_of(small)["used"] + share * 0.8) / 0.9))
        with pytest.raises(PublishRefusedError) as exc:
            pf.check(client, ns=NS, rows=100_000, est=est, fraction=0.9, warn=lambda w: None)
        kw = small.connection_pool.connection_kwargs
        assert f"Redis {kw['host']}:{kw['port']}" in str(exc.value) and "its share of" in str(exc.value)
        small.config_set("maxmemory", int((memory_of(small)["used"] + est.bytes) / 0.9))  # room for all of it
        pf.check(client, ns=NS, rows=100_000, est=est, fraction=0.9, warn=lambda w: None)
        small.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(PublishRefusedError, match="maxmemory-policy allkeys-lru"):
            pf.check(client, ns=NS, rows=100_000, est=est, fraction=0.9, warn=lambda w: None)
    finally:
        for node in nodes:
            node.config_set("maxmemory", 0)
            node.config_set("maxmemory-policy", "noeviction")
        client.close()
