"""Pytest fixtures for a real Azure Blob Storage server on loopback (Azurite).

The server is batchscore/testing/local_azure.py; ``npm ci`` in tests/azurite runs once when Azurite is
missing (as the Node reader's tests do). Register with ``pytest_plugins = ["tests.azure_fixtures"]``.

* ``azure_server``: one :class:`~batchscore.testing.local_azure.LocalAzure` for the session.
* ``azure_env``: every variable of ``azure_server.env()`` set for the test (monkeypatch); returns the dict.
* ``azure_container``: a fresh, empty container for the test, as its ``abfss://`` root (deleted after).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from batchscore.errors import BatchscoreError
from batchscore.testing.local_azure import LocalAzure, install
from tests.s3_fixtures import store_name


@pytest.fixture(scope="session")
def azure_server() -> Iterator[LocalAzure]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the abfss:// tests need node (>= 18) and npm on PATH for Azurite: apt-get install nodejs npm "
                    "(.ci/run installs them)", pytrace=False)
    try:
        install()
    except BatchscoreError as e:
        pytest.fail(str(e), pytrace=False)
    with LocalAzure() as server:
        yield server


@pytest.fixture
def azure_env(azure_server: LocalAzure, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = azure_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def azure_container(azure_server: LocalAzure, request: pytest.FixtureRequest) -> Iterator[str]:
    name = store_name(request.node.name)
    uri = azure_server.make_container(name)
    yield uri
    if azure_server.running:
        azure_server.delete_container(name)
