"""Loading one Redis version from Spark executors (``mapInArrow`` over the staged rows).

Each task reads its fragment of the staged Parquet files (one per core, no shuffle; the caller
feeds the loader Arrow batches of key + score columns), gathers its rows into chunks of
:data:`LOAD_CHUNK_ROWS` (bounded memory), sorts each chunk by bucket and
writes each bucket's rows of the chunk as one ``HSET``, pipelined in rounds of
:data:`PIPELINE_ENTITIES`; it yields ``(bucket, entities)`` counts for the driver's verification.
A bucket is filled by a few ``HSET``s (one per chunk that holds some of its entities) rather than
one: grouping whole buckets into one task needs a shuffle and saves
the server nothing, since its cost is the listpack scan per field, which depends on the bucket's
final size, not on how many commands fill it (``benchmarks/README.md``). On a standalone server the
commands are encoded straight to RESP bytes, the fields of a whole chunk at once with Arrow compute
(:func:`resp_fields`: no Python work per entity; redis-py's generic per-argument encoder costs more
than the server does). On a Cluster the same bytes go to the master owning each bucket's slot, every
master's share of a round sent before any reply is read, so the shards load in parallel
(:class:`_ClusterRawPipe`, which also follows ``MOVED``/``ASK`` redirections). Transient errors
(a restarted or briefly unreachable server) are retried by resending the batch; rewriting the same version is
idempotent, so a retried batch or a retried Spark task is safe."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from batchscore import redis_layout as layout
from batchscore.testing import crashpoint

#: Entities per pipelined round trip (bounded memory per task).
PIPELINE_ENTITIES = 20_000
#: Rows a task sorts by bucket at a time: the larger, the fewer HSETs per bucket (bounded memory).
LOAD_CHUNK_ROWS = 262_144
RETRIES = 8


class _RawPipe:
    """Pipelined raw RESP to one standalone server, resent whole on a transient error."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.buf: list[Any] = []  # bytes-like pieces
        self.commands = 0

    def add(self, *parts: Any) -> None:
        """One command, given as the bytes-like pieces of its RESP."""
        self.buf.extend(parts)
        self.commands += 1

    def execute(self) -> None:
        import redis

        payload, n = b"".join(self.buf), self.commands
        for attempt in range(RETRIES + 1):
            conn = self.client.connection_pool.get_connection()
            try:
                conn.send_packed_command([payload])
                for _ in range(n):
                    conn.read_response()
                break
            except redis.ResponseError:
                conn.disconnect()  # replies of the rest of the batch are still on the wire
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                conn.disconnect()
                if attempt == RETRIES:
                    raise
                time.sleep(min(2.0, 0.1 * 2**attempt))
            finally:
                self.client.connection_pool.release(conn)
        self.buf, self.commands = [], 0


