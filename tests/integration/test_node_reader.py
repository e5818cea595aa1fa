"""The Node.js reference reader (readers/node/) against the shared vectors, the real pipeline and
the Python reader: (a) its own test suite (the vectors, on a real redis-server); (b) a version
published by the real Spark pipeline reads the same, float32 for float32, from Node as from
Python; (c) Node processes polling ``getMany`` through a series of publishes never see a mix of
versions and always the values of the version they name.

Node.js (>= 18.19) and npm are required: missing, these tests fail (CI installs them). ``npm ci``
runs only when ``readers/node/node_modules`` is missing or was installed from another lock file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

# pytest puts tests/integration on sys.path for this file (no __init__.py); publish/ is a package there
from publish.conftest import stage_run

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import run as run_job
from batchscore.jobs.publish import publish

pytestmark = [pytest.mark.integration, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "readers" / "node"
STAMP = NODE_DIR / "node_modules" / ".batchscore-lock"  # mk/node.mk writes the same stamp
MIN_NODE = (18, 19)


def _lock_digest() -> str:
    return hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the reader's dependencies installed (``npm ci`` when needed)."""
    exe, npm = shutil.which("node"), shutil.which("npm")
    if exe is None or npm is None:
        pytest.fail("the Node.js reader tests need node (>= 18.19) and npm on PATH: apt-get install nodejs npm "
                    "(.ci/run installs them)", pytrace=False)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    if (major, minor) < MIN_NODE:
        pytest.fail(f"node {version} is too old for readers/node (needs >= 18.19)", pytrace=False)
    want = _lock_digest()
    have = STAMP.read_text().strip() if STAMP.exists() else None
    if have != want or not (NODE_DIR / "node_modules" / "redis" / "package.json").exists():
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                             capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            pytest.fail(f"npm ci in readers/node failed ({res.returncode}):\n{res.stdout}\n{res.stderr}", pytrace=False)
        STAMP.write_text(want + "\n")
    return exe


def _node_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "BATCHSCORE_TEST_REDIS_URL")}
    return {**env, **extra}


