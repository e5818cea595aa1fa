"""Connecting to Redis (standalone or Cluster) from a URL without ever printing its password.

``redis://``, ``rediss://`` (TLS), ``unix://`` and ``user:password@`` URLs all work. Every message
built here uses :func:`redact`, and errors from redis-py are re-raised without their text when it
might echo the URL. A URL whose password holds an unencoded ``/``, ``#`` or ``?`` (which URL
parsing would split there, connecting somewhere else or quoting part of the password in its error)
is refused with :class:`~batchscore.errors.ConfigError` before anything is parsed or sent.

Two retry profiles:

* **batch** (the jobs; ``client_for(url)``): 5 s to connect, 30 s per reply, 8 retries backing
  off ~0.1+0.2+0.4+0.8+1.6+2+2+2 s, to ride out a Redis restart in the middle of a publish.
* **online** (the readers; ``client_for(url, retries=ONLINE_RETRIES, timeout=ONLINE_TIMEOUT)``):
  0.25 s to connect and per reply, at most one quick retry, so a lookup against a Redis that is
  down fails in well under a second instead of stalling the request for ~11 s.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from batchscore.errors import BatchscoreError, ConfigError, InfrastructureError

#: Errors worth retrying: a restarted or briefly unreachable server.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)

#: The online profile of the readers: seconds to connect and to wait for each reply, and retries.
ONLINE_TIMEOUT = 0.25
ONLINE_RETRIES = 1

#: The batch profile: seconds to connect and to wait for each reply.
BATCH_CONNECT_TIMEOUT = 5.0
BATCH_SOCKET_TIMEOUT = 30.0

_AUTH_MARKERS = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password",
                 "Authentication required", "called without any password configured")


def _split(url: str) -> tuple[str, str, str]:
    """``(scheme, userinfo, rest)``: userinfo is everything up to the LAST ``@`` (so a password
    holding ``@``, ``/``, ``#`` or ``?`` never leaks into ``rest``), rest is ``host[:port][/db]...``."""
    scheme, sep, tail = url.partition("://")
    if not sep:
        scheme, tail = "", url
    userinfo, at, rest = tail.rpartition("@")
    if not at:
        userinfo, rest = "", tail
    return scheme, userinfo, rest


def redact(url: str) -> str:
    """``redis://user:secret@host:6379/0?password=x`` -> ``redis://host:6379/0`` (safe to log).

    Everything up to the last ``@`` (the userinfo, however malformed) and the query and fragment
    (which may carry ``password=``) are dropped."""
    scheme, _, rest = _split(str(url))
    for stop in ("?", "#"):
        rest = rest.split(stop, 1)[0]
    return f"{scheme}://{rest}" if scheme else rest


def _password_parts(url: str) -> list[str]:
    """The userinfo of ``url`` and its ``:``-separated pieces (to scrub from error texts)."""
    userinfo = _split(str(url))[1]
    return sorted({p for p in (userinfo, *userinfo.split(":")) if len(p) >= 3}, key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    """``text`` with the URL redacted and any piece of its userinfo replaced by ``***``."""
    text = text.replace(url, redact(url))
    for part in _password_parts(url):
        text = text.replace(part, "***")
    return text


def check_url(url: str) -> None:
    """Refuse (:class:`ConfigError`) a URL whose userinfo URL parsing would cut short.

    ``/``, ``#`` and ``?`` end the authority of a URL, so ``redis://:pa/ss@host:6379/0`` parses
    as host ``""`` and port ``pa``: redis-py then connects elsewhere or raises an error quoting
    part of the password."""
    userinfo = _split(str(url))[1]
    bad = sorted({c for c in "/#?" if c in userinfo})
    if bad:
        chars = ", ".join(repr(c) for c in bad)
        raise ConfigError(
            f"the Redis URL variable holds a URL ({redact(url)}) whose user name or password contains an "
            f"unencoded {chars}; percent-encode the password (e.g. / as %2F, # as %23, ? as %3F)"
        )


def _timeouts(timeout: float | None) -> dict[str, Any]:
    if timeout is None:
        return {"socket_connect_timeout": BATCH_CONNECT_TIMEOUT, "socket_timeout": BATCH_SOCKET_TIMEOUT}
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout}


def _backoff(timeout: float | None) -> ExponentialBackoff:
    """Batch: 0.1 s doubling to 2 s. Online: from ``timeout``/10, capped at ``timeout``."""
    if timeout is None:
        return ExponentialBackoff(cap=2.0, base=0.1)
    return ExponentialBackoff(cap=timeout, base=timeout / 10)


def _build(url: str, make: Any) -> Any:
    """``make()`` (a redis-py ``from_url``), its parse errors as :class:`ConfigError` (no password,
    and raised outside the ``except`` so no traceback carries the original text as context)."""
    check_url(url)
    problem = None
    try:
        return make()
    except ValueError as exc:
        problem = _scrub(str(exc).split("\n")[0], url)[:160]
    raise ConfigError(f"the Redis URL variable holds an invalid URL ({redact(url)}): {problem}; fix the URL "
                      "(redis://[:password@]host:port/db, rediss:// for TLS; percent-encode the password, "
                      "e.g. / as %2F)")


def client_for(url: str, *, cluster: bool = False, retries: int = 8, timeout: float | None = None) -> Any:
    """An unchecked client: ``redis.Redis`` or ``redis.cluster.RedisCluster`` (``cluster``).

    ``timeout`` None is the batch profile (5 s to connect, 30 s per reply; the default 8 retries
    back off ~0.1+0.2+0.4+0.8+1.6+2+2+2 s: they ride out a restart of a few seconds). A number is
    the online profile: that many seconds to connect and per reply, retries backing off from
    ``timeout``/10 (readers pass ``retries=ONLINE_RETRIES, timeout=ONLINE_TIMEOUT``).

    Raises :class:`ConfigError` for a URL that cannot be used as written (see :func:`check_url`).
    """
    retry = Retry(_backoff(timeout), retries)
    opts = _timeouts(timeout)
    if cluster:
        from redis.cluster import RedisCluster

        return _build(url, lambda: RedisCluster.from_url(url, retry=retry, **opts))
    return _build(url, lambda: redis.Redis.from_url(url, retry=retry, retry_on_error=list(TRANSIENT), **opts))


def async_client_for(url: str, *, cluster: bool = False, retries: int = 8, timeout: float | None = None) -> Any:
    """The ``redis.asyncio`` twin of :func:`client_for` (same profiles and errors)."""
    from redis.asyncio.retry import Retry as AsyncRetry

    retry = AsyncRetry(_backoff(timeout), retries)
    opts = _timeouts(timeout)
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return _build(url, lambda: RedisCluster.from_url(url, retry=retry, **opts))
    import redis.asyncio

    return _build(url, lambda: redis.asyncio.Redis.from_url(url, retry=retry, retry_on_error=list(TRANSIENT), **opts))


def is_auth_error(exc: BaseException) -> bool:
    """A refused password (or none given where one is needed), however redis-py files it."""
    if isinstance(exc, redis.AuthenticationError):
        return True
    return isinstance(exc, redis.RedisError) and any(m.lower() in str(exc).lower() for m in _AUTH_MARKERS)


def _refused(url: str) -> ConfigError:
    return ConfigError(f"Redis at {redact(url)} refused the credentials; check the password in the URL "
                       "variable (percent-encode it, e.g. / as %2F)")


def connect(url: str, *, cluster: bool = False, check: bool = True, retries: int = 8,
            timeout: float | None = None) -> Any:
    """A client with retries on transient errors (:func:`client_for`'s profiles; the batch one by
    default). ``check`` pings first: a wrong or missing password, or a URL that cannot be used, is
    :class:`ConfigError` (exit 2: do not retry); an unreachable server or another Redis error is
    :class:`InfrastructureError` (exit 4), each naming the redacted URL and never the password."""
    failure: BatchscoreError | None = None
    try:
        client = client_for(url, cluster=cluster, retries=retries, timeout=timeout)
        if check:
            # Ping without retries: a wrong password (an AuthenticationError, which redis-py files
            # under ConnectionError) or a server that is down fails the job at once; the returned
            # client retries, to ride out a restart in the middle of the work.
            probe = client_for(url, cluster=cluster, retries=0, timeout=timeout)
            try:
                probe.ping()
            finally:
                probe.close()
        return client
    except (redis.RedisError, OSError) as exc:
        failure = _classify(exc, url, cluster)
    raise failure  # outside the except: no context that could quote the URL


def _classify(exc: BaseException, url: str, cluster: bool) -> BatchscoreError:
    if is_auth_error(exc):
        return _refused(url)
    reason = _scrub(str(exc).split("\n")[0], url)
    if isinstance(exc, redis.ResponseError):
        return InfrastructureError(f"Redis at {redact(url)} answered an error ({reason[:80]}); check the URL")
    kind = "a Redis Cluster " if cluster else ""
    return InfrastructureError(
        f"{kind}Redis at {redact(url)} is unreachable ({reason[:120]}); start it or fix the URL variable"
        + ("" if cluster else " (set outputs.redis.cluster: true for a Cluster)")
    )


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
