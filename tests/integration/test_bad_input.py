"""Every bad input is refused with one clear line and a non-zero exit, and publishes nothing:
the Delta table's version and the Redis pointer stay exactly where they were."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.jobs import run as run_job
from batchscore.testing.demo_data import write_features, write_onnx_mlp
from batchscore.testing.local_redis import LocalRedis, free_port

pytestmark = [pytest.mark.integration, pytest.mark.spark]
FEATS = [f"f{i}" for i in range(4)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("bad")
    write_onnx_mlp(d / "model.onnx", (4, 8, 1))
    write_onnx_mlp(d / "two_outputs.onnx", (4, 8, 2))
    (d / "garbage.onnx").write_bytes(b"this is not a model")
    write_features(d / "good.parquet", 500, 4)
    good = pq.read_table(d / "good.parquet")
    pq.write_table(good.slice(0, 0), d / "empty.parquet")
    pq.write_table(pa.concat_tables([good, good.slice(0, 3)]), d / "dups.parquet")
    keys = good["user_id"].to_pylist()
    keys[5] = keys[77] = None
    pq.write_table(good.set_column(0, "user_id", pa.array(keys, pa.int64())), d / "null_keys.parquet")
    pq.write_table(good.set_column(1, "f0", pa.array([str(v) for v in good["f0"].to_pylist()])), d / "strings.parquet")
    base = {
        "name": "bad",
        "model": {"uri": str(d / "model.onnx"), "format": "onnx", "version": "v1"},
        "input": {"path": str(d / "good.parquet"), "key": "user_id", "features": FEATS},
        "outputs": {"delta": {"path": str(d / "pred")}, "redis": {"key_prefix": "t"}},
        "validation": {"range": {"min": 0.0, "max": 1.0}},
        "runtime": {"report_dir": str(d / "runs")},
    }
    with LocalRedis() as server:
        mp = pytest.MonkeyPatch()
        mp.setenv("BATCHSCORE_REDIS_URL", server.url)
        (d / "base.yaml").write_text(yaml.safe_dump(base))
        assert run_job.main(["--model-config", str(d / "base.yaml"), "--run-id", "baseline"]) == 0
        yield {"dir": d, "base": base, "url": server.url}
        mp.undo()


def _variant(world: dict[str, Any], name: str, **section: dict[str, Any]) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(world["base"]))
    for key, patch in section.items():
        cfg[key].update(patch)
    path = world["dir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _state(world: dict[str, Any]) -> tuple[int, bytes | None]:
    r = redis.Redis.from_url(world["url"])
    return DeltaTable(str(world["dir"] / "pred")).version(), r.get(layout.pointer_key("t:bad"))


CASES = {
    "missing config": (lambda w: w["dir"] / "nope.yaml", 2, "model config not found"),
    "malformed config": (lambda w: _raw(w, "name: bad\nmodel: [\n"), 2, "not valid YAML"),
    "unknown model format": (lambda w: _variant(w, "fmt", model={"format": "pmml"}), 2, "field 'model.format'"),
    "model file missing": (lambda w: _variant(w, "nofile", model={"uri": str(w["dir"] / "gone.onnx")}), 2,
                           "gone.onnx not found"),
    "not a model": (lambda w: _variant(w, "garbage", model={"uri": str(w["dir"] / "garbage.onnx")}), 2,
                    "not a loadable ONNX model"),
    "feature column missing": (lambda w: _variant(w, "nocol", input={"features": [*FEATS[:3], "zz"]}), 2,
                               "feature column 'zz' not found"),
    "feature of wrong type": (lambda w: _variant(w, "str", input={"path": str(w["dir"] / "strings.parquet")}), 2,
                              "feature column 'f0' has type string"),
    "empty input": (lambda w: _variant(w, "empty", input={"path": str(w["dir"] / "empty.parquet")}), 2, "is empty"),
    "null keys": (lambda w: _variant(w, "nullkeys", input={"path": str(w["dir"] / "null_keys.parquet")}), 2,
                  "2 row(s) have a null key in 'user_id'"),
    "duplicate keys": (lambda w: _variant(w, "dups", input={"path": str(w["dir"] / "dups.parquet")}), 2,
                       "3 duplicate key(s) in 'user_id'"),
    "wrong output shape": (lambda w: _variant(w, "shape", model={"uri": str(w["dir"] / "two_outputs.onnx")}), 2,
                           "does not match outputs.columns"),
    "missing input table": (lambda w: _variant(w, "noinput", input={"path": str(w["dir"] / "nothing.parquet")}), 2,
                            "not found"),
}


def _raw(world: dict[str, Any], text: str) -> Path:
    path = world["dir"] / "raw.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_publishes_nothing(world: dict[str, Any], case: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    make, code, needle = CASES[case]
    before = _state(world)
    capsys.readouterr()
    assert run_job.main(["--model-config", str(make(world)), "--run-id", f"x{abs(hash(case))}"]) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 1 and needle in err[0], err
    assert _state(world) == before


def test_redis_unreachable_is_an_infrastructure_error(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = _state(world)
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    capsys.readouterr()
    assert run_job.main(["--model-config", str(world["dir"] / "base.yaml"), "--run-id", "unreachable"]) == 4
    err = capsys.readouterr().err
    assert "is unreachable" in err and "hunter2" not in err
    assert _state(world) == before


def test_baseline_is_intact(world: dict[str, Any]) -> None:
    version, pointer = _state(world)
    assert version == 0 and pointer is not None
    rows = DeltaTable(str(world["dir"] / "pred")).to_pyarrow_table()
    assert rows.num_rows == 500 and not np.isnan(rows["score"].to_numpy()).any()
