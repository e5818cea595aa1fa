"""The whole pipeline with every location on a real S3 server (SeaweedFS on loopback): score,
validate, publish, lookup, a second run, rollback, history and backfill. Values read back from the
store with deltalake and from Redis equal the model's own outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batchscore import ScoreReader
from batchscore import storage as st
from batchscore.config import load_model_config
from batchscore.jobs import backfill as backfill_job
from batchscore.jobs import history as history_job
from batchscore.jobs import rollback as rollback_job
from batchscore.jobs import run as run_job
from tests.integration.storage.conftest import check_first_run, check_secret_unseen, delta_table, local_scores

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_pipeline_on_s3_reads_back_the_models_scores(spark: Any, s3_project: Any, redis_url: str,
                                                     tmp_path: Path, s3_env: dict[str, str]) -> None:
    path = s3_project(rows=3000)
    cfg = load_model_config(path)
    assert cfg.input.path.startswith("s3://")  # s3a:// is an alias
    want = local_scores(path)

    check_first_run(spark, cfg, run_id="s1", redis_url=redis_url, want=want, rows=3000, tmp_path=tmp_path)
    check_secret_unseen(spark, cfg, s3_env["AWS_SECRET_ACCESS_KEY"], reports=4)


def test_second_run_rollback_history_and_backfill_on_s3(spark: Any, s3_project: Any, redis_url: str,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = s3_project(rows=1500)
    cfg = load_model_config(path)
    want = local_scores(path)
    first = run_job.run(spark, cfg, run_id="a", run_date="2026-11-29", redis_url=redis_url)
    # A second model version over the same entities.
    from batchscore.testing.demo_data import write_onnx_mlp
    from tests.integration.storage.conftest import upload

    model2 = write_onnx_mlp(tmp_path / "model2.onnx", (8, 16, 1), seed=99)
    upload(model2, f"{cfg.model.uri.rsplit('/', 1)[0]}/model2.onnx", {})
    cfg2 = cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"uri": f"{cfg.model.uri.rsplit('/', 1)[0]}/model2.onnx", "version": "v2"})})
    second = run_job.run(spark, cfg2, run_id="b", run_date="2026-11-30", redis_url=redis_url)
    assert second.delta_version == first.delta_version + 1
    reader = ScoreReader(redis_url, prefix="t", pointer_ttl=0)
    assert reader.get("m", next(iter(want))).model_version == "v2"  # type: ignore[union-attr]

    assert rollback_job.main(["--model-config", str(path), "--to-version", str(first.delta_version)]) == 0
    back = reader.get_many("m", list(want))
    assert all(back[str(k)].value == want[k] and back[str(k)].model_version == "v1" for k in want)  # type: ignore[union-attr]
    live = delta_table(cfg.outputs.delta.path).to_pyarrow_table()
    assert set(live["run_id"].to_pylist()) == {"a"} and live.num_rows == 1500

    capsys.readouterr()
    assert history_job.main(["--model-config", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["delta_version"] for r in rows] == [2, 1, 0] and rows[0]["redis"] == "current"

    rep = backfill_job.backfill(spark, cfg, days=["2026-11-01", "2026-11-02"])
    hist = delta_table(backfill_job.history_path(cfg)).to_pyarrow_table()
    assert hist.num_rows == 3000 and sorted(set(hist["run_date"].to_pylist())) == ["2026-11-01", "2026-11-02"]
    day1 = hist.filter(pa.compute.equal(hist["run_date"], "2026-11-01"))
    assert dict(zip(day1["user_id"].to_pylist(), day1["score"].to_pylist(), strict=True)) == want
    assert [d["status"] for d in rep["dates"]] == ["written", "written"]
    again = backfill_job.backfill(spark, cfg, days=["2026-11-01"])
    assert again["dates"][0]["status"] == "skipped"

    # gc --staged on the store: a run scored and never published goes once past the retention.
    from batchscore.jobs import gc as gc_job
    from batchscore.jobs import score as score_job

    score_job.score(spark, cfg, run_id="never", run_date="2026-11-30")
    later = __import__("time").time() + 10 * 86400
    report = gc_job.staged_runs(cfg.outputs.delta.path, retention_hours=24, now=later, storage=cfg.store)
    assert [r["run_id"] for r in report["removed"]] == ["never"] and set(report["kept"]) == {"a", "b"}
    assert not st.list_files(f"{cfg.outputs.delta.path}/runs/never", suffix=".parquet")
    assert delta_table(cfg.outputs.delta.path).to_pyarrow_table().num_rows == 1500  # the live version intact
