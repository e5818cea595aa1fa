"""Fixtures for the publish tests: real redis-server processes (restartable with AOF, password,
TLS, a three-master Cluster) and cheaply staged runs.

A staged run is what ``score`` + ``validate`` leave behind (Parquet under ``<table>/runs/<id>/``
plus their JSON reports); building it directly keeps each publish cheap so a test can do twenty.
The publish itself, Spark, Redis and Delta are all real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import redis_layout as layout
from batchscore.testing.local_redis import (
    LocalRedis,
    cli_binary,
    cluster_ok,
    free_port,
    pings,
    server_binary,
)

REPO = Path(__file__).resolve().parents[3]


def stage_run(cfg: Any, run_id: str, keys: np.ndarray, scores: np.ndarray, *, passed: bool = True,
              run_date: str = "2026-11-22", profile: dict[str, Any] | None = None) -> None:
    """Write run ``run_id`` as the score and validate steps would: Parquet + reports."""
    from batchscore.jobs import _state as state

    d = Path(state.staged_path(cfg, run_id))
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        cfg.input.key: pa.array(keys, pa.int64()),
        **{c: pa.array(scores[:, i] if scores.ndim == 2 else scores, pa.float32())
           for i, c in enumerate(cfg.outputs.columns)},
        "model_version": pa.array([cfg.model.version] * len(keys)),
        "run_id": pa.array([run_id] * len(keys)),
    })
    pq.write_table(table, d / "part-00000.parquet")
    from batchscore.sinks import delta

    digest = delta.stage(cfg.outputs.delta.path, run_id).digest
    state.write_report(cfg, run_id, "score", {"input_rows": len(keys), "run_date": run_date, "digest": digest})
    state.write_report(cfg, run_id, "validation", {"passed": passed, "profile": profile or {"columns": {}},
                                                   "digest": digest})


def served_number(r: Any, ns: str = "t:m") -> int | None:
    """The number of the version the pointer names (None when nothing is served)."""
    raw = r.get(layout.pointer_key(ns))
    return None if raw is None else layout.parse_version_id(raw)[0]


def numbers(r: Any, ns: str = "t:m") -> list[int]:
    """The numbers of the versions in the versions set, ascending."""
    return sorted(layout.parse_version_id(v)[0] for v in r.zrange(layout.versions_key(ns), 0, -1))


def job_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHSCORE_CRASH", "BATCHSCORE_PAUSE", "BATCHSCORE_KILL"))}
    return {**env, "BATCHSCORE_REDIS_URL": url, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO), **extra}


def start_publish(cfg_path: Path, run_id: str, url: str, *, master: str = "local[2]",
                  **env: str) -> subprocess.Popen[str]:
    """``python -m batchscore publish`` in its own session (its own process group)."""
    return start_cli("publish", cfg_path, url, "--run-id", run_id, "--master", master, **env)


def start_cli(verb: str, cfg_path: Path, url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    """``python -m batchscore <verb> --model-config <cfg_path> <args>`` in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchscore", verb, "--model-config", str(cfg_path), *args],
        cwd=REPO, env=job_env(url, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def wait_for(cond: Callable[[], Any], timeout: float = 60, what: str = "condition",
             proc: subprocess.Popen[str] | None = None) -> Any:
    """Poll ``cond`` until it is truthy; with ``proc``, fail at once (with its output) if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def aof_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRedis]:
    """A redis-server with an append-only file, so :func:`restart` keeps its data."""
    server = LocalRedis(args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", server.url)
    yield server
    server.stop()


def restart(server: LocalRedis) -> None:
    assert server.proc is not None
    server.proc.terminate()
    server.proc.wait(timeout=10)
    server.start()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three Redis Cluster masters on loopback; yields a URL of one of them."""
    try:
        exe, cli = server_binary(), cli_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    root = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        while len(ports) < 3:
            p = free_port()
            d = root / str(p)
            d.mkdir()
            proc = subprocess.Popen(
                [exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file",
                 "nodes.conf", "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_for(lambda p=p, proc=proc: pings(p) or proc.poll() is not None, 60, f"redis-server on {p}")
            if proc.poll() is None:
                ports.append(p)  # else the port was taken meanwhile: try another
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for p in ports:
            wait_for(lambda p=p: cluster_ok(p), 30, f"cluster state ok on {p}")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)






def inproc_loader(url: str, ns: str, key: str, columns: list[str], *,
                  interrupt: Callable[[], BaseException | None] = lambda: None) -> Any:
    """The executor-side loader (:func:`make_loader`) run in this process over the Parquet files of
    ``paths``: a :data:`publication.Loader` for tests that drive the protocol without Spark.
    ``interrupt()`` returning an exception makes the load stop after its first batch and raise it
    (a task dying mid-load)."""
    from batchscore.udfs._redis_load import make_loader

    def load(paths: list[str], version: Any, fence: tuple[str, str]) -> dict[int, int]:
        files = [f for p in paths for f in (sorted(Path(p).glob("*.parquet")) if Path(p).is_dir() else [Path(p)])]
        batches = [b for f in files for b in pq.read_table(f, columns=[key, *columns]).to_batches(max_chunksize=150)]
        stop = interrupt()
        run = make_loader(url, ns, version.vid, version.buckets, columns, fence=fence)
        counts: dict[int, int] = {}
        for out in run(iter(batches[:1] if stop is not None else batches)):
            for b, n in zip(out.column(0).to_pylist(), out.column(1).to_pylist(), strict=True):
                counts[b] = counts.get(b, 0) + n
        if stop is not None:
            raise stop
        return counts

    return load


def write_version(r: Any, ns: str, number: int, epoch: str, score: Callable[[int], Sequence[float]], *,
                  keys: Sequence[str], columns: Sequence[str] = ("score",), model_version: str = "mv",
                  flip: bool = True, announce: bool = True, state: str | None = None,
                  meta_epoch: str | None = None) -> str:
    """Version ``number.epoch`` of ``ns`` with ``score(k)`` for each key: data buckets and meta via
    redis-py; ``flip`` sets the pointer, ``announce`` publishes on the channel."""
    vid = layout.version_id(number, epoch)
    buckets = layout.bucket_count(len(keys))
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.hset(layout.data_key(ns, vid, layout.bucket_of(k, buckets)), k, layout.encode_scores(score(int(k))))
    pipe.hset(layout.meta_key(ns, vid), mapping={
        "number": number, "epoch": meta_epoch or epoch, "state": state or ("published" if flip else "loaded"),
        "count": len(keys), "buckets": buckets, "columns": ",".join(columns), "model_version": model_version,
        "run_id": f"run-{vid}", "digest": "", "delta_version": 0, "created_at": f"{time.time():.3f}",
        "published_at": ""})
    pipe.execute()
    if flip:
        r.set(layout.pointer_key(ns), vid)
        if announce:
            r.publish(layout.channel(ns), vid)
    return vid
