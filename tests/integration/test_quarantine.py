"""``input.on_invalid: quarantine``: each class of bad row lands in the quarantine Delta table with its
reason, the others publish with the model's exact scores, and the ``quarantine_rate`` rule blocks a run
that sets too many rows aside (exit 3, nothing published). Real Spark, redis-server and Delta."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from deltalake import DeltaTable

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import run as run_job
from batchscore.jobs import score as score_job
from batchscore.testing.demo_data import write_onnx_mlp

pytestmark = [pytest.mark.integration, pytest.mark.spark]
FEATS = [f"f{i}" for i in range(4)]
ROWS = 2000


def _sqrt_model(path: Path) -> Path:
    """scores = sqrt(f0): NaN exactly where f0 < 0 (a non-finite output from finite features); the
    other features are ignored (a NaN there still gives a finite score)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    first = np.array([0], dtype=np.int64)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["features", "I"], ["m"], axis=1), helper.make_node("Sqrt", ["m"], ["scores"])],
        "sqrt", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1])], [numpy_helper.from_array(first, "I")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _features(path: Path, *, null_keys: tuple[int, ...] = (), nulls: tuple[int, ...] = (),
              nans: tuple[int, ...] = (), infs: tuple[int, ...] = (), negative: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 1.0, size=(ROWS, 4)).astype(np.float32)
    for i in nans:
        x[i, 2] = np.nan
    for i in infs:
        x[i, 3] = -np.inf
    for i in negative:
        x[i, 0] = -4.0
    keys = pa.array([None if i in null_keys else i for i in range(ROWS)], pa.int64())
    cols = {"user_id": keys}
    for j in range(4):
        mask = np.array([j == 1 and i in nulls for i in range(ROWS)])
        cols[f"f{j}"] = pa.array(x[:, j], pa.float32(), mask=mask)
    pq.write_table(pa.table(cols), path)
    return path


def _config(tmp: Path, name: str, features: Path, model: Path, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": name,
        "model": {"uri": str(model), "format": "onnx", "version": "v1"},
        "input": {"path": str(features), "key": "user_id", "features": FEATS, "on_invalid": "quarantine"},
        "outputs": {"delta": {"path": str(tmp / f"{name}_pred")}, "redis": {"key_prefix": "q"}},
        "scoring": {"batch_size": 256, "device": "cpu"},
        "validation": {"drift": {"enabled": False}},
        "runtime": {"report_dir": str(tmp / "runs")},
    }
    for section, patch in extra.items():
        cfg.setdefault(section, {}).update(patch)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _direct(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0])


def _matrix(path: Path) -> tuple[list[Any], np.ndarray]:
    t = pq.read_table(path)
    return t["user_id"].to_pylist(), np.column_stack([t[c].to_numpy(zero_copy_only=False) for c in FEATS])


def _quarantined(cfg_path: Path, run_id: str) -> list[dict[str, Any]]:
    cfg = load_model_config(cfg_path)
    table = DeltaTable(f"{cfg.outputs.delta.path}_quarantine").to_pyarrow_table()
    return [r for r in table.to_pylist() if r["run_id"] == run_id]


@pytest.mark.parametrize("read", ["files", "spark"])
def test_each_bad_row_class_is_quarantined_and_the_rest_publish(spark: Any, redis_url: str, tmp_path: Path,
                                                                read: str) -> None:
    feats = _features(tmp_path / "f.parquet", null_keys=(5, 6), nulls=(10, 11, 12), nans=(20,), infs=(30,),
                      negative=(40, 41))
    model = _sqrt_model(tmp_path / "sqrt.onnx")
    cfg_path = _config(tmp_path, f"qa_{read}", feats, model, input={"read": read},
                       validation={"quarantine_rate": {"max": 0.05}, "drift": {"enabled": False}})
    cfg = load_model_config(cfg_path)
    rep = run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)

    rows = _quarantined(cfg_path, "r1")
    got = sorted(((r["key"] or ""), r["reason"], r["column"]) for r in rows)
    assert got == sorted([
        ("", "null_key", "user_id"), ("", "null_key", "user_id"),
        ("10", "non_finite_feature", "f1"), ("11", "non_finite_feature", "f1"), ("12", "non_finite_feature", "f1"),
        ("20", "non_finite_feature", "f2"), ("30", "non_finite_feature", "f3"),
        ("40", "non_finite_output", "score"), ("41", "non_finite_output", "score"),
    ])
    by_key = {r["key"]: r for r in rows if r["key"]}
    assert json.loads(by_key["30"]["values"])[3] == float("-inf")  # the row's values, as the model would see them
    assert json.loads(by_key["40"]["detail"]) == {"score": None} or "NaN" in by_key["40"]["detail"]
    assert {r["model_version"] for r in rows} == {"v1"}

    scored = state_report(cfg, "r1")
    assert scored.quarantined_rows == 9 and scored.input_rows == ROWS
    assert scored.quarantine == {"non_finite_feature": 5, "non_finite_output": 2, "null_key": 2}
    assert rep.rows == ROWS - 9

    keys, x = _matrix(feats)
    bad = {5, 6, 10, 11, 12, 20, 30, 40, 41}
    good = [i for i in range(ROWS) if i not in bad]
    want = _direct(model, x[good])[:, 0]
    pub = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    published = dict(zip(pub["user_id"].to_pylist(), pub["score"].to_numpy(), strict=True))
    assert sorted(published) == [keys[i] for i in good]
    assert all(published[keys[i]] == w for i, w in zip(good, want, strict=True))  # bit-exact float32
    reader = ScoreReader(redis_url, prefix="q")
    found = reader.get_many(cfg.name, [keys[i] for i in good] + [40, 10])
    assert all(found[str(keys[i])].value == float(w) for i, w in zip(good, want, strict=True))  # type: ignore[union-attr]
    assert found["40"] is None and found["10"] is None