class _ClusterRawPipe:
    """Pipelined raw RESP to every master of a Cluster at once: each command goes to the master
    owning its key's slot; a round is sent to all masters before any reply is read, so the shards
    work in parallel. ``MOVED`` (slots resharded meanwhile) and ``ASK`` (a slot being migrated)
    replies and a lost connection resend just the affected commands, to the node the reply names
    (``ASKING`` first for ``ASK``) or to the owner after a topology refresh; rewriting the same
    fields is idempotent."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.commands: list[tuple[int, bytes]] = []  # (slot, whole RESP of one command)
        self._slot_cache: dict[str, int] = {}
        self.redirected = {"MOVED": 0, "ASK": 0}

    def slot(self, key: str) -> int:
        from redis.crc import key_slot

        s = self._slot_cache.get(key)
        if s is None:
            s = self._slot_cache[key] = key_slot(key.encode())
        return s

    def add(self, key: str, *parts: Any) -> None:
        self.commands.append((self.slot(key), b"".join(parts)))

    def execute(self) -> None:
        import redis

        todo: list[tuple[Any, bytes, bool]] = [(None, cmd, False) for _, cmd in self.commands]
        slots = [s for s, _ in self.commands]
        attempt = 0
        while todo:
            by_node: dict[str, tuple[Any, list[int]]] = {}
            for i, (target, _, _) in enumerate(todo):
                node = target or self.client.nodes_manager.get_node_from_slot(slots[i])
                by_node.setdefault(node.name, (node, []))[1].append(i)
            sent = []
            retry: list[int] = []
            moved: dict[int, tuple[Any, bool]] = {}
            first_error: BaseException | None = None
            for node, idx in by_node.values():  # send every master its share before reading any reply
                pool = self.client.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                try:
                    conn.send_packed_command([(b"*1\r\n$6\r\nASKING\r\n" if todo[i][2] else b"") + todo[i][1]
                                              for i in idx])
                    sent.append((pool, conn, idx))
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    conn.disconnect()
                    pool.release(conn)
                    retry.extend(idx)
            for pool, conn, idx in sent:
                try:
                    for i in idx:
                        try:
                            if todo[i][2]:
                                conn.read_response()  # +OK of ASKING
                            conn.read_response()
                        except redis.exceptions.AskError as exc:
                            moved[i] = (self._node(exc.host, exc.port), True)
                        except redis.exceptions.MovedError as exc:
                            moved[i] = (self._node(exc.host, exc.port), False)
                        except (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError):
                            retry.append(i)
                        except redis.ResponseError as exc:
                            first_error = first_error or exc
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    conn.disconnect()
                    retry.extend(i for i in idx if i not in moved)
                finally:
                    pool.release(conn)
            if first_error is not None:
                raise first_error
            for _, ask in moved.values():
                self.redirected["ASK" if ask else "MOVED"] += 1
            if not retry and not moved:
                break
            attempt += 1
            if attempt > RETRIES:
                raise redis.ConnectionError(f"{len(retry) + len(moved)} HSET(s) still not accepted by the Cluster "
                                            f"after {RETRIES} retries")
            if retry or any(not ask for _, ask in moved.values()):
                if retry:
                    time.sleep(min(2.0, 0.1 * 2**attempt))
                self.client.nodes_manager.initialize()  # the slot map changed (reshard, failover)
            todo_next = [(None, todo[i][1], False) for i in retry]
            slots_next = [slots[i] for i in retry]
            for i, (node, ask) in moved.items():
                todo_next.append((node, todo[i][1], ask))
                slots_next.append(slots[i])
            todo, slots = todo_next, slots_next
        self.commands = []

    def _node(self, host: str, port: int) -> Any:
        node = self.client.get_node(host=host, port=port)
        if node is None:
            self.client.nodes_manager.initialize()
            node = self.client.get_node(host=host, port=port)
        if node is None:
            import redis

            raise redis.ConnectionError(f"the Cluster redirected a write to {host}:{port}, a node it does not list")
        return node


_CRC_TABLE: Any = None


def bucket_ids(keys: Any, buckets: int) -> Any:
    """``crc32(key) % buckets`` for every key of an Arrow string array, vectorized over the rows
    (one numpy step per byte position of the longest key); equals :func:`layout.bucket_of`."""
    import numpy as np
    import pyarrow as pa

    global _CRC_TABLE
    if _CRC_TABLE is None:
        t = np.arange(256, dtype=np.uint32)
        for _ in range(8):
            t = np.where(t & 1, (t >> 1) ^ np.uint32(0xEDB88320), t >> 1).astype(np.uint32)
        _CRC_TABLE = t
    kb = keys.cast(pa.binary())
    offsets = np.frombuffer(kb.buffers()[1], dtype=np.int32, count=len(kb) + 1, offset=4 * kb.offset)
    data = np.frombuffer(kb.buffers()[2], dtype=np.uint8) if kb.buffers()[2] is not None else np.zeros(1, np.uint8)
    starts, lens = offsets[:-1], np.diff(offsets)
    crc = np.full(len(kb), 0xFFFFFFFF, dtype=np.uint32)
    shortest = int(lens.min(initial=0))
    for j in range(int(lens.max(initial=0))):
        if j < shortest:  # every key has a byte j
            crc = _CRC_TABLE[(crc ^ data[starts + j]) & 0xFF] ^ (crc >> 8)
        else:
            live = np.flatnonzero(lens > j)
            c = crc[live]
            crc[live] = _CRC_TABLE[(c ^ data[starts[live] + j]) & 0xFF] ^ (c >> 8)
    return ((crc ^ np.uint32(0xFFFFFFFF)) % np.uint32(buckets)).astype(np.int64)


def resp_fields(keys: Any, packed: Any, value_width: int) -> tuple[Any, Any]:
    """The RESP of every ``field value`` pair of an Arrow batch, back to back in one buffer.

    ``keys``: an Arrow string/binary array; ``packed``: a uint8 numpy array of ``len(keys) *
    value_width`` bytes (the fixed-width values, row after row). Returns ``(data, offsets)``: the
    bytes of rows ``s..e`` are ``data[offsets[s]:offsets[e]]``, so a bucket's fields are one slice.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kb = keys.cast(pa.binary())
    lens = pc.cast(pc.cast(pc.binary_length(kb), pa.string()), pa.binary())
    values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(value_width), len(kb), [None, pa.py_buffer(packed)])
    joined = pc.binary_join_element_wise(
        b"$", lens, b"\r\n", kb, b"\r\n$%d\r\n" % value_width, values.cast(pa.binary()), b"\r\n", b""
    )
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=4 * joined.offset)
    return memoryview(joined.buffers()[2]), offsets


