"""``abfss://`` end to end on a real Azure Blob Storage server (Azurite on loopback): the pipeline with
every location in a container (score, validate, publish, lookup, a second run, rollback, history),
values read back with deltalake and from Redis equal to the model's own outputs; and bad input (a
missing container, a wrong account key, a missing object) refused in one line naming the URI and the
fix, exit 2, nothing published, the key never shown; the store stopped between runs: exit 4 naming the
endpoint, the Redis pointer unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import history as history_job
from batchscore.jobs import rollback as rollback_job
from batchscore.jobs import run as run_job
from batchscore.testing.local_redis import LocalRedis
from tests.integration.storage.conftest import (
    check_first_run,
    check_secret_unseen,
    delta_table,
    local_scores,
    published_baseline,
    small_project,
    upload,
)
from tests.integration.test_bad_input import _variant  # the same world-dict variant writer

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_pipeline_on_abfss_reads_back_the_models_scores(spark: Any, azure_project: Any, redis_url: str,
                                                        tmp_path: Path, azure_env: dict[str, str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = azure_project(rows=2000)
    cfg = load_model_config(path)
    assert cfg.input.path.startswith("abfss://")  # abfs:// is an alias
    want = local_scores(path)

    check_first_run(spark, cfg, run_id="a1", redis_url=redis_url, want=want, rows=2000, tmp_path=tmp_path)
    reader = ScoreReader(redis_url, prefix="t", pointer_ttl=0)

    # A second model version, then a rollback to the first: Redis and Delta serve the first again.
    from batchscore.testing.demo_data import write_onnx_mlp

    model2 = write_onnx_mlp(tmp_path / "model2.onnx", (8, 16, 1), seed=99)
    root = cfg.model.uri.rsplit("/", 1)[0]
    upload(model2, f"{root}/model2.onnx", {})
    cfg2 = cfg.model_copy(update={"model": cfg.model.model_copy(update={"uri": f"{root}/model2.onnx",
                                                                       "version": "v2"})})
    second = run_job.run(spark, cfg2, run_id="a2", run_date="2026-12-01", redis_url=redis_url)
    assert second.delta_version == 1
    assert reader.get("m", next(iter(want))).model_version == "v2"  # type: ignore[union-attr]
    assert rollback_job.main(["--model-config", str(path), "--to-version", "0"]) == 0
    back = reader.get_many("m", list(want))
    assert all(back[str(k)].value == want[k] and back[str(k)].model_version == "v1" for k in want)  # type: ignore[union-attr]
    live = delta_table(cfg.outputs.delta.path).to_pyarrow_table()
    assert set(live["run_id"].to_pylist()) == {"a1"} and live.num_rows == 2000
    capsys.readouterr()
    assert history_job.main(["--model-config", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["delta_version"] for r in rows] == [2, 1, 0] and rows[0]["redis"] == "current"

    # The account key is in no report, no Spark conf value, no Delta commit's metadata.
    check_secret_unseen(spark, cfg, azure_env["AZURE_STORAGE_ACCOUNT_KEY"], reports=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark: Any, azure_server: Any) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("azbad")
    mp = pytest.MonkeyPatch()
    for k, v in azure_server.env().items():
        mp.setenv(k, v)
    root = azure_server.make_container("bad-input")
    base = small_project(d, root, "bad", rows=300)
    with published_baseline(d, base, mp) as url:
        yield {"dir": d, "base": base, "url": url, "root": root, "server": azure_server}
    mp.undo()


def _published(world: dict[str, Any]) -> tuple[int, bytes | None]:
    return (delta_table(f"{world['root']}/pred").version(),
            redis.Redis.from_url(world["url"]).get(layout.pointer_key("t:bad")))


def _one_error(world: dict[str, Any], cfg: Path, run_id: str, capsys: pytest.CaptureFixture[str],
               **env: str) -> str:
    """Run ``cfg`` (with ``env`` set for the run only): exit 2, one error line, nothing published."""
    before = _published(world)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert run_job.main(["--model-config", str(cfg), "--run-id", run_id]) == 2
    out = capsys.readouterr()
    err = [line for line in out.err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 1, out.err
    assert world["server"].key not in out.err + out.out
    assert _published(world) == before  # nothing published
    return err[0]


def test_a_missing_container_is_named(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    gone = world["server"].uri("no-such-container")
    err = _one_error(world, _variant(world, "nocont", outputs={"delta": {"path": f"{gone}/pred"}}), "nc", capsys)
    assert f"{gone}/pred" in err and "container 'no-such-container' does not exist" in err and "create it" in err, err
    assert world["server"].endpoint in err  # where it looked


def test_a_missing_object_names_the_field(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_error(world, _variant(world, "nomodel", model={"uri": f"{world['root']}/gone.onnx"}), "nm", capsys)
    assert "gone.onnx not found" in err and "model.uri" in err, err


def test_a_wrong_account_key_is_refused_without_showing_it(world: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    wrong = base64.b64encode(b"not-the-key-" * 3).decode()
    err = _one_error(world, world["dir"] / "base.yaml", "wk", capsys, AZURE_STORAGE_ACCOUNT_KEY=wrong)
    assert "refused the credentials" in err and "AZURE_STORAGE_ACCOUNT_KEY" in err and wrong not in err, err


def test_an_unreachable_endpoint_exits_4_naming_it_and_publishes_nothing(
        tmp_path: Path, spark: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The store stopped between two runs (infrastructure, safe to retry): exit 4, one line naming the endpoint;
    the Redis pointer stays on the first run's version."""
    from batchscore.testing.local_azure import LocalAzure

    with LocalAzure() as server, LocalRedis() as rs:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("BATCHSCORE_REDIS_URL", rs.url)
        cfg = small_project(tmp_path, server.make_container("down"), "down", rows=200)
        (tmp_path / "down.yaml").write_text(yaml.safe_dump(cfg))
        assert run_job.main(["--model-config", str(tmp_path / "down.yaml"), "--run-id", "up"]) == 0
        pointer = redis.Redis.from_url(rs.url).get(layout.pointer_key("t:down"))
        server.stop()
        capsys.readouterr()
        assert run_job.main(["--model-config", str(tmp_path / "down.yaml"), "--run-id", "down"]) == 4
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("batchscore: error:")]
        assert len(err) == 1 and server.endpoint in err[0] and "unreachable" in err[0], err
        assert server.key not in err[0]
        assert redis.Redis.from_url(rs.url).get(layout.pointer_key("t:down")) == pointer
