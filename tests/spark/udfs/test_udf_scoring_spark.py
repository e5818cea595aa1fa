"""The scoring UDFs on a real local[2] Spark: outputs equal the model's direct outputs (ONNX,
TorchScript, torch.export), one load per Python worker per model across two jobs (reported in the
score report), threads follow spark.task.cpus, mismatches and 'cuda' without a GPU refused."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import functions as F

from batchscore.config import load_model_config
from batchscore.errors import ModelError
from batchscore.testing.demo_data import (
    feature_matrix,
    mlp_forward,
    mlp_weights,
    write_onnx_mlp,
    write_torchscript_mlp,
)
from batchscore.udfs.model_cache import load_accumulator
from batchscore.udfs.model_ref import model_ref
from batchscore.udfs.predict import PredictUDF
from batchscore.udfs.scoring import with_predictions

pytestmark = pytest.mark.spark
LAYERS = (8, 16, 2)
ROWS = 3000


def _export_writer() -> Callable[..., Path]:
    path = Path(__file__).resolve().parents[2] / "unit" / "udfs" / "test_udf_backends.py"
    spec = importlib.util.spec_from_file_location("_udf_backends_helpers", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_torch_export_mlp  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def frame(spark: Any) -> tuple[Any, np.ndarray]:
    import pandas as pd

    x = feature_matrix(ROWS, LAYERS[0])
    pdf = pd.DataFrame(x, columns=[f"f{i}" for i in range(LAYERS[0])])
    pdf.insert(0, "k", np.arange(ROWS, dtype=np.int64))
    pdf["emb"] = list(x)
    return spark.createDataFrame(pdf).repartition(3), x


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
def test_scores_equal_the_models_direct_outputs(frame: tuple[Any, np.ndarray], tmp_path: Path, fmt: str) -> None:
    df, x = frame
    writer = {"onnx": write_onnx_mlp, "torchscript": write_torchscript_mlp, "torch_export": _export_writer()}[fmt]
    path = writer(tmp_path / f"m.{fmt}", LAYERS)
    ref = model_ref(str(path), fmt, "cpu", n_features=LAYERS[0])
    want = mlp_forward(mlp_weights(LAYERS), x)
    feats = [f"f{i}" for i in range(LAYERS[0])]
    out = with_predictions(df, ref, key="k", features=feats, feature_array=None, columns=["a", "b"], batch_size=256)
    assert [(f.name, f.dataType.simpleString()) for f in out.schema] == [
        ("k", "bigint"), ("a", "float"), ("b", "float")]
    got = out.toPandas().sort_values("k")
    np.testing.assert_array_equal(got["k"].to_numpy(), np.arange(ROWS))
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), want, atol=1e-5)
    col = PredictUDF(ref=ref, columns=("a", "b"), batch_size=700, kind="arrow")(F.col("emb"))  # predict_udf's column
    got = df.select("k", col.alias("p")).select("k", "p.*").toPandas().sort_values("k")
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), want, atol=1e-5)


def test_one_load_per_worker_per_model_across_two_jobs(spark: Any, make_config: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    from batchscore.jobs.score import score

    # a model no other test has loaded (unique content), so this test sees its first loads
    write_onnx_mlp(tmp_path / "model.onnx", (8, 16, 1), seed=int.from_bytes(tmp_path.name.encode()[-4:], "big"))
    cfg = load_model_config(make_config(rows=4000, scoring={"batch_size": 128, "device": "cpu"}))
    ref = model_ref(cfg.model_path, "onnx", "cpu", n_features=8)
    df = spark.read.parquet(cfg.input.path).repartition(6)  # 6 tasks on 2 slots: workers are reused
    feats = cfg.input.features
    jobs = []
    for _ in range(2):
        acc = load_accumulator(spark.sparkContext)
        with_predictions(df, ref, key="user_id", features=feats, feature_array=None, columns=["score"],
                         batch_size=128, loads=acc).write.format("noop").mode("overwrite").save()
        jobs.append(acc.value)
    pids = jobs[0][2] + jobs[1][2]
    assert 1 <= jobs[0][0] <= 2 and len(set(pids)) == len(pids)  # never twice in one worker
    assert jobs[1][0] == 0  # the second job found the model in every worker's cache
    report = score(spark, cfg, run_id="r1", run_date="2024-01-01")
    assert report.model_loads == 0 and report.model_load_seconds == 0  # still cached
    assert report.input_rows == 4000


def test_threads_follow_spark_task_cpus(spark: Any, tmp_path: Path) -> None:
    path = str(write_onnx_mlp(tmp_path / "t.onnx", (8, 4, 1)))
    ts = str(write_torchscript_mlp(tmp_path / "t.pt", (8, 4, 1)))

    def probe(_: Any) -> Any:
        import torch

        from batchscore.udfs.backends import load_backend

        onnx = load_backend(Path(path).read_bytes(), fmt="onnx", uri=path, device="cpu")
        load_backend(Path(ts).read_bytes(), fmt="torchscript", uri=ts, device="cpu")
        return [(onnx.threads, torch.get_num_threads())]  # type: ignore[attr-defined]

    cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    assert set(spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()) == {(cpus, cpus)}


def test_config_artifact_mismatch_and_cuda_without_gpu_are_refused(spark: Any,
                                                                   make_config: Callable[..., Path]) -> None:
    from batchscore.jobs.score import check_artifact
    from batchscore.udfs.device import gpu_count

    cfg = load_model_config(make_config(input={"features": [f"f{i}" for i in range(5)]}))
    with pytest.raises(ModelError, match="model expects 8 features but the config gives 5"):
        check_artifact(cfg)
    cfg = load_model_config(make_config(outputs={"columns": ["a", "b"]}))
    with pytest.raises(ModelError, match=r"gives 1 output column\(s\), which does not match outputs.columns \(2 name"):
        check_artifact(cfg)
    if not gpu_count("onnx"):
        cfg = load_model_config(make_config(scoring={"device": "cuda"}))
        with pytest.raises(ModelError, match="scoring.device is 'cuda' but no GPU is visible"):
            check_artifact(cfg)