def _chunks(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Arrow batches gathered into batches of at least ``rows`` rows (the last one shorter)."""
    import pyarrow as pa

    def joined(buf: list[Any]) -> Any:
        return buf[0] if len(buf) == 1 else pa.Table.from_batches(buf).combine_chunks().to_batches()[0]

    buf: list[Any] = []
    have = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        buf.append(batch)
        have += batch.num_rows
        if have >= rows:
            yield joined(buf)
            buf, have = [], 0
    if buf:
        yield joined(buf)


def make_loader(
    url: str,
    ns: str,
    vid: str,
    buckets_total: int,
    columns: list[str],
    *,
    cluster: bool = False,
    fence: tuple[str, str] | None = None,
    chunk_rows: int = LOAD_CHUNK_ROWS,
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The function a task runs over Arrow batches of the key (column 0, string or integer) and
    ``columns``; yields one batch of ``(b, n)``: entities written per bucket into version ``vid``.

    ``fence``: ``(lock key, token)``. Before its first write and before every pipelined round the
    task checks that the publish lock still holds ``token`` and stops with
    :class:`~batchscore.errors.FencedError` when it does not, so a publisher that lost its lock
    (paused past the TTL, or a Redis restarted without persistence) writes at most one more round,
    into its own never-flipped version."""

    def load(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pyarrow as pa

        from batchscore.redis_conn import client_for

        client = client_for(url, cluster=cluster)
        pipe: Any = _ClusterRawPipe(client) if cluster else _RawPipe(client)
        check_fence(client, fence)
        counts: dict[int, int] = {}
        pending = 0
        width = 4 * len(columns)
        for batch in _chunks(batches, chunk_rows):
            batch = batch.set_column(0, "k", batch.column(0).cast(pa.string()))  # as Spark casts it
            buckets = bucket_ids(batch.column(0), buckets_total)
            order = np.argsort(buckets, kind="stable")
            batch, buckets = batch.take(pa.array(order)), buckets[order]
            scores = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in columns])
            packed = np.ascontiguousarray(scores, dtype="<f4").view(np.uint8).reshape(-1)
            starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]).tolist()
            ends = [*starts[1:], len(buckets)]
            data, offsets = resp_fields(batch.column("k"), packed, width)
            for s, e in zip(starts, ends, strict=True):
                b = int(buckets[s])
                key = layout.data_key(ns, vid, b)
                kb = key.encode()
                head = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * (e - s), len(kb), kb)
                if cluster:
                    pipe.add(key, head, data[offsets[s] : offsets[e]])
                else:
                    pipe.add(head, data[offsets[s] : offsets[e]])
                counts[b] = counts.get(b, 0) + (e - s)
                pending += e - s
                if pending >= PIPELINE_ENTITIES:
                    _flush(pipe)
                    pending = 0
                    check_fence(client, fence)
        if pending:
            _flush(pipe)
        if cluster and any(pipe.redirected.values()):
            logging.getLogger(__name__).warning(
                "the Cluster's slots moved during this load: followed %d MOVED and %d ASK redirection(s)",
                pipe.redirected["MOVED"], pipe.redirected["ASK"])
        client.close()
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(counts), pa.int64()), pa.array(list(counts.values()), pa.int64())], names=["b", "n"]
        )

    return load


def check_fence(client: Any, fence: tuple[str, str] | None) -> None:
    """Raise :class:`FencedError` unless the lock key ``fence[0]`` still holds token ``fence[1]``."""
    if fence is None:
        return
    from batchscore.errors import FencedError

    held = client.get(fence[0])
    if held is None or (held.decode() if isinstance(held, bytes) else str(held)) != fence[1]:
        raise FencedError(
            f"the publish lock {fence[0]} no longer holds this run's token (it expired or another "
            "publisher took it over); this load stopped before its next write"
        )


def _flush(pipe: Any) -> None:
    import redis

    try:
        pipe.execute()
    except redis.ResponseError as exc:
        if not isinstance(exc, redis.exceptions.OutOfMemoryError) and "maxmemory" not in str(exc):
            raise
        from batchscore.errors import PublishRefusedError

        raise PublishRefusedError(
            "Redis ran out of memory (maxmemory) while loading the new version; the partial version is removed and "
            "the served one is untouched: raise maxmemory or lower outputs.redis.keep_versions and run `batchscore gc`"
        ) from None
    crashpoint.reached("during_redis_load", whole_group=True)  # test hook; no-op unless asked
