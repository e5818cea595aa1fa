"""A model project whose every location is on a real object store on loopback: S3 (SeaweedFS) or Azure
Blob Storage (Azurite)."""

from __future__ import annotations

from collections.abc import Callable
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


def delta_table(uri: str, version: int | None = None) -> Any:
    from deltalake import DeltaTable

    from batchscore.storage import Storage

    return DeltaTable(uri, version=version, storage_options=Storage().options(uri))
