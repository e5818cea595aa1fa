"""What the readers must never do, on real redis-server processes: take a version from a pub/sub
message, lose their flip listener to a bad message or an outage, serve metadata of another life
of a version number, crash on a pointer they cannot read, refuse to subscribe on a Cluster, or
stall a request for seconds when Redis is down.

Versions are written with plain redis-py commands in the ``"{N}.{epoch}"`` layout
(:func:`write_version`); nothing here needs Spark or the publisher."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from batchscore import redis_layout as layout
from batchscore.reader import AsyncScoreReader, PointerError, Score, ScoreReader, _Cache
from batchscore.testing.local_redis import LocalRedis, free_port

from . import conftest

pytestmark = pytest.mark.integration
NS = "t:m"
KEYS = [str(k) for k in range(300)]


def write_version(r: Any, ns: str, number: int, epoch: str, score: Callable[[int], Sequence[float]], *,
                  keys: Sequence[str] = KEYS, **kw: Any) -> str:
    return conftest.write_version(r, ns, number, epoch, score, keys=keys, **kw)


def plus(offset: float) -> Callable[[int], list[float]]:
    return lambda k: [k + offset]


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def async_wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def vid_of(reader: ScoreReader, key: int = 1) -> str | None:
    got = reader.get("m", key)
    return got.version_id if got else None


def test_an_announcement_only_invalidates_the_pointer_is_read_from_the_readers_own_db(redis_server: Any) -> None:
    base = redis_server.url.rsplit("/", 1)[0]
    r0, r1 = redis.Redis.from_url(f"{base}/0"), redis.Redis.from_url(f"{base}/1")
    write_version(r0, NS, 1, "aaaa", plus(0.5), announce=False)
    # On db 0 the identity about to be announced (for db 1) exists half-loaded and never flipped.
    write_version(r0, NS, 2, "bbbb", plus(0.25), keys=KEYS[:100], flip=False, state="loading")
    write_version(r1, NS, 1, "cccc", plus(0.75), announce=False)
    reader0 = ScoreReader(f"{base}/0", prefix="t", pointer_ttl=60, subscribe=True)
    reader1 = ScoreReader(f"{base}/1", prefix="t", pointer_ttl=60, subscribe=True)
    try:
        assert reader0.listener_alive and reader1.listener_alive
        assert vid_of(reader0) == "1.aaaa" and vid_of(reader1) == "1.cccc"
        write_version(r1, NS, 2, "bbbb", plus(0.125))  # flipped and announced on db 1 only
        wait_until(lambda: vid_of(reader1) == "2.bbbb", what="the db-1 reader to follow its flip")
        time.sleep(0.3)  # the same broadcast reached the db-0 reader's listener
        r0.config_resetstat()
        got = reader0.get("m", 1)
        assert got == Score({"score": 1.5}, "mv", 1, "1.aaaa")  # not the half-loaded 2.bbbb of db 0
        stats = r0.info("commandstats")
        reads = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "mget"))
        assert reads == 1  # it did re-read its own pointer (with the split record: one MGET)
        many = reader0.get_many("m", KEYS)
        assert {s.version_id for s in many.values()} == {"1.aaaa"}  # type: ignore[union-attr]
        assert reader0.current_version("m") == 1 and reader1.current_version("m") == 2
    finally:
        reader0.close()
        reader1.close()


def _subscriber_ids(r: redis.Redis) -> set[str]:
    return {c["id"] for c in r.client_list(_type="pubsub")}


def _malformed_announcements(r: redis.Redis) -> None:
    """Announcements no reader can parse; each must be shrugged off on the same connection."""
    before = _subscriber_ids(r)
    assert before
    r.publish(b"{t:\xff\xfe}:changed", b"\xff\x00")  # channel and payload not UTF-8
    r.publish(layout.channel(NS), b"\xff\xfe\x00 not an identity")
    r.publish(layout.channel(NS), b"")
    r.publish("{t:}:changed", "3")
    r.publish("{t:m}}}:changed", "garbage")
    time.sleep(0.2)
    assert _subscriber_ids(r) == before  # no listener died or reconnected over them


def test_sync_listener_survives_malformed_messages_and_a_redis_restart() -> None:
    server = LocalRedis().start()
    reader = None
    try:
        r = redis.Redis.from_url(server.url)
        write_version(r, NS, 1, "aaaa", plus(0.5), announce=False)
        reader = ScoreReader(server.url, prefix="t", pointer_ttl=60, subscribe=True)
        assert reader.listener_alive and vid_of(reader) == "1.aaaa"
        _malformed_announcements(r)
        assert reader.listener_alive
        write_version(r, NS, 2, "bbbb", plus(0.25))
        wait_until(lambda: vid_of(reader) == "2.bbbb", 1.0, "the flip after malformed messages")
        time.sleep(0.2)
        assert vid_of(reader) == "2.bbbb"  # cached now, for 60 s

        server.stop()  # an outage: the listener notices, keeps trying, and must come back
        wait_until(lambda: not reader.listener_alive, 3.0, "the listener to notice the outage")
        time.sleep(3)
        assert reader._listener is not None and reader._listener.thread.is_alive()
        server = LocalRedis(port=server.port).start()  # same port, no persistence: empty
        wait_until(lambda: reader.listener_alive, 5.0, "the listener to resubscribe")
        r = redis.Redis.from_url(server.url)
        # Number 1 again, another epoch, flipped while the listener was away (no announcement):
        # the resubscribe dropped every cached pointer, so the 60 s pointer_ttl does not hide it.
        write_version(r, NS, 1, "cccc", plus(0.75), announce=False)
        assert reader.get("m", 1) == Score({"score": 1.75}, "mv", 1, "1.cccc")
        _malformed_announcements(r)
        write_version(r, NS, 2, "dddd", plus(0.125))
        wait_until(lambda: vid_of(reader) == "2.dddd", 1.0, "a flip announced after the restart")
        assert reader.get("m", 1).value == 1.125  # type: ignore[union-attr]
    finally:
        if reader is not None:
            reader.close()
        server.stop()


def test_async_listener_survives_malformed_messages_and_a_redis_restart() -> None:
    server = LocalRedis().start()

    async def vid(ar: AsyncScoreReader) -> str | None:
        got = await ar.get("m", 1)
        return got.version_id if got else None

    async def scenario() -> None:
        nonlocal server
        r = redis.Redis.from_url(server.url)
        write_version(r, NS, 1, "aaaa", plus(0.5), announce=False)
        async with AsyncScoreReader(server.url, prefix="t", pointer_ttl=60, subscribe=True) as ar:
            assert ar.listener_alive and await vid(ar) == "1.aaaa"
            await asyncio.to_thread(_malformed_announcements, r)
            assert ar.listener_alive
            write_version(r, NS, 2, "bbbb", plus(0.25))

            async def flipped(want: str) -> bool:
                return await vid(ar) == want

            await async_wait_until(lambda: flipped("2.bbbb"), 1.0, "the flip after malformed messages")
            await asyncio.sleep(0.2)
            assert await vid(ar) == "2.bbbb"  # cached now, for 60 s
            await asyncio.to_thread(server.stop)

            async def down() -> bool:
                return not ar.listener_alive

            await async_wait_until(down, 3.0, "the listener to notice the outage")
            await asyncio.sleep(3)
            server = await asyncio.to_thread(LocalRedis(port=server.port).start)

            async def up() -> bool:
                return ar.listener_alive

            await async_wait_until(up, 5.0, "the listener to resubscribe")
            r = redis.Redis.from_url(server.url)
            write_version(r, NS, 1, "cccc", plus(0.75), announce=False)
            assert await ar.get("m", 1) == Score({"score": 1.75}, "mv", 1, "1.cccc")
            write_version(r, NS, 2, "dddd", plus(0.125))
            await async_wait_until(lambda: flipped("2.dddd"), 1.0, "a flip announced after the restart")

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_while_the_listener_is_cut_off_missed_flips_are_not_hidden_by_the_pointer_ttl(redis_server: Any) -> None:
    """Only the subscriptions break (lookups keep working) and cannot come back for a while: a
    flip announced meanwhile reaches nobody, yet the 60 s pointer_ttl must not hide it."""
    r = redis.Redis.from_url(redis_server.url)
    write_version(r, NS, 1, "aaaa", plus(0.5), announce=False)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True)

    async def scenario() -> None:
        async with AsyncScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True) as ar:

            async def avid() -> str | None:
                return (await ar.get("m", 1)).version_id  # type: ignore[union-attr]

            assert reader.listener_alive and ar.listener_alive
            assert vid_of(reader) == "1.aaaa" and await avid() == "1.aaaa"
            r.execute_command("ACL", "SETUSER", "default", "-psubscribe")  # no subscribing from now on
            assert r.client_kill_filter(_type="pubsub") == 2  # cut both listeners off

            async def cut() -> bool:
                return not reader.listener_alive and not ar.listener_alive

            await async_wait_until(cut, 3.0, "both listeners to notice")
            assert vid_of(reader) == "1.aaaa" and await avid() == "1.aaaa"  # lookups still work
            write_version(r, NS, 2, "bbbb", plus(0.25))  # announced to nobody

            async def seen(want: str) -> bool:
                return vid_of(reader) == want and await avid() == want

            t0 = time.monotonic()
            await async_wait_until(lambda: seen("2.bbbb"), 2.5, "the readers to re-read their pointer")
            assert time.monotonic() - t0 < 2.5  # the cut-off TTL (1 s), not pointer_ttl (60 s)
            assert not reader.listener_alive and not ar.listener_alive  # still cut off
            r.execute_command("ACL", "SETUSER", "default", "+psubscribe")

            async def back() -> bool:
                return reader.listener_alive and ar.listener_alive

            await async_wait_until(back, 5.0, "both listeners to resubscribe")
            write_version(r, NS, 3, "cccc", plus(0.75))
            await async_wait_until(lambda: seen("3.cccc"), 1.0, "a flip announced after the resubscribe")

    try:
        asyncio.run(scenario())
    finally:
        r.execute_command("ACL", "SETUSER", "default", "+psubscribe")
        reader.close()


def test_a_silent_resubscribe_drops_every_cached_pointer(redis_server: Any) -> None:
    """The server drops the subscription and redis-py reconnects and resubscribes by itself
    (inside one read): a flip in between was missed, so the new subscription must invalidate."""
    r = redis.Redis.from_url(redis_server.url)
    write_version(r, NS, 1, "aaaa", plus(0.5), announce=False)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True)

    def subscribers() -> int:
        return sum(1 for c in r.client_list(_type="pubsub") if int(c.get("psub", 0)) == 1)

    async def scenario() -> None:
        async with AsyncScoreReader(redis_server.url, prefix="t", pointer_ttl=60, subscribe=True) as ar:
            assert vid_of(reader) == "1.aaaa" and (await ar.get("m", 1)).version_id == "1.aaaa"  # type: ignore[union-attr]
            for epoch in ("bbbb", "cccc", "dddd"):
                r.client_kill_filter(_type="pubsub")
                write_version(r, NS, 2, epoch, plus(0.25), announce=False)  # a flip nobody hears of
                await asyncio.to_thread(wait_until, lambda: subscribers() == 2, 5.0, "both to resubscribe")
                await asyncio.sleep(0.2)
                assert vid_of(reader) == f"2.{epoch}"
                assert (await ar.get("m", 1)).version_id == f"2.{epoch}"  # type: ignore[union-attr]

    try:
        asyncio.run(scenario())
    finally:
        reader.close()


def test_a_pointer_read_racing_an_invalidation_is_not_cached() -> None:
    """A GET in flight when a flip announcement lands may return the old identity: it is served
    once but not cached, or it would pin the old version for the whole pointer_ttl."""
    cache = _Cache("t", pointer_ttl=60)
    before = cache.generation
    cache.invalidate("t:m")  # the listener, while the GET was in flight
    assert cache.remember("t:m", b"1.aaaa", before) == ("1.aaaa", 1)
    assert cache.fresh("t:m") == (False, None)
    assert cache.remember("t:m", b"2.bbbb", cache.generation) == ("2.bbbb", 2)
    assert cache.fresh("t:m") == (True, ("2.bbbb", 2))


def test_metadata_is_cached_by_identity_when_a_flushall_reuses_the_number(redis_server: Any) -> None:
    r = redis.Redis.from_url(redis_server.url)
    write_version(r, NS, 1, "aaaa", plus(0.5), model_version="m-1", announce=False)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=0.05)

    async def alookups(ar: AsyncScoreReader) -> tuple[Score | None, dict[str, Score | None]]:
        return await ar.get("m", 7), await ar.get_many("m", ["7", "8"])

    async def scenario() -> None:
        async with AsyncScoreReader(redis_server.url, prefix="t", pointer_ttl=0.05) as ar:
            assert (await alookups(ar))[0] == Score({"score": 7.5}, "m-1", 1, "1.aaaa")
            assert reader.get("m", 7) == Score({"score": 7.5}, "m-1", 1, "1.aaaa")
            # A restart without persistence (here FLUSHALL): number 1 is reused by another epoch
            # with other columns and another model version.
            r.flushall()
            write_version(r, NS, 1, "bbbb", lambda k: [k * 2.0, -k], columns=("p", "q"), model_version="m-2",
                          announce=False)
            await asyncio.sleep(0.1)
            new = Score({"p": 14.0, "q": -7.0}, "m-2", 1, "1.bbbb")
            one, many = await alookups(ar)
            assert one == new and many["7"] == new and many["8"] == Score({"p": 16.0, "q": -8.0}, "m-2", 1, "1.bbbb")
            assert reader.get("m", 7) == new
            assert reader.get_many("m", ["7"]) == {"7": new}

    asyncio.run(scenario())
    # Metadata whose epoch disagrees with the pointer is another life's: treated as missing.
    write_version(r, NS, 3, "cccc", plus(0.25), meta_epoch="zzzz", announce=False)
    time.sleep(0.1)
    with pytest.raises(LookupError, match="3.cccc"):
        reader.get("m", 7)
    with pytest.raises(LookupError, match="3.cccc"):
        reader.get_many("m", ["7"])
    r.hset(layout.meta_key(NS, "3.cccc"), "epoch", "cccc")  # repaired: nothing wrong was cached
    assert reader.get("m", 7) == Score({"score": 7.25}, "mv", 3, "3.cccc")
    r.delete(layout.meta_key(NS, "3.cccc"))
    reader.invalidate()
    assert reader.get("m", 7) == Score({"score": 7.25}, "mv", 3, "3.cccc")  # cached by identity for good
    reader.close()


def test_a_legacy_or_garbage_pointer_is_a_clear_error(redis_server: Any) -> None:
    r = redis.Redis.from_url(redis_server.url)
    reader = ScoreReader(redis_server.url, prefix="t", pointer_ttl=60)
    for raw, match in ((b"3", "bare version number from the old key layout"),
                       (b"\xff\x00junk", "does not hold a version identity"),
                       (b"3.", "does not hold a version identity"),
                       (b"x.abc", "does not hold a version identity")):
        r.set(layout.pointer_key(NS), raw)
        for call in (lambda: reader.get("m", 1), lambda: reader.get_many("m", ["1"]),
                     lambda: reader.current_version("m")):
            with pytest.raises(PointerError, match=match) as exc:
                call()
            assert isinstance(exc.value, LookupError) and isinstance(exc.value, ValueError)
            assert "{t:m}:current" in str(exc.value)

    async def aread() -> None:
        async with AsyncScoreReader(redis_server.url, prefix="t") as ar:
            r.set(layout.pointer_key(NS), b"7")
            with pytest.raises(PointerError, match="old key layout"):
                await ar.get("m", 1)
            write_version(r, NS, 7, "e7e7", plus(0.5), announce=False)
            assert (await ar.get("m", 1)).version_id == "7.e7e7"  # type: ignore[union-attr]

    asyncio.run(aread())
    assert reader.get("m", 1) == Score({"score": 1.5}, "mv", 7, "7.e7e7")  # nothing unreadable was cached
    reader.close()


def test_cluster_readers_subscribe_through_a_node(redis_cluster: str) -> None:
    rc = RedisCluster.from_url(redis_cluster)
    write_version(rc, NS, 1, "aaaa", plus(0.5), announce=False)
    sync = ScoreReader(redis_cluster, prefix="t", pointer_ttl=60, cluster=True, subscribe=True)

    async def avid(ar: AsyncScoreReader) -> str | None:
        got = await ar.get("m", 1)
        return got.version_id if got else None

    async def scenario() -> None:
        async with AsyncScoreReader(redis_cluster, prefix="t", pointer_ttl=60, cluster=True, subscribe=True) as ar:
            assert ar.listener_alive
            assert await avid(ar) == "1.aaaa"
            many = await ar.get_many("m", KEYS)
            assert [many[k].value for k in KEYS] == [int(k) + 0.5 for k in KEYS]  # type: ignore[union-attr]
            await asyncio.to_thread(write_version, rc, NS, 2, "bbbb", plus(0.25))

            async def flipped() -> bool:
                return await avid(ar) == "2.bbbb"

            await async_wait_until(flipped, 2.0, "the async Cluster reader to follow the flip")
            rc.publish(layout.channel(NS), b"\xff not an identity")
            await asyncio.sleep(0.2)
            assert ar.listener_alive

    assert sync.listener_alive and vid_of(sync) == "1.aaaa"
    asyncio.run(scenario())
    wait_until(lambda: vid_of(sync) == "2.bbbb", 2.0, "the sync Cluster reader to follow the flip")
    sync.close()


def test_online_lookups_fail_fast_when_redis_is_down_or_hung() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        ScoreReader(closed, prefix="t").get("m", 1)
    assert time.monotonic() - t0 < 1.5

    async def aclosed() -> None:
        ar = AsyncScoreReader(closed, prefix="t")
        try:
            with pytest.raises(redis.ConnectionError):
                await ar.get("m", 1)
        finally:
            await ar.close()

    t0 = time.monotonic()
    asyncio.run(aclosed())
    assert time.monotonic() - t0 < 1.5

    with LocalRedis() as server:
        write_version(redis.Redis.from_url(server.url), NS, 1, "aaaa", plus(0.5), announce=False)
        reader = ScoreReader(server.url, prefix="t", pointer_ttl=0)
        patient = ScoreReader(server.url, prefix="t", pointer_ttl=0, timeout=1.0, retries=0)
        assert reader.get("m", 1).value == 1.5 and patient.get("m", 1).value == 1.5  # type: ignore[union-attr]
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # hung: connections open, nothing answers
        try:
            t0 = time.monotonic()
            with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
                reader.get("m", 1)
            assert time.monotonic() - t0 < 1.5
            t0 = time.monotonic()
            with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
                patient.get("m", 1)  # its own timeout: one wait of ~1 s, no retry
            assert 0.9 < time.monotonic() - t0 < 1.8
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert reader.get("m", 1).value == 1.5  # type: ignore[union-attr]  # and it recovers
        reader.close()
        patient.close()
