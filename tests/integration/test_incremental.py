"""``scoring.incremental``: runs that reuse unchanged rows publish exactly what scoring everything
publishes, bit for bit, in Delta and in Redis; a new artifact or ``--full`` rescores everything.
Real Spark (local[2]), a real redis-server, Delta tables read back with deltalake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from batchscore import ScoreReader
from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs import run as run_job
from batchscore.jobs.reports import ScoreReport
from batchscore.testing.demo_data import write_onnx_mlp

pytestmark = [pytest.mark.integration, pytest.mark.spark]
WIDTH = 6
FEATS = [f"f{i}" for i in range(WIDTH)]


class Table:
    """The input table as a key -> float32 row mapping, changed between runs and written as Parquet."""

    def __init__(self, rows: int, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows = {k: self.rng.normal(size=WIDTH).astype(np.float32) for k in range(rows)}
        self.next_key = rows

    def change(self, share: float, *, added: int = 0, removed: int = 0) -> set[int]:
        keys = sorted(self.rows)
        picked = self.rng.choice(len(keys), size=int(round(share * len(keys))), replace=False)
        changed = {keys[int(i)] for i in picked}
        for k in changed:
            self.rows[k] = self.rows[k] + self.rng.normal(size=WIDTH).astype(np.float32)
        for k in self.rng.choice(keys, size=removed, replace=False):
            self.rows.pop(int(k))
            changed.discard(int(k))
        for _ in range(added):
            self.rows[self.next_key] = self.rng.normal(size=WIDTH).astype(np.float32)
            self.next_key += 1
        return changed

    def write(self, path: Path) -> Path:
        keys = list(self.rows)
        self.rng.shuffle(keys)  # row order must not matter
        x = np.stack([self.rows[k] for k in keys])
        pq.write_table(pa.table({"user_id": pa.array(keys, pa.int64()),
                                 **{f: pa.array(x[:, j]) for j, f in enumerate(FEATS)}}), path, row_group_size=700)
        return path


def _config(tmp: Path, features: Path, model: Path, *, read: str = "files", incremental: bool = True) -> Path:
    cfg = {
        "name": "inc",
        "model": {"uri": str(model), "format": "onnx", "version": "v1"},
        "input": {"path": str(features), "key": "user_id", "features": FEATS, "read": read},
        "outputs": {"delta": {"path": str(tmp / "pred")}, "redis": {"key_prefix": "inc", "gc_grace_seconds": 0}},
        "scoring": {"batch_size": 300, "device": "cpu", "incremental": incremental},
        "validation": {"drift": {"enabled": False}, "row_count": {"tolerance": 1.0}},
        "runtime": {"report_dir": str(tmp / "runs")},
    }
    path = tmp / "inc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _direct(model: Path, table: Table) -> dict[int, np.float32]:
    import onnxruntime as ort

    keys = sorted(table.rows)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.stack([table.rows[k] for k in keys])})[0]
    return dict(zip(keys, out[:, 0], strict=True))


def _published(cfg: Any, redis_url: str) -> tuple[dict[int, Any], dict[int, float]]:
    pub = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    delta = dict(zip(pub["user_id"].to_pylist(), pub["score"].to_numpy(), strict=True))
    assert len(delta) == pub.num_rows  # one row per key
    found = ScoreReader(redis_url, prefix="inc").get_many(cfg.name, list(delta))
    return delta, {int(k): s.value for k, s in found.items() if s is not None}


def _run(spark: Any, cfg_path: Path, redis_url: str, run_id: str, *, full: bool = False) -> ScoreReport:
    cfg = load_model_config(cfg_path)
    run_job.run(spark, cfg, run_id=run_id, run_date="2026-12-01", redis_url=redis_url, full=full)
    rep = state.read(cfg, run_id, ScoreReport)
    assert rep is not None
    return rep


def _check(spark: Any, cfg_path: Path, model: Path, table: Table, redis_url: str) -> None:
    cfg = load_model_config(cfg_path)
    want = _direct(model, table)
    delta, online = _published(cfg, redis_url)
    assert sorted(delta) == sorted(want)  # dropped keys are gone, added keys are there
    assert all(delta[k] == want[k] for k in want)  # bit for bit: float32 equality, no tolerance
    assert online == {k: float(want[k]) for k in want}


@pytest.mark.parametrize("where", ["tasks", "driver", "spark"])
def test_four_runs_publish_what_a_full_rescoring_publishes(spark: Any, redis_url: str, tmp_path: Path, where: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from batchscore.jobs import incremental

    if where == "spark":  # the plan for references too big for the driver: Spark's join
        monkeypatch.setattr(incremental, "DRIVER_ROWS", 0)
    if where == "driver":  # references too big to broadcast to the tasks: the join in Arrow on the driver
        monkeypatch.setattr(incremental, "TASK_ROWS", 0)
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=21)
    table = Table(4000)
    feats = tmp_path / "f.parquet"
    cfg_path = _config(tmp_path, table.write(feats), model)

    first = _run(spark, cfg_path, redis_url, "r0")
    assert first.scoring_mode == "full: no publication to reuse yet"
    _check(spark, cfg_path, model, table, redis_url)

    for i, (share, added, removed) in enumerate([(0.0, 0, 0), (0.01, 25, 30), (0.30, 40, 10), (1.0, 5, 5)]):
        before = len(table.rows)
        changed = table.change(share, added=added, removed=removed)
        table.write(feats)
        rep = _run(spark, cfg_path, redis_url, f"r{i + 1}")
        if share <= 0.30:
            assert rep.scoring_mode == "incremental"
            assert (rep.rows_rescored, rep.rows_new, rep.rows_dropped) == (len(changed), added, removed)
            assert rep.rows_reused == before - removed - len(changed)
        else:
            assert rep.scoring_mode.startswith("full: ") and "changed or new, above" in rep.scoring_mode
        _check(spark, cfg_path, model, table, redis_url)

    # A new artifact (same path, new weights) rescores everything; so does --full.
    write_onnx_mlp(model, (WIDTH, 16, 1), seed=22)
    rep = _run(spark, cfg_path, redis_url, "r5")
    assert rep.scoring_mode.startswith("full: the model artifact changed") and rep.rows_reused == 0
    _check(spark, cfg_path, model, table, redis_url)
    table.change(0.01)
    table.write(feats)
    rep = _run(spark, cfg_path, redis_url, "r6", full=True)
    assert rep.scoring_mode == "full: --full"
    _check(spark, cfg_path, model, table, redis_url)


def test_spark_scan_path_reuses_too(spark: Any, redis_url: str, tmp_path: Path) -> None:
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=23)
    table = Table(2500, seed=4)
    feats = tmp_path / "f.parquet"
    cfg_path = _config(tmp_path, table.write(feats), model, read="spark")
    _run(spark, cfg_path, redis_url, "s0")
    changed = table.change(0.02, added=7, removed=3)
    table.write(feats)
    rep = _run(spark, cfg_path, redis_url, "s1")
    assert rep.scoring_mode == "incremental" and (rep.rows_rescored, rep.rows_new, rep.rows_dropped) == (
        len(changed), 7, 3)
    _check(spark, cfg_path, model, table, redis_url)


def test_turning_incremental_on_and_off_on_a_published_table(spark: Any, redis_url: str, tmp_path: Path) -> None:
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=24)
    table = Table(1500, seed=6)
    feats = table.write(tmp_path / "f.parquet")
    _config(tmp_path, feats, model, incremental=False)
    cfg_path = tmp_path / "inc.yaml"
    assert _run(spark, cfg_path, redis_url, "o0").scoring_mode == "full"
    _config(tmp_path, feats, model)  # switched on: the published table has no hashes yet
    rep = _run(spark, cfg_path, redis_url, "o1")
    assert rep.scoring_mode.startswith("full: Delta version 0 lacks feature_hash, model_sha256")
    table.change(0.05)
    table.write(feats)
    rep = _run(spark, cfg_path, redis_url, "o2")
    assert rep.scoring_mode == "incremental" and rep.rows_reused == 1500 - 75
    _check(spark, cfg_path, model, table, redis_url)
    _config(tmp_path, feats, model, incremental=False)  # and off again: the columns go
    assert _run(spark, cfg_path, redis_url, "o3").scoring_mode == "full"
    assert "feature_hash" not in DeltaTable(load_model_config(cfg_path).outputs.delta.path).schema().to_arrow().names
    _check(spark, cfg_path, model, table, redis_url)


def test_incremental_with_quarantine_sets_aside_rows_that_went_bad(spark: Any, redis_url: str,
                                                                  tmp_path: Path) -> None:
    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=25)
    table = Table(1200, seed=8)
    feats = table.write(tmp_path / "f.parquet")
    cfg_path = _config(tmp_path, feats, model)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["input"]["on_invalid"] = "quarantine"
    cfg_path.write_text(yaml.safe_dump(raw))
    _run(spark, cfg_path, redis_url, "q0")
    for k in (3, 4):
        table.rows[k] = table.rows[k].copy()
        table.rows[k][1] = np.nan
    table.write(feats)
    rep = _run(spark, cfg_path, redis_url, "q1")
    assert rep.scoring_mode == "incremental" and rep.rows_rescored == 2 and rep.rows_reused == 1198
    assert rep.quarantine == {"non_finite_feature": 2}
    bad = {3: table.rows.pop(3), 4: table.rows.pop(4)}
    _check(spark, cfg_path, model, table, redis_url)  # published: everything but the two bad rows
    q = DeltaTable(str(tmp_path / "pred_quarantine")).to_pyarrow_table().to_pylist()
    assert sorted((r["key"], r["run_id"]) for r in q) == [("3", "q1"), ("4", "q1")] and len(bad) == 2


def test_a_task_killed_after_writing_its_file_in_an_incremental_run_counts_and_publishes_once(
        spark: Any, redis_url: str, tmp_path: Path) -> None:
    """The one-pass plan's counts come from the attempts Spark kept: an attempt SIGKILLed after
    writing its file (retried: local[2,4]) adds nothing to them or to the publication."""
    from tests.integration.publish.conftest import start_cli

    model = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=26)
    table = Table(3000, seed=9)
    feats = tmp_path / "f.parquet"
    cfg_path = _config(tmp_path, table.write(feats), model)
    _run(spark, cfg_path, redis_url, "k0")
    changed = table.change(0.02, added=11, removed=6)
    table.write(feats)
    marker = tmp_path / "killed-once"
    proc = start_cli("run", cfg_path, redis_url, "--run-id", "k1", "--master", "local[2,4]",
                     BATCHSCORE_KILL_TASK_ONCE=f"after_staged_write:{marker}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert marker.exists()  # an attempt really died after writing its file
    rep = state.read(load_model_config(cfg_path), "k1", ScoreReport)
    assert rep is not None and rep.scoring_mode == "incremental"
    assert (rep.rows_reused, rep.rows_rescored, rep.rows_new, rep.rows_dropped) == (
        3000 - 6 - len(changed), len(changed), 11, 6)
    _check(spark, cfg_path, model, table, redis_url)
