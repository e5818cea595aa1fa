"""The pre-flight's memory model and its decisions, without a server (fake clients).

The model's numbers are checked against a real redis-server in
``tests/integration/publish/test_preflight_memory.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis

from batchscore import redis_layout as layout
from batchscore.errors import EXIT_BAD_INPUT, PublishRefusedError
from batchscore.sinks import redis_preflight as pf

MiB = 2**20


class _Pool:
    def __init__(self, port: int) -> None:
        self.connection_kwargs = {"host": "10.0.0.7", "port": port, "password": "hunter2", "username": "app"}


class FakeRedis:
    """Answers ``INFO memory`` and ``CONFIG GET`` like a standalone server."""

    def __init__(self, *, used: int = 2 * MiB, maxmemory: int = 0, policy: str = "noeviction",
                 config: dict[str, str] | Exception | None = None, port: int = 6379) -> None:
        self.mem = {"used_memory": used, "maxmemory": maxmemory, "maxmemory_policy": policy}
        self.config = {"hash-max-listpack-entries": "512", "hash-max-listpack-value": "64",
                       "hash-max-ziplist-entries": "512", "hash-max-ziplist-value": "64"} if config is None else config
        self.connection_pool = _Pool(port)
        self.writes = 0

    def info(self, section: str) -> dict[str, Any]:
        assert section == "memory"
        return dict(self.mem)

    def config_get(self, pattern: str) -> dict[str, str]:
        assert pattern == "hash-max-*"
        if isinstance(self.config, Exception):
            raise self.config
        return dict(self.config)

    def __getattr__(self, name: str) -> Any:  # any other command would be a write or a surprise
        raise AssertionError(f"the pre-flight called {name}")


def _model(rows: int = 30_000, key: float = 10, columns: int = 1, entries: int = 512, value: int = 64,
           **kw: Any) -> pf.Estimate:
    return pf.model(rows=rows, avg_key_len=key, columns=columns, entries_limit=entries, value_limit=value, **kw)


# --- the API -----------------------------------------------------------------------------------


def test_api_is_keyword_only_and_takes_no_measured_bytes() -> None:
    est = inspect.signature(pf.estimate)
    assert list(est.parameters) == ["client", "rows", "avg_key_len", "columns", "max_key_len"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in est.parameters.items() if n != "client")
    chk = inspect.signature(pf.check)
    assert list(chk.parameters) == ["client", "ns", "rows", "est", "fraction", "allow_evicting_policy", "warn"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in chk.parameters.items() if n != "client")
    assert chk.parameters["allow_evicting_policy"].default is False


# --- the allocation model ----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cls"), [(1, 8), (8, 8), (9, 16), (24, 32), (100, 112), (128, 128), (129, 160),
                                        (164, 192), (1415, 1536), (2048, 2048), (2049, 2560), (20_000, 20_480)])
def test_jemalloc_size_classes(n: int, cls: int) -> None:
    assert pf._je(n) == cls


def test_listpack_and_sds_sizes() -> None:
    assert pf._lp_entry(4) == 1 + 4 + 1
    assert pf._lp_entry(63) == 1 + 63 + 1
    assert pf._lp_entry(64) == 2 + 64 + 1  # 12-bit string length header
    assert pf._lp_entry(200) == 2 + 200 + 2  # back-length over 127
    assert pf._sds(10) == 1 + 10 + 1 and pf._sds(40) == 3 + 40 + 1 and pf._sds(300) == 5 + 300 + 1
    assert [pf._pow2(k) for k in (1, 4, 5, 128, 129)] == [4, 4, 8, 128, 256]


def test_bucket_sizes_are_binomial_around_the_target() -> None:
    rows = 100_000
    buckets = layout.bucket_count(rows)
    dist = pf._bucket_sizes(rows, buckets)
    assert sum(p for _, p in dist) == pytest.approx(1)
    mean = sum(k * p for k, p in dist)
    sd = sum((k - mean) ** 2 * p for k, p in dist) ** 0.5
    assert mean == pytest.approx(rows / buckets, rel=1e-6)
    assert sd == pytest.approx((rows / buckets) ** 0.5, rel=0.01)
    assert pf._bucket_sizes(50, 1) == [(50, 1.0)]


def test_values_over_the_listpack_value_limit_are_hashtables() -> None:
    fits = _model(columns=16)  # 64-byte values: still a listpack
    over = _model(columns=17)  # 68 bytes > 64
    assert fits.encoding == "listpack" and over.encoding == "hashtable"
    assert over.bytes_per_entity > 1.5 * fits.bytes_per_entity
    assert "68-byte values > hash-max-listpack-value 64" in over.describe()
    assert _model(columns=40, value=200).encoding == "listpack"  # a server configured for wide values


def test_keys_over_the_listpack_value_limit_are_hashtables() -> None:
    assert _model(key=60).encoding == "listpack"
    assert _model(key=65).encoding == "hashtable"
    assert _model(key=30, max_key_len=80).encoding == "hashtable"  # one long key converts its bucket
    assert "65-byte keys" in _model(key=65).describe()
    assert "80-byte keys > hash-max-listpack-value 64" in _model(key=30, max_key_len=80).describe()


def test_buckets_over_the_entries_limit_are_hashtables() -> None:
    assert _model(entries=512).hashtable_share == 0
    assert _model(entries=128).hashtable_share == pytest.approx(0.5, abs=0.06)  # the limit at the mean bucket
    assert _model(entries=64).hashtable_share == pytest.approx(1)
    half = _model(entries=128)
    assert _model(entries=512).bytes < half.bytes < _model(entries=64).bytes
    assert "hash-max-listpack-entries 128" in half.describe() and "50% hashtable" in half.describe()
    assert half.max_bucket > layout.TARGET_ENTRIES_PER_BUCKET + 3 * layout.TARGET_ENTRIES_PER_BUCKET ** 0.5


def test_estimate_grows_with_every_dimension() -> None:
    base = _model()
    assert _model(columns=2).bytes > base.bytes
    assert _model(key=20).bytes > base.bytes
    assert _model(rows=60_000).bytes == pytest.approx(2 * base.bytes, rel=0.02)
    assert _model(rows=0).bytes == 0 and _model(rows=1).buckets == 1 and _model(rows=1).bytes > 0
    assert _model(cluster=True).bytes > base.bytes  # Cluster dict entries carry slot-list pointers


def test_old_bug_a_wider_version_is_not_costed_like_the_live_one() -> None:
    """The old pre-flight reused the live version's measured bytes per entity; a 1-column live
    version (~14 B/entity in Redis) said nothing about a 32-column one (hashtable, ~250 B)."""
    live = _model(columns=1)
    new = _model(columns=32)
    old_estimate = new.rows * live.bytes_per_entity * 1.1
    assert new.bytes > 5 * old_estimate


# --- reading the limits ------------------------------------------------------------------------


def test_limits_read_from_redis_7_and_6_2() -> None:
    r7 = FakeRedis(config={"hash-max-listpack-entries": "128", "hash-max-listpack-value": "32",
                           "hash-max-ziplist-entries": "128", "hash-max-ziplist-value": "32"})
    assert pf.listpack_limits(r7) == (128, 32, True)
    r62 = FakeRedis(config={"hash-max-ziplist-entries": "256", "hash-max-ziplist-value": "48"})
    assert pf.listpack_limits(r62) == (256, 48, True)
    est = pf.estimate(r62, rows=10_000, avg_key_len=8, columns=16)  # 64-byte values > 48
    assert (est.entries_limit, est.value_limit, est.encoding) == (256, 48, "hashtable")


@pytest.mark.parametrize("config", [redis.ResponseError("ERR unknown command 'CONFIG'"), {}])
def test_limits_fall_back_to_defaults_and_check_says_so(config: Any) -> None:
    r = FakeRedis(config=config)
    assert pf.listpack_limits(r) == (pf.DEFAULT_LISTPACK_ENTRIES, pf.DEFAULT_LISTPACK_VALUE, False)
    est = pf.estimate(r, rows=1000, avg_key_len=8, columns=1)
    warnings: list[str] = []
    pf.check(FakeRedis(maxmemory=100 * MiB), ns="p:m", rows=1000, est=est, fraction=0.9, warn=warnings.append)
    assert len(warnings) == 1 and "could not read hash-max-listpack-entries" in warnings[0]
    assert "512 entries, 64 bytes" in warnings[0]


# --- the checks --------------------------------------------------------------------------------


def _check(r: FakeRedis, *, rows: int = 30_000, columns: int = 1, allow: bool = False) -> list[str]:
    warnings: list[str] = []
    est = pf.estimate(r, rows=rows, avg_key_len=9, columns=columns)
    pf.check(r, ns="p:m", rows=rows, est=est, fraction=0.9, allow_evicting_policy=allow, warn=warnings.append)
    return warnings


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_refuse(policy: str) -> None:
    with pytest.raises(PublishRefusedError) as exc:
        _check(FakeRedis(maxmemory=1024 * MiB, policy=policy))
    msg = str(exc.value)
    assert exc.value.exit_code == EXIT_BAD_INPUT and "\n" not in msg
    assert msg.startswith(f"p:m: Redis 10.0.0.7:6379 has maxmemory-policy {policy}")
    assert "CONFIG SET maxmemory-policy noeviction" in msg
    assert "set outputs.redis.allow_evicting_policy: true to accept that Redis may evict published scores" in msg
    assert "nothing was written" in msg and "hunter2" not in msg and "app@" not in msg


def test_allkeys_policy_allowed_is_a_warning() -> None:
    warnings = _check(FakeRedis(maxmemory=1024 * MiB, policy="allkeys-lru"), allow=True)
    assert len(warnings) == 1 and "maxmemory-policy allkeys-lru" in warnings[0]
    assert "allow_evicting_policy: true" in warnings[0]


def test_allkeys_policy_refuses_even_without_maxmemory() -> None:
    """No maxmemory evicts nothing today, but the policy says published scores may be evicted as
    soon as one is set: refused too (the fix is one CONFIG SET)."""
    with pytest.raises(PublishRefusedError, match="maxmemory-policy allkeys-lru"):
        _check(FakeRedis(maxmemory=0, policy="allkeys-lru"))


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"])
def test_safe_policies_are_quiet(policy: str) -> None:
    assert _check(FakeRedis(maxmemory=1024 * MiB, policy=policy)) == []


def test_unknown_policy_warns() -> None:
    warnings = _check(FakeRedis(maxmemory=1024 * MiB, policy="some-future-policy"))
    assert len(warnings) == 1 and "some-future-policy" in warnings[0] and "noeviction" in warnings[0]


def test_no_maxmemory_warns() -> None:
    warnings = _check(FakeRedis(maxmemory=0))
    assert len(warnings) == 1 and "10.0.0.7:6379 has no maxmemory" in warnings[0]
    assert "set maxmemory" in warnings[0]


def test_not_fitting_refuses_naming_used_limit_and_fix() -> None:
    r = FakeRedis(used=89 * MiB, maxmemory=100 * MiB)
    assert _check(r, rows=30_000, columns=1) == []  # ~0.7 MiB of listpacks fits under the 90 MiB limit
    with pytest.raises(PublishRefusedError) as exc:
        _check(r, rows=30_000, columns=40)  # ~8 MiB of hashtables
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.exit_code == EXIT_BAD_INPUT
    for part in ("p:m: the new version needs ~", "on Redis 10.0.0.7:6379", "30,000 entities x ~", "hashtable",
                 "89.0 MiB is used and the limit is 90.0 MiB (90% of maxmemory 100.0 MiB)", "raise maxmemory",
                 "outputs.redis.keep_versions", "batchscore gc", "nothing was written"):
        assert part in msg, (part, msg)


def test_cluster_share_covers_the_skew_of_whole_buckets() -> None:
    need = 300 * MiB
    assert pf._share(need, 10_000, 1.0) == need
    third = pf._share(need, 10_000, 1 / 3)
    assert need / 3 < third < need / 3 * 1.1
    assert pf._share(need, 2, 1 / 3) == pytest.approx(need, rel=1e-6)  # two buckets may both land on it
