"""Connecting to Redis from a URL without ever printing its password."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from batchscore.errors import InfrastructureError


def redact(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://host:6379/0`` (safe to log)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(url: str, *, check: bool = True) -> redis.Redis:
    """A client with retries on transient errors; ``check`` pings and maps failures to
    :class:`InfrastructureError` naming the (redacted) URL."""
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    if check:
        try:
            client.ping()
        except redis.AuthenticationError:
            raise InfrastructureError(f"Redis at {redact(url)} refused the credentials; check the password in the URL") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            reason = str(exc).split("\n")[0].replace(url, redact(url))
            raise InfrastructureError(
                f"Redis at {redact(url)} is unreachable ({reason[:120]}); start it or fix the URL variable"
            ) from None
    return client
