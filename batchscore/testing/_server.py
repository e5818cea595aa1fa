"""What the throwaway servers of :mod:`batchscore.testing` share: a free loopback port, a child that dies
with its parent, and a private run directory removed on :meth:`Throwaway.close` (or at interpreter exit).

Stdlib only: tests/conftest.py's plugins load the S3 and Azure servers in the Airflow environment too
(the DAG suite), which has no redis-py, Spark or Arrow.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

__all__ = ["Throwaway", "death_signal_setter", "free_port"]

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_LIVE: set[Throwaway] = set()  # servers with a run dir: closed at interpreter exit


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        server.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def death_signal_setter() -> Callable[[], object] | None:
    """A preexec_fn that has the child get SIGTERM when its parent thread dies (even by SIGKILL): Linux only,
    from the main thread only (PR_SET_PDEATHSIG follows the thread that forked). Resolved before the fork."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Throwaway:
    """A server process with a private run directory (its key, log, sockets). Subclasses implement
    :meth:`start` and :meth:`stop` and take their directory with :meth:`_make_run_dir`; :meth:`close`
    stops the server and removes the directory. A context manager: ``with Server() as s: ...``."""

    _run_dir: Path | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _make_run_dir(self, prefix: str) -> Path:
        """A fresh 0700 temp directory, removed by :meth:`close` (at the latest at interpreter exit)."""
        self._run_dir = Path(tempfile.mkdtemp(prefix=prefix))
        _LIVE.add(self)
        return self._run_dir

    def close(self) -> None:
        """:meth:`stop`, then remove the run directory."""
        self.stop()
        _LIVE.discard(self)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
