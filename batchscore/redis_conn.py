"""Connecting to Redis (standalone or Cluster) from a URL without ever printing its password.

``redis://``, ``rediss://`` (TLS) and ``user:password@`` URLs all work; every message built here
uses :func:`redact`, and errors from redis-py are re-raised without their text when they might
echo the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from batchscore.errors import InfrastructureError

#: Errors worth retrying: a restarted or briefly unreachable server.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def redact(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://host:6379/0`` (safe to log)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def client_for(url: str, *, cluster: bool = False, retries: int = 8) -> Any:
    """An unchecked client: ``redis.Redis`` or ``redis.cluster.RedisCluster`` (``cluster``).

    The default 8 retries back off ~0.1+0.2+0.4+0.8+1.6+2+2+2 s: they ride out a restart of a
    few seconds.
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries)
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=30, retry=retry)
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, retry=retry,
                                retry_on_error=list(TRANSIENT))


def connect(url: str, *, cluster: bool = False, check: bool = True) -> Any:
    """A client with retries on transient errors; ``check`` pings and maps failures to
    :class:`InfrastructureError` naming the (redacted) URL."""
    try:
        client = client_for(url, cluster=cluster)
        if check:
            # Ping without retries: a wrong password (an AuthenticationError, which redis-py files
            # under ConnectionError) or a server that is down fails the job at once; the returned
            # client retries, to ride out a restart in the middle of the work.
            probe = client_for(url, cluster=cluster, retries=0)
            try:
                probe.ping()
            finally:
                probe.close()
    except redis.AuthenticationError:
        raise InfrastructureError(f"Redis at {redact(url)} refused the credentials; check the password in the URL") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise InfrastructureError(f"Redis at {redact(url)} refused the credentials; check the password in the URL") from None
        raise InfrastructureError(f"Redis at {redact(url)} answered an error ({str(exc)[:80]}); check the URL") from None
    except (redis.RedisError, OSError) as exc:
        reason = str(exc).split("\n")[0].replace(url, redact(url))
        kind = "a Redis Cluster " if cluster else ""
        raise InfrastructureError(
            f"{kind}Redis at {redact(url)} is unreachable ({reason[:120]}); start it or fix the URL variable"
            + ("" if cluster else " (set outputs.redis.cluster: true for a Cluster)")
        ) from None
    return client


def primaries(client: Any) -> list[Any]:
    """The clients of every master: the client itself, or one per Cluster primary."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def memory_of(node: Any) -> dict[str, Any]:
    """``INFO memory`` of one server: used and max bytes (0 = no limit) and the eviction policy."""
    info = node.info("memory")
    return {"used": int(info["used_memory"]), "max": int(info.get("maxmemory", 0)),
            "policy": str(info.get("maxmemory_policy", "unknown"))}
