"""Pre-flight for a Redis load: will the new version fit next to the live ones?

The estimate is ``rows x bytes per entity``: measured from ``INFO memory`` around the model's last
load when there is one (recorded as ``bytes_per_entity`` in that version's metadata), otherwise
the listpack size of an entry (key + packed scores + a few header bytes) plus the bucket hash
overhead, with a safety factor. Each master must keep ``used + its share <= fraction x maxmemory``;
a server without ``maxmemory`` cannot be checked (and may be OOM-killed instead), which is a warning,
as is any eviction policy but ``noeviction`` (Redis would evict live scores to make room).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchscore import redis_layout as layout
from batchscore.errors import PublishRefusedError
from batchscore.redis_conn import memory_of, primaries

#: Redis' per-key cost of a small hash (dict entry, robj, key string, listpack header), bytes.
BUCKET_OVERHEAD = 120
SAFETY = 1.5


@dataclass(frozen=True)
class Estimate:
    bytes_per_entity: float
    measured: bool

    def total(self, rows: int) -> int:
        return int(rows * self.bytes_per_entity)


def formula(avg_key_len: float, columns: int) -> float:
    """Listpack bytes of one entity (field + value entries) plus its share of a bucket's overhead."""
    entry = (avg_key_len + 2 + 1) + (4 * columns + 2 + 1)
    return (entry + BUCKET_OVERHEAD / layout.TARGET_ENTRIES_PER_BUCKET) * SAFETY


def estimate(measured_bpe: float | None, avg_key_len: float, columns: int) -> Estimate:
    if measured_bpe and measured_bpe > 0:
        return Estimate(measured_bpe * 1.1, True)
    return Estimate(formula(avg_key_len, columns), False)


def check(client: Any, *, ns: str, rows: int, est: Estimate, fraction: float,
          warn: Callable[[str], None]) -> None:
    """Refuse (before anything is written) when the version would not fit; ``warn`` the risks."""
    nodes = primaries(client)
    need = est.total(rows)
    share = need // max(1, len(nodes)) + 1  # buckets spread evenly over a Cluster's slots
    for node in nodes:
        mem = memory_of(node)
        where = _where(node, len(nodes))
        if mem["policy"] != "noeviction":
            warn(f"{where or 'Redis '}maxmemory-policy is {mem['policy']}: Redis may evict live scores to "
                 "make room; set it to noeviction")
        if mem["max"] == 0:
            warn(f"{where or 'Redis '}has no maxmemory: cannot check that the new version (~{_mb(need)}) fits; "
                 "set maxmemory (and maxmemory-policy noeviction) to have publish refuse a version that would not")
            continue
        limit = int(mem["max"] * fraction)
        if mem["used"] + share > limit:
            raise PublishRefusedError(
                f"{ns}: the new version needs ~{_mb(share)} on {where or 'Redis '}({rows:,} entities x "
                f"{est.bytes_per_entity:.0f} B, {'measured' if est.measured else 'estimated'}) but "
                f"{_mb(mem['used'])} of maxmemory {_mb(mem['max'])} is used (limit {fraction:.0%}); raise "
                "maxmemory, lower outputs.redis.keep_versions and run `batchscore gc`; nothing was written"
            )


def _where(node: Any, n: int) -> str:
    if n == 1:
        return ""
    kw = node.connection_pool.connection_kwargs
    return f"master {kw.get('host')}:{kw.get('port')} "


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
