"""A model project whose every location is on a real object store on loopback: S3 (SeaweedFS) or Azure
Blob Storage (Azurite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml


def upload(local: Path, uri: str, env: dict[str, str]) -> None:
    """Copy a local file or folder to ``uri`` through its pyarrow filesystem."""
    import pyarrow.fs as pafs

    from batchscore.storage import Storage

    fs, path = Storage().filesystem(uri)
    if local.is_dir():
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    else:
        with fs.open_output_stream(path) as out:
            out.write(local.read_bytes())


def _project(make_config: Callable[..., Path], root: str, input_root: str, tmp_path: Path, name: str
             ) -> Callable[..., Path]:
    """``make(**overrides)``: a model config whose model, input, Delta table, history table and
    reports are all under ``root`` (the input under ``input_root``, the same place by another
    name). The local copies of the model and features stay under ``tmp_path`` as the reference."""

    def make(**overrides: Any) -> Path:
        local_cfg = yaml.safe_load(
            make_config(**{k: v for k, v in overrides.items() if k in ("rows", "layers", "fmt")}).read_text())
        model, feats = Path(local_cfg["model"]["uri"]), Path(local_cfg["input"]["path"])
        upload(model, f"{root}/models/{model.name}", {})
        upload(feats, f"{root}/features/part-0.parquet", {})
        cfg = {**local_cfg}
        cfg["model"] = {**cfg["model"], "uri": f"{root}/models/{model.name}"}
        cfg["input"] = {**cfg["input"], "path": f"{input_root}/features"}
        cfg["outputs"] = {**cfg["outputs"], "delta": {"path": f"{root}/predictions"},
                          "history": {"path": f"{root}/history"}}
        cfg["runtime"] = {"report_dir": f"{root}/runs"}
        for k, v in overrides.items():
            if k not in ("rows", "layers", "fmt"):
                cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        (tmp_path / "local-features.parquet").write_bytes(feats.read_bytes())
        return path

    return make


@pytest.fixture
def s3_project(make_config: Callable[..., Path], s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
               ) -> Callable[..., Path]:
    """Every location under a fresh bucket (``s3a://`` for the input, to exercise the alias)."""
    return _project(make_config, s3_bucket, s3_bucket.replace("s3://", "s3a://"), tmp_path, "s3-model.yaml")


@pytest.fixture
def azure_project(make_config: Callable[..., Path], azure_container: str, azure_env: dict[str, str], tmp_path: Path
                  ) -> Callable[..., Path]:
    """Every location under a fresh Azurite container (``abfs://`` for the input, to exercise the alias)."""
    return _project(make_config, azure_container, azure_container.replace("abfss://", "abfs://"), tmp_path,
                    "azure-model.yaml")


def small_project(d: Path, root: str, name: str, rows: int) -> dict[str, Any]:
    """A 4-feature model and ``rows`` feature rows written under ``d`` and uploaded under ``root``;
    returns a model config (dict) whose every location is under ``root``."""
    from batchscore.testing.demo_data import write_features, write_onnx_mlp

    write_onnx_mlp(d / "model.onnx", (4, 8, 1))
    write_features(d / "good.parquet", rows, 4)
    upload(d / "model.onnx", f"{root}/model.onnx", {})
    upload(d / "good.parquet", f"{root}/features/part-0.parquet", {})
    return {
        "name": name,
        "model": {"uri": f"{root}/model.onnx", "format": "onnx", "version": "v1"},
        "input": {"path": f"{root}/features", "key": "user_id", "features": [f"f{i}" for i in range(4)]},
        "outputs": {"delta": {"path": f"{root}/pred"}, "redis": {"key_prefix": "t"}},
        "validation": {"range": {"min": 0.0, "max": 1.0}},
        "runtime": {"report_dir": f"{root}/runs"},
    }


@contextmanager
def published_baseline(d: Path, base: dict[str, Any], mp: pytest.MonkeyPatch) -> Iterator[str]:
    """A bad-input world's starting point: ``base`` (a :func:`small_project` config) written to
    ``d/base.yaml`` and run once as run id ``baseline`` against a fresh redis-server, whose URL is
    ``BATCHSCORE_REDIS_URL`` (set on ``mp``) and is yielded while the server runs."""
    from batchscore.jobs import run as run_job
    from batchscore.testing.local_redis import LocalRedis

    with LocalRedis() as server:
        mp.setenv("BATCHSCORE_REDIS_URL", server.url)
        (d / "base.yaml").write_text(yaml.safe_dump(base))
        assert run_job.main(["--model-config", str(d / "base.yaml"), "--run-id", "baseline"]) == 0
        yield server.url


def local_scores(cfg_path: Path) -> dict[int, float]:
    """The ONNX model run directly on the local copy of the features (the reference)."""
    import onnxruntime as ort

    d = cfg_path.parent
    table = pq.read_table(d / "local-features.parquet")
    feats = [c for c in table.column_names if c.startswith("f")]
    x = np.column_stack([table[c].to_numpy() for c in feats]).astype(np.float32)
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return dict(zip(table["user_id"].to_pylist(), out[:, 0].tolist(), strict=True))


def check_first_run(spark: Any, cfg: Any, *, run_id: str, redis_url: str, want: dict[int, float], rows: int,
                    tmp_path: Path) -> None:
    """``batchscore run`` of ``cfg`` on an empty store, checked: Delta version 0 holds the model's outputs
    (``want``, ``rows`` of them) bit for bit, every file with full statistics (engines can skip files); Redis
    serves the same values; the step reports live on the store and nothing under ``tmp_path``."""
    import json

    import pyarrow as pa

    from batchscore import ScoreReader
    from batchscore import storage as st
    from batchscore.jobs import _state as state
    from batchscore.jobs import run as run_job

    rep = run_job.run(spark, cfg, run_id=run_id, run_date="2026-11-30", redis_url=redis_url)
    dt = delta_table(cfg.outputs.delta.path)
    assert dt.version() == rep.delta_version == 0
    got = dt.to_pyarrow_table()
    assert got.num_rows == len(want) == rows
    assert dict(zip(got["user_id"].to_pylist(), got["score"].to_pylist(), strict=True)) == want  # bit-exact
    assert set(got["run_id"].to_pylist()) == {run_id}
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    assert actions and all(a["num_records"] and a["min.score"] is not None and a["max.user_id"] is not None
                           and a["null_count.score"] == 0 for a in actions)
    assert min(a["min.user_id"] for a in actions) == min(want) and max(a["max.user_id"] for a in actions) == max(want)

    found = ScoreReader(redis_url, prefix="t").get_many("m", list(want))
    assert all(found[str(k)] is not None and found[str(k)].value == want[k] for k in want)  # type: ignore[union-attr]
    for step in ("score", "validation", "publish", "run"):
        assert st.is_file(state.report_uri(cfg, run_id, f"{step}.json")), step
    assert st.is_file(state.report_uri(cfg, run_id, "validation.png"))
    assert state.latest_run_id(cfg) == run_id
    assert json.loads(st.read_bytes(state.report_uri(cfg, run_id, "score.json")))["input_rows"] == rows
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "runs").exists()


def check_secret_unseen(spark: Any, cfg: Any, secret: str, *, reports: int) -> None:
    """``secret`` (the store's key) is in none of the run reports (at least ``reports`` of them), no Spark
    conf value and no Delta commit's metadata."""
    import json

    from batchscore import storage as st

    texts = [st.read_bytes(u).decode() for u, _ in st.list_files(cfg.runtime.report_dir, suffix=".json")]
    assert len(texts) >= reports and not any(secret in t for t in texts)
    assert not any(secret in str(v) for _, v in spark.sparkContext.getConf().getAll())
    assert secret not in json.dumps(delta_table(cfg.outputs.delta.path).history(), default=str)


def delta_table(uri: str, version: int | None = None) -> Any:
    from deltalake import DeltaTable

    from batchscore.storage import Storage

    return DeltaTable(uri, version=version, storage_options=Storage().options(uri))