def lookup(node: str, url: str, keys: list[Any], *, get: bool = False, prefix: str = "t", model: str = "m",
           tmp: Path) -> dict[str, Any]:
    """``bin/lookup.js`` for ``keys``: ``{"versionId", "scores": {key: score | None}}``."""
    keys_file = tmp / "keys.json"
    keys_file.write_text(json.dumps([str(k) for k in keys]))
    res = subprocess.run([node, "bin/lookup.js", "--url", url, "--prefix", prefix, "--model", model,
                          "--keys-file", str(keys_file), "--timeout-ms", "5000", *(["--get"] if get else [])],
                         cwd=NODE_DIR, env=_node_env(), capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, f"lookup.js failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def _f32(x: float) -> bytes:
    return struct.pack("<f", x)


# -- (a) the reader's own suite: the shared vectors ------------------------------------------------

def test_node_reader_passes_the_shared_vectors(node: str, redis_url: str) -> None:
    res = subprocess.run([node, "--test", "--test-reporter=tap", "test/"], cwd=NODE_DIR,
                         env=_node_env(BATCHSCORE_TEST_REDIS_URL=redis_url),
                         capture_output=True, text=True, timeout=120, check=False)
    tail = "\n".join((res.stdout + res.stderr).splitlines()[-60:])
    assert res.returncode == 0, f"node --test failed ({res.returncode}):\n{tail}"
    assert "# fail 0" in res.stdout and "# pass " in res.stdout, tail


# -- (b) a version published by the real pipeline --------------------------------------------------

def test_node_reads_exactly_what_python_reads_from_a_real_publish(spark: Any, node: str, make_config: Any,
                                                                 redis_url: str, tmp_path: Path) -> None:
    cfg_path = make_config(rows=1500, layers=(8, 16, 3))  # three outputs: column order matters
    cfg = load_model_config(cfg_path)
    report = run_job.run(spark, cfg, run_id="node1", run_date="2026-11-22", redis_url=redis_url)
    ids = pq.read_table(cfg.input.path, columns=[cfg.input.key])[cfg.input.key].to_pylist()
    keys: list[Any] = [*ids, 10**9, -1, "not-a-user"]

    with ScoreReader(redis_url, prefix="t") as reader:
        want = reader.get_many("m", keys)
    assert sum(s is not None for s in want.values()) == len(ids)

    got = lookup(node, redis_url, keys, tmp=tmp_path)
    assert got["versionId"] == report.redis_version
    assert set(got["scores"]) == set(want)
    single = lookup(node, redis_url, [*ids[:25], 10**9], get=True, tmp=tmp_path)  # HGET path
    for result in (got, single):
        for key, s in result["scores"].items():
            py = want[key]
            if py is None:
                assert s is None, key
                continue
            assert s is not None, key
            assert (s["versionId"], s["version"], s["modelVersion"]) == (py.version_id, py.version, py.model_version)
            assert list(s["values"]) == list(py.values) == list(cfg.outputs.columns)
            # the same float32, bit for bit (JSON carries the double the float32 widens to, exactly)
            assert [_f32(v) for v in s["values"].values()] == [_f32(v) for v in py.values.values()], key
            assert list(s["values"].values()) == list(py.values.values()), key


# -- (c) no mixed versions through a series of publishes ------------------------------------------

PUBLISHES = 8
UNIVERSE = np.arange(600, dtype=np.int64)
SAMPLE = UNIVERSE[::4].tolist()


def _keys(i: int) -> np.ndarray:
    """Publish i drops a sliding window of 40 entities: some keys are in some versions only."""
    return UNIVERSE[(UNIVERSE < 60 * i % 560) | (UNIVERSE >= 60 * i % 560 + 40)]


def _scores(i: int, keys: np.ndarray) -> np.ndarray:
    base = (i * 1000 + keys).astype(np.float32)  # exact in float32: the value names its publish
    return np.column_stack([base, -base / 4]).astype(np.float32)


def _start_poller(node: str, url: str, out: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Any]:
    fh = out.open("wb")
    proc = subprocess.Popen(
        [node, "bin/poll.js", "--url", url, "--prefix", "t", "--model", "m", "--keys-json", json.dumps(
            [str(k) for k in SAMPLE]), "--seconds", "75", "--timeout-ms", "3000", "--interval-ms", "2", *extra],
        cwd=NODE_DIR, env=_node_env(), stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)
    return proc, fh


def _wait_ready(proc: subprocess.Popen[bytes], out: Path, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if "\n" in text:
            return json.loads(text.splitlines()[0])
        assert proc.poll() is None, f"poll.js exited early ({proc.returncode}): {text[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"poll.js did not start within {timeout} s")


def test_node_readers_never_see_a_mix_through_publishes(spark: Any, node: str, make_config: Any,
                                                        redis_url: str, tmp_path: Path) -> None:
    cfg = load_model_config(make_config(layers=(8, 16, 2),
                                        outputs={"redis": {"keep_versions": 1, "gc_grace_seconds": 0.5}}))
    assert list(cfg.outputs.columns) == ["s0", "s1"]
    for i in range(PUBLISHES + 1):
        stage_run(cfg, f"p{i}", _keys(i), _scores(i, _keys(i)))
    ids = {publish(spark, cfg, run_id="p0", redis_url=redis_url).redis_version: 0}

    pollers = [  # subscribed with a 100 ms pointer cache; and re-reading the pointer on every batch
        (*_start_poller(node, redis_url, tmp_path / "sub.jsonl", "--subscribe", "--pointer-ttl-ms", "100"),
         tmp_path / "sub.jsonl"),
        (*_start_poller(node, redis_url, tmp_path / "ttl0.jsonl", "--pointer-ttl-ms", "0"), tmp_path / "ttl0.jsonl"),
    ]
    try:
        ready = [_wait_ready(proc, out) for proc, _, out in pollers]
        assert ready[0]["subscribed"] is True, "the subscribing poller has no subscription"
        for i in range(1, PUBLISHES + 1):
            rep = publish(spark, cfg, run_id=f"p{i}", redis_url=redis_url)
            assert layout.parse_version_id(rep.redis_version)[0] == i + 1
            ids[rep.redis_version] = i
        time.sleep(0.3)  # let both see the last flip
    finally:
        for proc, _fh, _ in pollers:
            if proc.stdin is not None:
                proc.stdin.close()  # poll.js stops when its input closes
        for proc, fh, _ in pollers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.close()

    seen_all: set[int] = set()
    for proc, _, out in pollers:
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert proc.returncode == 0, f"{out.name}: exit {proc.returncode}: {lines[-3:]}"
        assert "done" in lines[-1], f"{out.name}: no final line: {lines[-3:]}"
        batches = [ln for ln in lines[1:-1]]
        errors = [ln for ln in batches if "error" in ln]
        assert not errors, f"{out.name}: {len(errors)} failed lookups, first: {errors[:3]}"
        problems: list[str] = []
        seen: set[int] = set()
        for b in batches:
            if len(b["versions"]) != 1:
                problems.append(f"versions {b['versions']}")
                continue
            vid = b["versions"][0]
            if vid not in ids:
                problems.append(f"unknown version {vid}")
                continue
            i = ids[vid]
            seen.add(i)
            present = set(_keys(i).tolist())
            for k, vals in zip(SAMPLE, b["values"], strict=True):
                if k not in present:
                    if vals is not None:
                        problems.append(f"{vid}: key {k} is not in publish {i} but read {vals}")
                elif vals is None:
                    problems.append(f"{vid}: key {k} of publish {i} missing")
                elif [_f32(v) for v in vals] != [_f32(v) for v in _scores(i, np.array([k]))[0].tolist()]:
                    problems.append(f"{vid}: key {k} read {vals}, publish {i} holds {_scores(i, np.array([k]))[0]}")
            if len(problems) > 5:
                break
        assert not problems, f"{out.name}: {problems[:5]}"
        assert max(seen) == PUBLISHES, f"{out.name}: never saw the last publish (saw {sorted(seen)})"
        assert len(seen) >= 3, f"{out.name}: saw only publishes {sorted(seen)} go by"
        seen_all |= seen
    assert len(seen_all) >= PUBLISHES // 2
