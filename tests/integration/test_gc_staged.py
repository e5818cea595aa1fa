"""``batchscore gc --staged``: staged runs never published go after the retention; nothing else does.

Real local Spark, a real redis-server and a real Delta table: two published runs (the first no
longer live), one rejected by validation, one abandoned after scoring, one still young, and a
directory that is not a run's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from deltalake import DeltaTable

from batchscore.config import load_model_config
from batchscore.errors import ValidationRejectedError
from batchscore.jobs import gc
from batchscore.jobs import run as run_job
from batchscore.jobs.score import score
from batchscore.jobs.validate import validate

pytestmark = [pytest.mark.integration, pytest.mark.spark]
DAY = 86400.0


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it ``seconds`` old."""
    when = time.time() - seconds
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(parent, name), (when, when))
    os.utime(path, (when, when))


def test_gc_staged_removes_only_old_unpublished_runs(
    spark: Any, make_config: Any, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg_path = make_config(rows=400)
    cfg = load_model_config(cfg_path)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["validation"]["range"] = {"min": 0.0, "max": 0.01}  # every score is above: rejected
    rejecting = tmp_path / "m_rejecting.yaml"
    rejecting.write_text(yaml.safe_dump(raw))

    run_job.run(spark, cfg, run_id="pub1", run_date="2026-11-20", redis_url=redis_url)
    score(spark, cfg, run_id="rejected", run_date="2026-11-21")
    with pytest.raises(ValidationRejectedError):
        validate(spark, load_model_config(rejecting), run_id="rejected")
    score(spark, cfg, run_id="abandoned", run_date="2026-11-21")
    score(spark, cfg, run_id="young", run_date="2026-11-22")
    run_job.run(spark, cfg, run_id="pub2", run_date="2026-11-22", redis_url=redis_url)

    runs = Path(cfg.outputs.delta.path) / "runs"
    junk = runs / ".spark-staging-1"
    junk.mkdir()
    (junk / "part-0.parquet").write_bytes(b"x")
    for name in ("pub1", "pub2", "rejected", "abandoned", ".spark-staging-1"):
        _age(runs / name, 30 * DAY)
    _age(runs / "young", 2 * DAY)
    live_before = sorted(DeltaTable(cfg.outputs.delta.path).file_uris())
    capsys.readouterr()

    assert gc.main(["--model-config", str(cfg_path), "--staged"]) == 0
    out = capsys.readouterr()
    assert sorted(p.name for p in runs.iterdir()) == [".spark-staging-1", "pub1", "pub2", "young"]
    assert "staged removed   : abandoned, rejected (" in out.out
    assert "1 live, 1 published, 1 younger than the retention" in out.out
    assert "removed staged run rejected" in out.err and "never published" in out.err

    # The table is untouched: same live files, all present, every row readable.
    dt = DeltaTable(cfg.outputs.delta.path)
    assert sorted(dt.file_uris()) == live_before
    assert dt.to_pyarrow_table().num_rows == 400
    assert all(Path(u.removeprefix("file://")).exists() for u in live_before)

    # A shorter retention takes the young run too; published runs stay whatever their age.
    report = gc.staged_runs(cfg.outputs.delta.path, retention_hours=24)
    assert [r["run_id"] for r in report["removed"]] == ["young"]
    assert report["kept"] == {"pub1": "published", "pub2": "live (files of the current Delta version)"}
    assert report["ignored"] == [".spark-staging-1"]
    with pytest.raises(SystemExit) as refused:  # 0 h would take a run being scored right now
        gc.main(["--model-config", str(cfg_path), "--staged", "--staged-retention-hours", "0"])
    assert refused.value.code == 2


def test_gc_staged_without_a_table_or_runs_is_a_no_op(tmp_path: Path) -> None:
    assert gc.staged_runs(str(tmp_path / "none"), retention_hours=1)["removed"] == []
    (tmp_path / "t" / "runs" / "r1").mkdir(parents=True)
    _age(tmp_path / "t" / "runs" / "r1", 10 * DAY)
    report = gc.staged_runs(str(tmp_path / "t"), retention_hours=1)  # no Delta table yet: nothing published
    assert [r["run_id"] for r in report["removed"]] == ["r1"]
