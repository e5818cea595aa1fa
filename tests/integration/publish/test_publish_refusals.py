"""A publish that must not happen is refused with one clear line, and changes nothing: the Delta
table's version, the Redis pointer and every Redis key stay exactly as they were. (A second
concurrent publish is refused in ``test_faults``, while the first one is paused mid-load.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import publish as publish_job
from batchscore.testing.local_redis import LocalRedis

from .conftest import stage_run

pytestmark = [pytest.mark.integration, pytest.mark.spark]
KEYS = np.arange(2000, dtype=np.int64)
PASSWORD = "s3cret-Pa55word"


def _snapshot(url: str, table: str) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    keys = sorted(k for k in r.keys("*") if not k.endswith((b":lock", b":fence")))  # lock bookkeeping
    return {"delta": DeltaTable(table).version(), "pointer": r.get(layout.pointer_key("t:m")),
            "keys": keys, "values": [r.dump(k) for k in keys]}


def _world(spark: Any, make_config: Any, url: str, keys: np.ndarray = KEYS) -> tuple[Path, Any]:
    cfg_path = make_config()
    cfg = load_model_config(cfg_path)
    stage_run(cfg, "base", keys, keys.astype(np.float32) / 4000)
    publish_job.publish(spark, cfg, run_id="base", redis_url=url)
    stage_run(cfg, "next", keys, keys.astype(np.float32) / 2000)
    return cfg_path, cfg


def _refused(cfg_path: Path, capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    assert publish_job.main(["--model-config", str(cfg_path), "--run-id", "next"]) == code
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("batchscore: error:"))
    for n in needles:
        assert n in line, line
    return err


def test_without_a_passing_validation(spark: Any, make_config: Any, redis_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = _world(spark, make_config, redis_url)
    before = _snapshot(redis_url, cfg.outputs.delta.path)
    stage_run(cfg, "next", KEYS, KEYS.astype(np.float32), passed=False)
    _refused(cfg_path, capsys, 2, "run next of 'm' failed validation", "batchscore validate --run-id next")
    (Path(cfg.runtime.report_dir) / "m" / "next" / "validation.json").unlink()
    _refused(cfg_path, capsys, 2, "was not validated")
    assert _snapshot(redis_url, cfg.outputs.delta.path) == before


def test_maxmemory_too_small(spark: Any, make_config: Any, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = _world(spark, make_config, redis_url, np.arange(30_000, dtype=np.int64))
    r = redis.Redis.from_url(redis_url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used + 300_000)  # the live version fits, a second copy does not
    before = _snapshot(redis_url, cfg.outputs.delta.path)
    _refused(cfg_path, capsys, 2, "the new version needs ~", "30,000 entities x ~", "listpack",
             "is used and the limit is", "raise maxmemory", "nothing was written")
    assert _snapshot(redis_url, cfg.outputs.delta.path) == before
    r.config_set("maxmemory", 0)
    r.config_set("maxmemory-policy", "allkeys-lru")  # Redis may evict published scores: refused
    _refused(cfg_path, capsys, 2, "maxmemory-policy allkeys-lru", "CONFIG SET maxmemory-policy noeviction",
             "outputs.redis.allow_evicting_policy: true", "nothing was written")
    assert _snapshot(redis_url, cfg.outputs.delta.path) == before
    r.config_set("maxmemory-policy", "noeviction")
    assert publish_job.main(["--model-config", str(cfg_path), "--run-id", "next"]) == 0


def test_wrong_password_is_refused_and_never_printed(spark: Any, make_config: Any, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalRedis(password=PASSWORD) as server:
        cfg_path, cfg = _world(spark, make_config, server.url)  # the right password works
        before = _snapshot(server.url, cfg.outputs.delta.path)
        wrong = server.url.replace(PASSWORD, PASSWORD + "-wrong")
        monkeypatch.setenv("BATCHSCORE_REDIS_URL", wrong)
        err = _refused(cfg_path, capsys, 2, "refused the credentials", "check the password", "redis://127.0.0.1:")
        assert PASSWORD not in err
        monkeypatch.setenv("BATCHSCORE_REDIS_URL", server.url.replace(f":{PASSWORD}@", ""))  # none at all
        err = _refused(cfg_path, capsys, 2, "refused the credentials")
        assert PASSWORD not in err
        assert _snapshot(server.url, cfg.outputs.delta.path) == before
