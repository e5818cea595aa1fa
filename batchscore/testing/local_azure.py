"""A throwaway Azure Blob Storage server on a free loopback port (Azurite), for the ``abfss://`` tests.

Azurite is Microsoft's Azure Storage emulator, an npm package: the repository pins it in
``tests/azurite/package.json`` (+ lock), :func:`azurite_binary` finds its ``azurite-blob`` (and
:func:`install` runs ``npm ci`` there when it is missing; ``make azurite-env`` does the same).

Each server has an account of its own (a random name and key: ``AZURITE_ACCOUNTS``), keeps its data
in memory and listens on 127.0.0.1 only. :meth:`LocalAzure.env` gives the variables batchscore (and
delta-rs, pyarrow) read: ``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY`` and
``AZURE_STORAGE_ENDPOINT`` (the emulator's Blob endpoint, account in the path). Locations are
``abfss://<container>@<account>.dfs.core.windows.net/<path>``, as on Azure itself.

Azurite serves the Blob API, not the Data Lake (hierarchical namespace) one: directories are
prefixes, as in a storage account without hierarchical namespace.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Self

from batchscore.errors import BatchscoreError
from batchscore.testing._server import HOST as _HOST
from batchscore.testing._server import Throwaway, death_signal_setter, free_port

__all__ = ["LocalAzure", "azurite_binary", "install"]

#: The pinned npm package (tests/azurite/package.json) in a checkout of the repository.
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "tests" / "azurite"
_INSTALL_HINT = "make azurite-env (npm ci in tests/azurite; needs node >= 18 and npm)"


def azurite_binary() -> str:
    """``$BATCHSCORE_AZURITE``, else the checkout's ``tests/azurite`` install, else ``azurite-blob`` on PATH."""
    for exe in (os.environ.get("BATCHSCORE_AZURITE"), str(PACKAGE_DIR / "node_modules" / ".bin" / "azurite-blob"),
                shutil.which("azurite-blob")):
        if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    raise BatchscoreError(
        f"Azurite's azurite-blob not found (BATCHSCORE_AZURITE, {PACKAGE_DIR}, PATH): {_INSTALL_HINT}")


def install(timeout: float = 600) -> str:
    """``npm ci`` in ``tests/azurite`` when Azurite is not installed there; returns :func:`azurite_binary`."""
    try:
        return azurite_binary()
    except BatchscoreError:
        npm = shutil.which("npm")
        if npm is None or not (PACKAGE_DIR / "package-lock.json").is_file():
            raise
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PACKAGE_DIR,
                             capture_output=True, text=True, timeout=timeout, check=False)
        if res.returncode != 0:
            raise BatchscoreError(f"npm ci in {PACKAGE_DIR} failed ({res.returncode}): "
                                  f"{' '.join((res.stderr or res.stdout).split())[:300]}") from None
        return azurite_binary()


class LocalAzure(Throwaway):
    """One ``azurite-blob`` process with an account of its own; a context manager."""

    def __init__(self) -> None:
        self.account = f"bs{secrets.token_hex(6)}"
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None

    def __repr__(self) -> str:  # never the key
        return f"LocalAzure(account={self.account!r}, endpoint={self.endpoint!r}, running={self.running})"

    @property
    def endpoint(self) -> str:
        return f"http://{_HOST}:{self.port}/{self.account}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """The variables a client needs to reach this server (the key included)."""
        return {"AZURE_STORAGE_ACCOUNT_NAME": self.account, "AZURE_STORAGE_ACCOUNT_KEY": self.key,
                "AZURE_STORAGE_ENDPOINT": self.endpoint}

    def uri(self, container: str, path: str = "") -> str:
        return f"abfss://{container}@{self.account}.dfs.core.windows.net/{path}".rstrip("/")

    def start(self) -> Self:
        if self.running:
            return self
        exe = azurite_binary()
        if self._run_dir is None:  # one per server, reused by a restart
            self._make_run_dir("batchscore-azurite-")
        for attempt in range(3):  # a fresh port again if another process took the one chosen meanwhile
            self.port = free_port()
            try:
                self._spawn(exe)
                return self
            except BatchscoreError:
                self.stop()
                if attempt == 2 or "EADDRINUSE" not in self._log_tail():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, exe: str) -> None:
        assert self._run_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE")}
        env["AZURITE_ACCOUNTS"] = f"{self.account}:{self.key}"
        log_path = self._run_dir / "azurite.log"
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [exe, "--blobHost", _HOST, "--blobPort", str(self.port), "--inMemoryPersistence",
                 "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self._run_dir,
                start_new_session=True, preexec_fn=death_signal_setter())  # gone with its parent, even on SIGKILL
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BatchscoreError(f"azurite-blob exited ({self.proc.returncode}): {self._log_tail()}")
            if b"successfully listens" in log_path.read_bytes():
                return
            time.sleep(0.1)
        raise BatchscoreError(f"azurite-blob did not listen on {_HOST}:{self.port} within 60 s: {self._log_tail()}")

    def _log_tail(self) -> str:
        if self._run_dir is None:
            return ""
        text = (self._run_dir / "azurite.log").read_bytes().decode(errors="replace")
        return " | ".join(text.strip().splitlines()[-5:])

    def filesystem(self) -> Any:
        """A pyarrow AzureFileSystem on this server's account (what batchscore's storage builds from :meth:`env`)."""
        from batchscore.storage import Storage

        return Storage(values=tuple(self.env().items())).filesystem(self.uri("any"))[0]

    def make_container(self, name: str) -> str:
        """Create container ``name``; returns its ``abfss://`` root."""
        self.filesystem().create_dir(name)
        return self.uri(name)

    def delete_container(self, name: str) -> None:
        self.filesystem().delete_dir(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
