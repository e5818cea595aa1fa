"""Redis URLs and connection profiles (no server needed): redaction never leaks the userinfo, a
password URL parsing would cut short is a one-line ConfigError (exit 2) that never shows it, and
the readers get the online profile while the jobs keep the batch one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from batchscore.errors import EXIT_BAD_INPUT, ConfigError
from batchscore.reader import AsyncScoreReader, ScoreReader
from batchscore.redis_conn import (
    ONLINE_RETRIES,
    ONLINE_TIMEOUT,
    async_client_for,
    check_url,
    client_for,
    connect,
    redact,
)

REPO = Path(__file__).resolve().parents[2]
# Unencoded '/', '#' and '?' in the password: URL parsing would end the authority there.
SECRET_PIECES = ["Sup3r", "S3cr", "etW0rd", "Xy9"]
MANGLED = "redis://:Sup3r/S3cr#etW0rd?Xy9@127.0.0.1:6399/0"


@pytest.mark.parametrize(("url", "want"), [
    ("redis://user:s3cret@10.0.0.1:6380/2", "redis://10.0.0.1:6380/2"),
    ("rediss://:s3cret@host/0", "rediss://host/0"),
    ("redis://:pa/ss#w?rd@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:p@ss@w@rd@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("rediss://:pw@h:6380/0?ssl_ca_certs=/etc/ca.pem&password=s3cret", "rediss://h:6380/0"),
    ("unix://:s3cret@/var/run/redis.sock?db=1", "unix:///var/run/redis.sock"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    (MANGLED, "redis://127.0.0.1:6399/0"),
])
def test_redact_drops_everything_up_to_the_last_at_and_the_query(url: str, want: str) -> None:
    assert redact(url) == want
    for secret in ("s3cret", "pa/ss", "w?rd", "p@ss", *SECRET_PIECES):
        assert secret not in redact(url)


def _assert_clean(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    for piece in SECRET_PIECES:
        assert piece not in text, text
    assert exc.__cause__ is None and exc.__context__ is None  # no chained original error
    return str(exc)


def test_a_password_with_unencoded_url_characters_is_a_config_error_that_never_shows_it() -> None:
    async def make_async_readers() -> None:
        AsyncScoreReader(MANGLED)

    makers = [lambda: check_url(MANGLED), lambda: client_for(MANGLED), lambda: client_for(MANGLED, cluster=True),
              lambda: async_client_for(MANGLED), lambda: connect(MANGLED), lambda: ScoreReader(MANGLED),
              lambda: ScoreReader(MANGLED, cluster=True), lambda: asyncio.run(make_async_readers())]
    for make in makers:
        with pytest.raises(ConfigError) as exc:
            make()
        assert exc.value.exit_code == EXIT_BAD_INPUT
        msg = _assert_clean(exc.value)
        assert "\n" not in msg and "URL variable" in msg and "redis://127.0.0.1:6399/0" in msg
        assert "percent-encode the password (e.g. / as %2F" in msg


def test_other_unparseable_urls_are_config_errors_too() -> None:
    for url, hint in (("redis://:Sup3rS3cr@127.0.0.1:notaport/0", "Port could not be cast"),
                      ("http://:Sup3rS3cr@127.0.0.1:6379/0", "schemes")):
        with pytest.raises(ConfigError, match=hint) as exc:
            client_for(url)
        assert "Sup3rS3cr" not in "".join(traceback.format_exception(exc.value))
    client_for("redis://:pa%2Fss%23w%3Frd@127.0.0.1:6399/0")  # percent-encoded: fine
    client_for("redis://:p@ss@127.0.0.1:6399/0")  # an '@' parses (the host follows the last one)


def test_the_cli_lookup_refuses_a_mangled_url_with_exit_2_and_prints_no_password(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"name: m\nmodel: {{uri: {tmp_path}/x.onnx, format: onnx, version: v1}}\n"
                   f"input: {{path: {tmp_path}/in.parquet, key: k, features: [a]}}\n"
                   f"outputs: {{delta: {{path: {tmp_path}/d}}, redis: {{key_prefix: t}}}}\n")
    res = subprocess.run([sys.executable, "-m", "batchscore", "lookup", "--model-config", str(cfg), "9"],
                         capture_output=True, text=True, env={"BATCHSCORE_REDIS_URL": MANGLED}, cwd=REPO,
                         timeout=60)
    assert res.returncode == 2, res.stderr
    out = res.stdout + res.stderr
    for piece in SECRET_PIECES:
        assert piece not in out, out
    assert "Traceback" not in out and len(res.stderr.strip().splitlines()) == 1
    assert "percent-encode the password (e.g. / as %2F" in res.stderr


def _profile(client: Any) -> tuple[float, float, int]:
    kw = client.connection_pool.connection_kwargs
    return kw["socket_connect_timeout"], kw["socket_timeout"], kw["retry"].get_retries()


def test_jobs_keep_the_batch_profile_and_readers_get_the_online_one() -> None:
    url = "redis://127.0.0.1:6399/0"
    assert _profile(client_for(url)) == (5.0, 30.0, 8)  # batch: rides out a restart
    assert _profile(client_for(url, retries=ONLINE_RETRIES, timeout=ONLINE_TIMEOUT)) == (0.25, 0.25, 1)
    assert (ONLINE_TIMEOUT, ONLINE_RETRIES) == (0.25, 1)
    assert _profile(ScoreReader(url)._r) == (0.25, 0.25, 1)
    assert _profile(ScoreReader(url, timeout=2.0, retries=0)._r) == (2.0, 2.0, 0)

    async def aprofile(**kw: Any) -> tuple[float, float, int]:
        reader = AsyncScoreReader(url, **kw)
        try:
            return _profile(reader._r)
        finally:
            await reader.close()

    assert asyncio.run(aprofile()) == (0.25, 0.25, 1)
    assert asyncio.run(aprofile(timeout=0.5, retries=3)) == (0.5, 0.5, 3)
    with pytest.raises(ValueError, match="positive"):
        client_for(url, timeout=0)
