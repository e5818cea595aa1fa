"""End to end on real local Spark, a real redis-server and a Delta table read back with deltalake."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from deltalake import DeltaTable

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import run as run_job
from batchscore.testing.demo_data import mlp_forward, mlp_weights

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def direct_scores(cfg_path: Path, seed: int = 7) -> dict[int, np.ndarray]:
    """The model run directly (numpy reference of the generated MLP) on every input row."""
    cfg = load_model_config(cfg_path)
    table = pq.read_table(cfg.input.path)
    x = np.column_stack([table[c].to_numpy() for c in cfg.input.features or []]).astype(np.float32)
    layers = (x.shape[1], 16, len(cfg.outputs.columns))
    out = mlp_forward(mlp_weights(layers, seed=seed), x)
    return dict(zip(table[cfg.input.key].to_pylist(), out, strict=True))


def onnx_scores(cfg_path: Path) -> dict[int, np.ndarray]:
    import onnxruntime as ort

    cfg = load_model_config(cfg_path)
    table = pq.read_table(cfg.input.path)
    x = np.column_stack([table[c].to_numpy() for c in cfg.input.features or []]).astype(np.float32)
    sess = ort.InferenceSession(cfg.model_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return dict(zip(table[cfg.input.key].to_pylist(), out, strict=True))


def run_pipeline(spark: Any, cfg_path: Path, url: str, run_id: str) -> Any:
    cfg = load_model_config(cfg_path)
    return run_job.run(spark, cfg, run_id=run_id, run_date="2026-11-22", redis_url=url)


def test_every_row_reaches_delta_and_redis_with_the_models_score(spark: Any, make_config: Any, redis_url: str,
                                                                tmp_path: Path) -> None:
    from batchscore.testing.demo_data import write_onnx_mlp

    # A model no other test uses (its own seed, so its own content hash): no Python worker has it cached.
    model = write_onnx_mlp(tmp_path / "unique.onnx", (8, 16, 1), seed=4711)
    cfg_path = make_config(rows=3000, model={"uri": str(model)})
    report = run_pipeline(spark, cfg_path, redis_url, "r1")
    cfg = load_model_config(cfg_path)
    want = onnx_scores(cfg_path)
    ref = direct_scores(cfg_path, seed=4711)
    assert max(abs(float(want[k][0]) - float(ref[k][0])) for k in want) < 1e-5  # ONNX == the MLP

    dt = DeltaTable(cfg.outputs.delta.path)
    assert dt.version() == report.delta_version == 0
    got = dt.to_pyarrow_table()
    assert got.num_rows == 3000
    assert set(got.column_names) >= {"user_id", "score", "model_version", "run_id", "scored_at"}
    delta_scores = dict(zip(got["user_id"].to_pylist(), got["score"].to_numpy(), strict=True))
    assert delta_scores.keys() == want.keys()
    assert all(delta_scores[k] == want[k][0] for k in want)  # bit-exact float32
    assert set(got["run_id"].to_pylist()) == {"r1"} and set(got["model_version"].to_pylist()) == {"v1"}

    reader = ScoreReader(redis_url, prefix="t")
    found = reader.get_many("m", list(want))
    assert all(found[str(k)] is not None for k in want)
    assert all(found[str(k)].value == float(want[k][0]) for k in want)  # type: ignore[union-attr]
    assert {s.version_id for s in found.values() if s} == {report.redis_version}
    assert reader.get("m", 10**9) is None
    assert dt.history()[0]["batchscore.run_id"] == "r1"
    # One load per Python worker that scored (local[2]: one or two), never one per batch or task.
    assert 1 <= report.model_loads <= 2


def test_second_run_swaps_atomically_for_a_polling_reader(spark: Any, make_config: Any, redis_url: str,
                                                          tmp_path: Path) -> None:
    cfg_path = make_config(rows=2000)
    first = run_pipeline(spark, cfg_path, redis_url, "a")
    old = onnx_scores(cfg_path)
    # The second run scores a different model over the same entities.
    from batchscore.testing.demo_data import write_onnx_mlp

    model2 = tmp_path / "model2.onnx"
    write_onnx_mlp(model2, (8, 16, 1), seed=99)
    cfg2 = make_config(name="m", model={"uri": str(model2), "version": "v2"})
    new = onnx_scores(cfg2)
    assert any(old[k][0] != new[k][0] for k in old)

    keys = [str(k) for k in list(old)[:200]]
    seen: list[tuple[int, bool]] = []
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        reader = ScoreReader(redis_url, prefix="t", pointer_ttl=0)
        while not stop.is_set():
            batch = reader.get_many("m", keys)
            versions = {s.version_id for s in batch.values() if s}
            if None in batch.values() or len(versions) != 1:
                errors.append(f"missing or mixed: {versions}")
                continue
            v = versions.pop()
            table = old if v == first.redis_version else new
            exact = all(batch[k].value == float(table[int(k)][0]) for k in keys)  # type: ignore[union-attr]
            seen.append((v, exact))

    t = threading.Thread(target=poll)
    t.start()
    try:
        second = run_pipeline(spark, cfg2, redis_url, "b")
    finally:
        stop.set()
        t.join()
    assert not errors
    assert all(exact for _, exact in seen)
    assert {v for v, _ in seen} <= {first.redis_version, second.redis_version}
    assert layout.parse_version_id(second.redis_version)[0] > layout.parse_version_id(first.redis_version)[0]
    assert second.delta_version == first.delta_version + 1
    final = ScoreReader(redis_url, prefix="t").get_many("m", keys)
    assert all(final[k].value == float(new[int(k)][0]) and final[k].model_version == "v2" for k in keys)  # type: ignore[union-attr]
    # Delta: the live table holds only the new run; the old version is still readable.
    cfg = load_model_config(cfg2)
    live = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    assert live.num_rows == 2000 and set(live["run_id"].to_pylist()) == {"b"}
    assert DeltaTable(cfg.outputs.delta.path, version=0).to_pyarrow_table().num_rows == 2000
    # keep_versions=1: the replaced version is kept as the rollback target (nothing older exists).
    r = redis.Redis.from_url(redis_url)
    assert r.hget(layout.meta_key("t:m", first.redis_version), "state") == b"retired"
    assert [v.decode() for v in r.zrange(layout.versions_key("t:m"), 0, -1)] == [
        first.redis_version, second.redis_version]
