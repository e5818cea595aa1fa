"""Incremental scoring with every location on a real S3 server (SeaweedFS on loopback): the
scoring tasks read the reference publication's files from the store themselves, reuse the
unchanged rows and score the changed ones; the publication equals the model run on everything."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import ScoreReader
from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs import run as run_job
from batchscore.jobs.reports import ScoreReport
from tests.integration.storage.conftest import delta_table, local_scores, upload

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_an_incremental_run_on_s3_reuses_the_published_rows_from_the_store(
        spark: Any, s3_project: Any, redis_url: str, s3_bucket: str, s3_env: dict[str, str]) -> None:
    path = s3_project(rows=3000, scoring={"incremental": True})
    cfg = load_model_config(path)
    run_job.run(spark, cfg, run_id="i1", run_date="2026-11-30", redis_url=redis_url)

    # 30 rows' features change (bits and all); the new table replaces the old one on the store.
    local = path.parent / "local-features.parquet"
    table = pq.read_table(local)
    rows = np.random.default_rng(5).choice(table.num_rows, size=30, replace=False)
    cols = {}
    for name in table.column_names:
        col = table[name].to_numpy().copy()
        if name.startswith("f"):
            col[rows] = col[rows] + np.float32(0.5)
        cols[name] = pa.array(col)
    pq.write_table(pa.table(cols), local)
    upload(local, f"{s3_bucket}/features/part-0.parquet", s3_env)

    run_job.run(spark, cfg, run_id="i2", run_date="2026-12-01", redis_url=redis_url)
    rep = state.read(cfg, "i2", ScoreReport)
    assert rep is not None and rep.scoring_mode == "incremental"
    assert (rep.rows_reused, rep.rows_rescored, rep.rows_new, rep.rows_dropped) == (2970, 30, 0, 0)

    want = local_scores(path)  # the model on the changed table, every row
    got = delta_table(cfg.outputs.delta.path).to_pyarrow_table()
    assert dict(zip(got["user_id"].to_pylist(), got["score"].to_pylist(), strict=True)) == want  # bit-exact
    found = ScoreReader(redis_url, prefix=cfg.outputs.redis.key_prefix).get_many(cfg.name, list(want))
    assert all(found[str(k)] is not None and found[str(k)].value == want[k] for k in want)  # type: ignore[union-attr]