def test_array_rows_of_the_wrong_length_or_null_are_quarantined(spark: Any, redis_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, size=(ROWS, 4)).astype(np.float32)
    arrays: list[Any] = [list(map(float, r)) for r in x]
    arrays[7] = arrays[7][:3]
    arrays[8] = None
    arrays[9] = [*arrays[9], 1.0]
    path = tmp_path / "arr.parquet"
    pq.write_table(pa.table({"user_id": pa.array(range(ROWS), pa.int64()),
                             "v": pa.array(arrays, pa.list_(pa.float32()))}), path)
    model = write_onnx_mlp(tmp_path / "mlp.onnx", (4, 8, 1))
    cfg_path = _config(tmp_path, "qarr", path, model,
                       input={"features": None, "feature_array": "v", "feature_count": 4})
    raw = yaml.safe_load(cfg_path.read_text())
    raw["input"].pop("features")
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_model_config(cfg_path)
    run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    rows = sorted((r["key"], r["reason"], r["column"]) for r in _quarantined(cfg_path, "r1"))
    assert rows == [("7", "array_length", "v"), ("8", "null_array", "v"), ("9", "array_length", "v")]
    good = [i for i in range(ROWS) if i not in (7, 8, 9)]
    pub = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    published = dict(zip(pub["user_id"].to_pylist(), pub["score"].to_numpy(), strict=True))
    want = _direct(model, x[good])[:, 0]
    assert sorted(published) == good and all(published[i] == w for i, w in zip(good, want, strict=True))


def test_quarantine_rate_blocks_and_nothing_is_published(spark: Any, redis_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = write_onnx_mlp(tmp_path / "mlp.onnx", (4, 8, 1))
    clean = _features(tmp_path / "clean.parquet")
    cfg_path = _config(tmp_path, "qblock", clean, model)
    assert run_job.main(["--model-config", str(cfg_path), "--run-id", "ok"]) == 0
    cfg = load_model_config(cfg_path)
    r = redis.Redis.from_url(redis_url)
    before = DeltaTable(cfg.outputs.delta.path).version(), r.get(layout.pointer_key("q:qblock"))
    assert before[1] is not None

    dirty = _features(tmp_path / "dirty.parquet", nans=tuple(range(100, 150)))  # 2.5 % > the default 1 %
    raw = yaml.safe_load(cfg_path.read_text())
    raw["input"]["path"] = str(dirty)
    cfg_path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    for _attempt in range(2):  # a retry of the same run id replaces its quarantined rows, never doubles them
        assert run_job.main(["--model-config", str(cfg_path), "--run-id", "dirty"]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 2 and "quarantine_rate" in err[0] and "50 of 2,000 input rows quarantined" in err[0], err
    assert (DeltaTable(cfg.outputs.delta.path).version(), r.get(layout.pointer_key("q:qblock"))) == before
    rows = _quarantined(cfg_path, "dirty")
    assert sorted(int(r["key"]) for r in rows) == list(range(100, 150))
    assert _quarantined(cfg_path, "ok") == []


def test_allow_nan_scores_nan_features_instead(spark: Any, redis_url: str, tmp_path: Path) -> None:
    model = _sqrt_model(tmp_path / "sqrt.onnx")
    feats = _features(tmp_path / "f.parquet", nans=(3,), null_keys=(4,))
    cfg_path = _config(tmp_path, "qnan", feats, model, input={"allow_nan": True},
                       validation={"null_rate": {"max": 0.01}, "quarantine_rate": {"max": 0.01},
                                   "drift": {"enabled": False}})
    cfg = load_model_config(cfg_path)
    run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    assert [(r["key"], r["reason"]) for r in _quarantined(cfg_path, "r1")] == [(None, "null_key")]
    pub = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    published = dict(zip(pub["user_id"].to_pylist(), pub["score"].to_numpy(), strict=True))
    keys, x = _matrix(feats)
    assert np.isnan(x[3, 2]) and len(published) == ROWS - 1
    assert published[3] == _direct(model, x[3:4])[0, 0] == np.sqrt(x[3, 0])  # scored, not set aside


def state_report(cfg: Any, run_id: str) -> Any:
    from batchscore.jobs import _state as state
    from batchscore.jobs.reports import ScoreReport

    rep = state.read(cfg, run_id, ScoreReport)
    assert rep is not None
    return rep


def test_score_cli_summarizes_the_quarantine(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_onnx_mlp(tmp_path / "mlp.onnx", (4, 8, 1))
    feats = _features(tmp_path / "f.parquet", nans=(3,))
    cfg_path = _config(tmp_path, "qcli", feats, model)
    capsys.readouterr()
    assert score_job.main(["--model-config", str(cfg_path), "--run-id", "c1"]) == 0
    out = capsys.readouterr()
    assert "1 (non_finite_feature 1)" in out.out + out.err
