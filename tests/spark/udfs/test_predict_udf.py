"""``batchscore.udfs.predict_udf``: both kinds, one and several outputs, feature columns and one
array column, against the model run directly with onnxruntime on the same rows; the errors a user
meets at the call site; and the README's example run as written (the way chispa tests its README)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from pyspark.sql import functions as F

from batchscore.errors import BatchscoreError
from batchscore.testing.demo_data import feature_matrix, write_onnx_mlp, write_torchscript_mlp
from batchscore.udfs import PredictUDF, predict_udf

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[3]
ROWS, WIDTH = 5000, 12
FEATURES = [f"f{i}" for i in range(WIDTH)]


def ort_scores(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float32)


@pytest.fixture(scope="module")
def data(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, np.ndarray, dict[int, Path]]:
    root = tmp_path_factory.mktemp("predict_udf")
    x = feature_matrix(ROWS, WIDTH, seed=3)
    x[::97, 3] = np.nan  # NaN features reach the model as they are
    pdf = pd.DataFrame({"k": np.arange(ROWS) * 7, **dict(zip(FEATURES, x.T, strict=True))})
    df = spark.createDataFrame(pdf).repartition(3).withColumn(
        "arr", F.array(*FEATURES).cast("array<float>")).cache()
    models = {n: write_onnx_mlp(root / f"m{n}.onnx", (WIDTH, 16, n), seed=n) for n in (1, 3)}
    return df, x, models


@pytest.mark.parametrize("kind", ["pandas", "arrow"])
@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("source", ["columns", "array"])
def test_scores_equal_the_model_run_directly(data: Any, kind: str, outputs: int, source: str) -> None:
    df, x, models = data
    names = ["score"] if outputs == 1 else ["a", "b", "c"]
    # batches cut across Arrow batches
    udf = predict_udf(str(models[outputs]), columns=names, batch_size=333, kind=kind)
    col = udf(*FEATURES) if source == "columns" else udf(F.col("arr"))
    out = df.withColumn("s", col)
    expect = ort_scores(models[outputs], x)
    if outputs == 1:
        assert dict(out.dtypes)["s"] == "float"
        got = out.select("k", "s").toPandas().sort_values("k")["s"].to_numpy()
        np.testing.assert_array_equal(got, expect[:, 0])
    else:
        assert dict(out.dtypes)["s"] == "struct<a:float,b:float,c:float>"
        got = out.select("k", "s.a", "s.b", "s.c").toPandas().sort_values("k")[names].to_numpy()
        np.testing.assert_array_equal(got, expect)


def test_the_pandas_kind_is_a_pandas_udf(data: Any) -> None:
    from pyspark.sql.pandas.functions import PythonEvalType

    _, _, models = data
    udf = predict_udf(str(models[1]))
    assert isinstance(udf, PredictUDF) and udf.kind == "pandas"
    from batchscore.udfs import predict as P

    fn = P._pandas_udf(udf, "features")  # noqa: SLF001
    assert fn.evalType == PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF
    assert P._arrow_udf(udf, "arr").evalType != PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF  # noqa: SLF001


def test_a_torchscript_model_through_the_pandas_kind(spark: Any, data: Any, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    df, x, _ = data
    pt = write_torchscript_mlp(tmp_path / "m.pt", (WIDTH, 16, 1), seed=4)
    onnx = write_onnx_mlp(tmp_path / "m.onnx", (WIDTH, 16, 1), seed=4)  # the same weights
    got = df.withColumn("s", predict_udf(str(pt), batch_size=500)(F.col("arr"))).select("k", "s")
    got_s = got.toPandas().sort_values("k")["s"].to_numpy()
    finite = ~np.isnan(x).any(axis=1)
    np.testing.assert_allclose(got_s[finite], ort_scores(onnx, x)[finite, 0], rtol=1e-5, atol=1e-6)


def test_call_site_errors_are_one_line_and_name_the_fix(data: Any, tmp_path: Path) -> None:
    _, _, models = data
    cases = [
        (lambda: predict_udf(str(tmp_path / "model.bin")), r"format None unknown; give format="),
        (lambda: predict_udf(str(models[1]), kind="numpy"), r"kind 'numpy' unknown; use 'pandas' or 'arrow'"),
        (lambda: predict_udf(str(models[1]), n_features=5), r"model expects 12 features but the config gives 5"),
        (lambda: predict_udf(str(models[3]), columns=["only_one"]), r"only_one|\(2, 1\)|outputs"),
        (lambda: predict_udf(str(tmp_path / "missing.onnx")), r"missing\.onnx"),
        (lambda: predict_udf(str(models[1]))(), r"give the feature columns"),
    ]
    for make, pattern in cases:
        with pytest.raises(BatchscoreError) as info:
            make()
        msg = str(info.value)
        assert "\n" not in msg and re.search(pattern, msg), msg


def test_a_short_feature_array_fails_its_task_naming_the_column(spark: Any, data: Any) -> None:
    _, _, models = data
    bad = spark.createDataFrame([(1, [0.5] * WIDTH), (2, [0.5] * (WIDTH - 2))], "k long, feats array<float>")
    for kind in ("pandas", "arrow"):
        udf = predict_udf(str(models[1]), kind=kind)  # type: ignore[arg-type]
        with pytest.raises(Exception, match=r"feature array column 'feats' has a row of length 10, expected 12"):
            bad.withColumn("s", udf(F.col("feats"))).collect()


def readme_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"<!-- readme-example: [\w-]+ -->\n```python\n(.*?)```", text, flags=re.S)


def test_the_readme_example_runs_as_written(spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``readme-example`` block of README.md, executed as is (its own asserts compare the
    UDF's scores with onnxruntime run directly); the SparkSession it builds is the tests' one."""
    blocks = readme_examples()
    assert blocks, "README.md has no readme-example block"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        scope: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
        assert (tmp_path / "churn.onnx").exists() and scope["got"] is not None


def test_struct_fields_named_with_dots_resolve_as_spark_does(data: Any) -> None:
    """``udf("s.f0", "s.f1", ...)``: a dotted name is a struct field (as ``F.col`` reads it), not a
    column literally named with a dot."""
    df, x, models = data
    nested = df.select("k", F.struct(*FEATURES).alias("s"))
    for kind in ("pandas", "arrow"):
        udf = predict_udf(str(models[1]), kind=kind)  # type: ignore[arg-type]
        got = nested.withColumn("p", udf(*[f"s.{c}" for c in FEATURES])).select("k", "p").toPandas()
        np.testing.assert_array_equal(got.sort_values("k")["p"].to_numpy(), ort_scores(models[1], x)[:, 0])
