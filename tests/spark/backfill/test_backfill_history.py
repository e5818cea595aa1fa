"""Backfills on real local Spark into a real Delta history table (read back with deltalake) and a
real redis-server for the online pointer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import backfill as bf
from batchscore.jobs.run import run
from batchscore.sinks.redis import RedisVersions
from batchscore.testing.demo_data import mlp_forward, mlp_weights, write_features

pytestmark = [pytest.mark.spark, pytest.mark.integration]

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
LAYERS = (8, 16, 1)


@pytest.fixture
def cfg_path(make_config: Any, tmp_path: Path) -> Path:
    """A model config whose input is one feature table per date (``{run_date}`` in input.path)."""
    for i, day in enumerate([*DAYS, "2026-11-20"]):
        write_features(tmp_path / "feats" / f"{day}.parquet", 300 + i, LAYERS[0], seed=100 + i)
    return make_config(rows=10, layers=LAYERS, input={"path": str(tmp_path / "feats" / "{run_date}.parquet")})


def direct_scores(features: str) -> dict[int, float]:
    t = pq.read_table(features)
    x = np.column_stack([t[f"f{i}"].to_numpy() for i in range(LAYERS[0])]).astype(np.float32)
    out = mlp_forward(mlp_weights(LAYERS), x)[:, 0]
    return dict(zip(t["user_id"].to_pylist(), out.tolist(), strict=True))


def history_rows(table: str) -> dict[str, dict[int, float]]:
    t = DeltaTable(table).to_pyarrow_table(columns=["run_date", "user_id", "score"]).to_pylist()
    out: dict[str, dict[int, float]] = {}
    for r in t:
        out.setdefault(r["run_date"], {})[r["user_id"]] = r["score"]
    return out


def pointer(cfg: Any, url: str) -> int | None:
    from batchscore.redis_conn import connect

    return RedisVersions(connect(url), layout.namespace(cfg.outputs.redis.key_prefix, cfg.name)).current()


def test_three_dates_become_three_partitions_with_the_models_scores(spark: Any, cfg_path: Path) -> None:
    cfg = load_model_config(cfg_path)
    report = bf.backfill(spark, cfg, days=DAYS)
    table = bf.history_path(cfg)
    assert table == cfg.outputs.delta.path + "_history"
    dt = DeltaTable(table)
    assert dt.metadata().partition_columns == ["run_date"]
    assert dt.version() == 2 and report["delta_version"] == 2  # one commit per date
    assert [r["status"] for r in report["dates"]] == ["written"] * 3
    got = history_rows(table)
    assert sorted(got) == DAYS
    for i, day in enumerate(DAYS):
        want = direct_scores(str(Path(cfg.input.path.replace("{run_date}", day))))
        assert len(got[day]) == 300 + i and got[day].keys() == want.keys()
        assert max(abs(got[day][k] - want[k]) for k in want) < 1e-5
    # each date's files live under its partition directory, written without the partition column
    for f in dt.file_uris():
        day = f.split("run_date=")[1][:10]
        assert "run_date" not in pq.read_schema(f.removeprefix("file://")).names and day in DAYS
    assert not Path(cfg.outputs.delta.path).exists()  # the published table is untouched


def test_rerun_changes_nothing_and_force_replaces_only_that_date(spark: Any, cfg_path: Path, capsys: Any) -> None:
    cfg = load_model_config(cfg_path)
    bf.backfill(spark, cfg, days=DAYS)
    table = bf.history_path(cfg)
    before, rows_before = DeltaTable(table).version(), history_rows(table)

    args = ["--model-config", str(cfg_path), "--from", DAYS[0], "--to", DAYS[-1], "--master", "local[2]"]
    assert bf.main(args) == 0
    assert DeltaTable(table).version() == before
    assert history_rows(table) == rows_before
    assert capsys.readouterr().out.count("skipped") == 3

    assert bf.main([*args[:3], DAYS[1], "--to", DAYS[1], "--master", "local[2]", "--force"]) == 0
    dt = DeltaTable(table)
    assert dt.version() == before + 1
    assert dt.history()[0]["batchscore.run_date"] == DAYS[1]
    assert dt.transaction_version(f"batchscore-backfill/{cfg.name}/{DAYS[1]}") == 2
    assert history_rows(table) == rows_before  # same input, same model: same scores, one partition swapped
    assert {f.split("run_date=")[1][:10] for f in dt.file_uris()} == set(DAYS)
    assert len(dt.file_uris()) == len(DeltaTable(table, version=before).file_uris())


def test_online_pointer_stays_on_the_newest_published_run(spark: Any, cfg_path: Path, redis_url: str) -> None:
    cfg = load_model_config(cfg_path)
    published = run(spark, bf.config_for(cfg, "2026-11-20"), run_id="2026-11-20_live", run_date="2026-11-20",
                    redis_url=redis_url)
    live = pointer(cfg, redis_url)
    assert live == published.redis_version

    bf.backfill(spark, cfg, days=DAYS)  # no --publish-online
    assert pointer(cfg, redis_url) == live
    report = bf.backfill(spark, cfg, days=DAYS, publish_online=True, redis_url=redis_url)
    assert pointer(cfg, redis_url) == live  # 2026-11-03 is older than the published 2026-11-20
    assert "not moved" in report["online"] and "2026-11-20" in report["online"]
    assert sorted(history_rows(bf.history_path(cfg))) == DAYS


def test_publish_online_moves_the_pointer_only_for_a_newer_newest_date(spark: Any, cfg_path: Path,
                                                                       redis_url: str) -> None:
    cfg = load_model_config(cfg_path)
    run(spark, bf.config_for(cfg, DAYS[0]), run_id=f"{DAYS[0]}_live", run_date=DAYS[0], redis_url=redis_url)
    live = pointer(cfg, redis_url)
    report = bf.backfill(spark, cfg, days=DAYS, publish_online=True, redis_url=redis_url)
    assert pointer(cfg, redis_url) != live and report["online"].startswith(f"moved to {DAYS[-1]}")
    from batchscore import ScoreReader

    want = direct_scores(cfg.input.path.replace("{run_date}", DAYS[-1]))
    found = ScoreReader(redis_url, prefix="t").get_many(cfg.name, list(want))
    assert max(abs(found[str(k)].value - want[k]) for k in want) < 1e-5  # type: ignore[union-attr]


def test_bad_range_is_refused_with_exit_2(cfg_path: Path, capsys: Any) -> None:
    assert bf.main(["--model-config", str(cfg_path), "--from", "2026-11-07", "--to", "2026-11-01"]) == 2
    assert "--from 2026-11-07 is after --to 2026-11-01" in capsys.readouterr().err
