"""Faults with every location on a real S3 server (SeaweedFS on loopback), replayed for real:
a scoring task killed after writing its file, the driver killed after staging and before the
commit, two committers racing one table version, the store stopped mid-run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore import storage as st
from batchscore.config import load_model_config
from batchscore.sinks import delta
from tests.integration.publish.conftest import start_cli, wait_for
from tests.integration.storage.conftest import delta_table, local_scores

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _finish(proc: Any, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return str(out)


def _exact(cfg: Any, url: str, want: dict[int, float], run_id: str) -> None:
    """Delta (read back from S3) and Redis hold every row exactly once, with the model's scores."""
    live = delta_table(cfg.outputs.delta.path).to_pyarrow_table()
    keys = live["user_id"].to_pylist()
    assert len(keys) == len(set(keys)) == len(want)
    assert dict(zip(keys, live["score"].to_pylist(), strict=True)) == want
    assert set(live["run_id"].to_pylist()) == {run_id}
    found = ScoreReader(url, prefix="t", pointer_ttl=0).get_many("m", list(want))
    assert all(found[str(k)] is not None and found[str(k)].value == want[k] for k in want)  # type: ignore[union-attr]


def test_a_task_killed_after_writing_its_file_commits_its_rows_once(s3_project: Any, redis_url: str,
                                                                    tmp_path: Path) -> None:
    path = s3_project(rows=4000)
    cfg = load_model_config(path)
    marker = tmp_path / "killed-once"
    proc = start_cli("run", path, redis_url, "--run-id", "k1", "--master", "local[2,4]",
                     BATCHSCORE_KILL_TASK_ONCE=f"after_staged_write:{marker}")
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert marker.exists()  # an attempt really died after its file was written
    run = delta.run_uri(cfg.outputs.delta.path, "k1")
    manifest = delta.stage(cfg.outputs.delta.path, "k1", cfg.store)
    on_store = {u.rsplit("/", 1)[1] for u, _ in st.list_files(run, cfg.store, suffix=".parquet")}
    assert on_store == {r.rsplit("/", 1)[1] for r in manifest.relative_files}  # the dead attempt's file is gone
    _exact(cfg, redis_url, local_scores(path), "k1")


def test_driver_killed_after_staging_before_the_commit_then_rerun_converges(s3_project: Any, redis_url: str) -> None:
    path = s3_project(rows=2500)
    cfg = load_model_config(path)
    proc = start_cli("run", path, redis_url, "--run-id", "d1", "--master", "local[2]",
                     BATCHSCORE_CRASH_AT="after_redis_load")
    out = _finish(proc)
    assert proc.returncode == -9, out
    assert not delta.is_table(cfg.outputs.delta.path, cfg.store)  # killed before the commit
    proc = start_cli("run", path, redis_url, "--run-id", "d1", "--master", "local[2]")
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert delta_table(cfg.outputs.delta.path).version() == 0  # one commit
    _exact(cfg, redis_url, local_scores(path), "d1")


def test_two_committers_racing_one_table_version_on_s3(s3_project: Any, redis_url: str) -> None:
    """Two commits built on the same snapshot: exactly one wins (the store's create-if-absent PUT of
    the log entry), the other is a clean CommitConflict; the winner's rows are intact."""
    import pyarrow.parquet as pq

    path = s3_project(rows=100)
    cfg = load_model_config(path)
    table, store = cfg.outputs.delta.path, cfg.store
    staged = {}
    for run_id, n in (("base", 10), ("x", 20), ("y", 30)):
        fs, p = store.filesystem(st.join(delta.run_uri(table, run_id), "part-00000-0.parquet"))
        with fs.open_output_stream(p) as f:
            pq.write_table(pa.table({"user_id": pa.array(range(n), pa.int64()),
                                     "score": pa.array([0.5] * n, pa.float32())}), f)
        staged[run_id] = delta.stage(table, run_id, store)
    assert delta.commit(table, staged["base"], model="m", run_id="base", metadata={}, storage=store) == 0
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def commit(run_id: str) -> None:
        barrier.wait()
        try:
            results[run_id] = delta.commit(table, staged[run_id], model="m", run_id=run_id, metadata={}, expected=0,
                                           storage=store)
        except delta.CommitConflict as exc:
            results[run_id] = exc

    threads = [threading.Thread(target=commit, args=(r,)) for r in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r, v in results.items() if v == 1]
    lost = [r for r, v in results.items() if isinstance(v, delta.CommitConflict)]
    assert len(won) == 1 and len(lost) == 1, results
    live = delta_table(table).to_pyarrow_table()
    assert delta_table(table).version() == 1 and live.num_rows == {"x": 20, "y": 30}[won[0]]
    assert delta_table(table).history()[0]["batchscore.run_id"] == won[0]
    # A committer that read the table before that commit (a paused publisher, a slow retry) is refused
    # by the compare-and-set on the version it read, not merely by losing a simultaneous PUT.
    with pytest.raises(delta.CommitConflict):
        delta.commit(table, staged[lost[0]], model="m", run_id=lost[0], metadata={}, expected=0, storage=store)
    assert delta_table(table).version() == 1 and delta_table(table).to_pyarrow_table().num_rows == live.num_rows


def test_store_stopped_mid_run_exits_4_naming_the_endpoint_then_rerun_converges(
        s3_server_private: Any, make_config: Any, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.storage.conftest import upload

    s3 = s3_server_private
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3.make_bucket("mid-run")
    import yaml

    local = yaml.safe_load(make_config(rows=2000).read_text())
    upload(Path(local["model"]["uri"]), f"{bucket}/model.onnx", {})
    upload(Path(local["input"]["path"]), f"{bucket}/features/part-0.parquet", {})
    cfg_d = {**local, "model": {**local["model"], "uri": f"{bucket}/model.onnx"},
             "input": {**local["input"], "path": f"{bucket}/features"},
             "outputs": {**local["outputs"], "delta": {"path": f"{bucket}/predictions"}},
             "runtime": {"report_dir": f"{bucket}/runs"}}
    path = tmp_path / "s3-model.yaml"
    path.write_text(yaml.safe_dump(cfg_d))
    (tmp_path / "local-features.parquet").write_bytes(Path(local["input"]["path"]).read_bytes())
    r = redis.Redis.from_url(redis_url)

    proc = start_cli("run", path, redis_url, "--run-id", "m1", "--master", "local[2]",
                     BATCHSCORE_PAUSE_AT="after_redis_load:6")

    def loaded() -> bool:
        return any(r.hget(k, "state") == b"loaded" for k in r.scan_iter("{t:m}:meta:*"))

    wait_for(loaded, 180, "the Redis load to finish")
    s3.stop()  # the store goes away between the load and the Delta commit
    out = _finish(proc)
    assert proc.returncode == 4, out
    error = [line for line in out.splitlines() if line.startswith("batchscore: error:")]
    assert len(error) == 1 and s3.endpoint in error[0] and "unreachable" in error[0], out
    assert r.get(layout.pointer_key("t:m")) is None  # nothing published
    s3.restart()
    assert not delta.is_table(f"{bucket}/predictions")
    proc = start_cli("run", path, redis_url, "--run-id", "m1", "--master", "local[2]")
    out = _finish(proc)
    assert proc.returncode == 0, out
    cfg = load_model_config(path)
    _exact(cfg, redis_url, local_scores(path), "m1")
