"""The Redis key layout and value encoding shared by the publisher and the reader.

Stdlib only (the reader is part of the light base install).

Per model namespace ``ns = f"{prefix}:{model}"``:

A version's **identity** is ``"{N}.{epoch}"``: its number (for people) and a random epoch drawn
when it is allocated. Numbers can repeat (a server restarted without persistence, FLUSHALL, a
restore, a lagging failover); identities never do, so every key of a version carries the whole
identity and nothing left over from an earlier life of a number is ever taken for live data.

* data: ``ns:v{N}.{epoch}:b{bucket}`` hashes, field = entity key (UTF-8), value = the scores packed as
  little-endian float32 (4 bytes per output column). ``bucket = crc32(key) % buckets``. Data keys
  carry no hash tag, so one version spreads over every slot of a Redis Cluster.
* control (all share the ``{ns}`` hash tag, so one Lua script can touch them on a Cluster):
  ``{ns}:current`` (the published version's identity), ``{ns}:meta:v{N}.{epoch}`` (hash: number,
  epoch, state, count, buckets, columns, model_version, run_id, digest, created_at, and
  published_at / retired_at; the Delta version is in the publication record), ``{ns}:publication``
  (JSON: the publication readers are served, see
  :mod:`batchscore.sinks.publication`), ``{ns}:seq`` (version counter), ``{ns}:run:{run_id}``
  (the identity a run loaded into, for idempotent retries), ``{ns}:versions`` (sorted set:
  identity -> number, for garbage collection), ``{ns}:lock`` (the publish lock: its fencing
  token), ``{ns}:fence`` (the fencing-token counter), ``{ns}:changed`` (pub/sub channel: a flip
  happened; readers re-read the pointer, the message carries nothing they trust).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence

# Redis keeps a hash in the compact listpack encoding up to 512 fields (hash-max-listpack-entries);
# aim well below so a skewed bucket still fits. Each field written into a listpack is first looked
# up in it (a linear scan), so loading a bucket costs the server O(entries^2): 128 rather than 256
# entries cut redis-server's CPU for a 1M-entity load from 1.03 s to 0.62 s (and halve each HGET's
# scan) for ~0.3 more bytes per entity of per-hash overhead (benchmarks/README.md, Publish).
TARGET_ENTRIES_PER_BUCKET = 128
_DIGITS = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")


def namespace(prefix: str, model: str) -> str:
    return f"{prefix}:{model}"


def bucket_count(rows: int, *, keep: int | None = None) -> int:
    """Number of buckets for a version of ``rows`` entities (at least 1). ``keep``: the served
    version's count, kept while it still gives 0.75x..1.5x :data:`TARGET_ENTRIES_PER_BUCKET` entities
    per bucket, so a publication that changed few entities can start from a server-side copy of the
    served version's buckets (the same keys land in the same buckets)."""
    if keep and 0.75 * TARGET_ENTRIES_PER_BUCKET * keep <= rows <= 1.5 * TARGET_ENTRIES_PER_BUCKET * keep:
        return keep
    return max(1, -(-rows // TARGET_ENTRIES_PER_BUCKET))


def bucket_of(key: str, buckets: int) -> int:
    """Stable bucket of an entity key; equals Spark's ``pmod(crc32(key), buckets)``."""
    return zlib.crc32(key.encode("utf-8")) % buckets


def version_id(number: int, epoch: str) -> str:
    """A version's identity, ``"{number}.{epoch}"``."""
    return f"{number}.{epoch}"


def parse_version_id(raw: bytes | str) -> tuple[int, str]:
    """``"12.9f3a01bc"`` -> ``(12, "9f3a01bc")``; raises ValueError on anything else."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    number, sep, epoch = text.partition(".")
    if not sep or not _DIGITS.fullmatch(number) or not _ALNUM.fullmatch(epoch):
        raise ValueError(f"not a version identity: {text[:40]!r}")
    return int(number), epoch


def data_key(ns: str, vid: str, bucket: int) -> str:
    return f"{data_prefix(ns, vid)}{bucket}"


def data_prefix(ns: str, vid: str) -> str:
    """Every data key of version ``vid`` is this prefix followed by its bucket number."""
    return f"{ns}:v{vid}:b"


def data_pattern(ns: str) -> str:
    """``SCAN MATCH`` pattern of every data key of ``ns`` (for ``gc --orphans``)."""
    return f"{ns}:v*:b*"


def pointer_key(ns: str) -> str:
    return f"{{{ns}}}:current"


def meta_key(ns: str, vid: str) -> str:
    return f"{{{ns}}}:meta:v{vid}"


def publication_key(ns: str) -> str:
    return f"{{{ns}}}:publication"


def fence_key(ns: str) -> str:
    return f"{{{ns}}}:fence"


def seq_key(ns: str) -> str:
    return f"{{{ns}}}:seq"


def run_key(ns: str, run_id: str) -> str:
    return f"{{{ns}}}:run:{run_id}"


def versions_key(ns: str) -> str:
    return f"{{{ns}}}:versions"


def lock_key(ns: str) -> str:
    return f"{{{ns}}}:lock"


def channel(ns: str) -> str:
    return f"{{{ns}}}:changed"


def encode_scores(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def decode_scores(raw: bytes, columns: int) -> tuple[float, ...]:
    if len(raw) != 4 * columns:
        raise ValueError(f"score value has {len(raw)} bytes, expected {4 * columns}")
    return struct.unpack(f"<{columns}f", raw)
