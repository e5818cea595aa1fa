"""Loading one Redis version from Spark executors (``mapInPandas`` over bucketed rows).

Each task receives whole buckets (the frame is repartitioned by bucket and sorted within each
partition), writes each bucket as one ``HSET`` of all its entities, in pipelined batches of
bounded size (bounded memory), and yields ``(bucket, entities)`` counts for the driver's
verification. On a standalone server the commands are encoded straight to RESP bytes (redis-py's
generic per-argument encoder costs more than the server does); on a Cluster a ``ClusterPipeline``
sends each bucket to the master owning its slot. Transient errors (a restarted or briefly
unreachable server) are retried by resending the batch; rewriting the same version is
idempotent, so a retried batch or a retried Spark task is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from batchscore import redis_layout as layout
from batchscore.sinks import crashpoint

#: Entities per pipelined round trip (bounded memory per task).
PIPELINE_ENTITIES = 20_000
RETRIES = 8


def hset_command(key: bytes, fields: list[bytes], value_width: int, values: bytes) -> bytes:
    """RESP of ``HSET key f1 v1 f2 v2 ...`` with fixed-width binary values."""
    head = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * len(fields), len(key), key)
    vhead = b"$%d\r\n" % value_width
    parts = [head]
    for i, f in enumerate(fields):
        parts.append(b"$%d\r\n%s\r\n%s%s\r\n" % (len(f), f, vhead, values[i * value_width : (i + 1) * value_width]))
    return b"".join(parts)


class _RawPipe:
    """Pipelined raw RESP to one standalone server, resent whole on a transient error."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.buf: list[bytes] = []

    def add(self, command: bytes) -> None:
        self.buf.append(command)

    def execute(self) -> None:
        import redis

        payload, n = b"".join(self.buf), len(self.buf)
        for attempt in range(RETRIES + 1):
            conn = self.client.connection_pool.get_connection()
            try:
                conn.send_packed_command([payload])
                for _ in range(n):
                    conn.read_response()
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                conn.disconnect()
                if attempt == RETRIES:
                    raise
                time.sleep(min(2.0, 0.1 * 2**attempt))
            finally:
                self.client.connection_pool.release(conn)
        self.buf = []


class _ClusterPipe:
    def __init__(self, client: Any) -> None:
        self.pipe = client.pipeline(transaction=False)

    def hset(self, key: str, fields: list[Any], values: list[bytes]) -> None:
        flat: list[Any] = [None] * (2 * len(fields))
        flat[0::2], flat[1::2] = fields, values
        self.pipe.execute_command("HSET", key, *flat)

    def execute(self) -> None:
        self.pipe.execute()


def make_loader(url: str, ns: str, version: int, columns: list[str], *,
                cluster: bool = False) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function: input columns ``k`` (string), ``b`` (bucket), ``columns``."""

    def load(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pandas as pd

        from batchscore.redis_conn import client_for

        client = client_for(url, cluster=cluster)
        pipe: Any = _ClusterPipe(client) if cluster else _RawPipe(client)
        counts: dict[int, int] = {}
        pending = 0
        width = 4 * len(columns)
        for pdf in batches:
            if pdf.empty:
                continue
            pdf = pdf.sort_values("b", kind="stable")
            keys = [k.encode() for k in pdf["k"].tolist()]
            buckets = pdf["b"].to_numpy()
            packed = np.ascontiguousarray(pdf[columns].to_numpy(dtype="<f4")).tobytes()
            starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]).tolist()
            for s, e in zip(starts, [*starts[1:], len(keys)], strict=True):
                b = int(buckets[s])
                key = layout.data_key(ns, version, b)
                if cluster:
                    pipe.hset(key, keys[s:e], [packed[i * width : (i + 1) * width] for i in range(s, e)])
                else:
                    pipe.add(hset_command(key.encode(), keys[s:e], width, packed[s * width : e * width]))
                counts[b] = counts.get(b, 0) + (e - s)
                pending += e - s
                if pending >= PIPELINE_ENTITIES:
                    _flush(pipe)
                    pending = 0
        if pending:
            _flush(pipe)
        client.close()
        yield pd.DataFrame({"b": list(counts), "n": list(counts.values())}, dtype="int64")

    return load


def _flush(pipe: Any) -> None:
    pipe.execute()
    crashpoint.reached("during_redis_load", whole_group=True)  # test hook; no-op unless asked
