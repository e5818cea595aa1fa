"""Models from the MLflow registry (``model.uri: models:/<name>@<alias>`` / ``models:/<name>/<version>``)
against a real ``mlflow server`` (SQLite, artifacts in a temp dir) on loopback, real local Spark,
a real redis-server and Delta on disk.

The registry is read on the driver only: the executors score a content-addressed copy under the
model cache dir (``<delta root>/_models/<sha256>.onnx`` here).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from deltalake import DeltaTable
from mlflow_server import HINT, MlflowServer, server_binary  # tests/integration is on sys.path; imports no mlflow

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ModelError
from batchscore.jobs import _state as state
from batchscore.jobs import run as run_job
from batchscore.registry import check_alias_unchanged
from batchscore.testing.demo_data import write_onnx_mlp

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")

pytestmark = [pytest.mark.integration, pytest.mark.spark]
RUN_DATE = "2026-11-30"


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    exe = server_binary()
    if exe is None:
        pytest.skip(f"no MLflow server to run the registry tests with: {HINT}")
    with MlflowServer(tmp_path_factory.mktemp("mlflow"), exe) as server:
        yield server


class Registry:
    """Registers models on the test server the ways the convention supports."""

    def __init__(self, url: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=url)

    def log_onnx(self, name: str, path: Path, signature: Any = None) -> tuple[str, str]:
        """``mlflow.onnx.log_model`` (ONNX flavour; weights >= 1 KiB go to external data files)."""
        import mlflow.onnx
        import onnx

        with mlflow.start_run() as run:
            info = mlflow.onnx.log_model(onnx.load(str(path)), name="model", signature=signature,
                                         registered_model_name=name, pip_requirements=["onnx"])  # no inference
        return str(info.registered_model_version), run.info.run_id

    def log_file(self, name: str, path: Path) -> tuple[str, str]:
        """A plain artifact file (no MLmodel) registered as a model version."""
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(path), artifact_path="model")
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        mv = self.client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        return str(mv.version), run.info.run_id

    def alias(self, name: str, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(name, alias, version)


@pytest.fixture
def registry(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("batchscore-tests")
    yield Registry(mlflow_server.url)
    mlflow.set_tracking_uri(old)


def tensor_sig(n_in: int, n_out: int, dtype: Any = np.float32) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(dtype), (-1, n_in), "features")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_out), "scores")]))


def column_sig(inputs: list[str], outputs: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("double", c) for c in inputs]),
                          outputs=Schema([ColSpec("float", c) for c in outputs]))


FEATS = [f"f{i}" for i in range(8)]


def model_scores(model: Path, cfg: ModelConfig) -> dict[int, np.ndarray]:
    """The ONNX model run directly with onnxruntime on every input row."""
    import onnxruntime as ort

    table = pq.read_table(cfg.input.path)
    x = np.column_stack([table[c].to_numpy() for c in cfg.input.features or []]).astype(np.float32)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return dict(zip(table[cfg.input.key].to_pylist(), out, strict=True))


def published(cfg: ModelConfig, url: str) -> tuple[int | None, bytes | None]:
    """(Delta version, Redis pointer): what readers are served."""
    path = cfg.outputs.delta.path
    version = DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None
    return version, redis.Redis.from_url(url).get(layout.pointer_key(layout.namespace("t", cfg.name)))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 1, err
    return err[0]


_ids = itertools.count()


# -- (1) the champion is scored, published and recorded -------------------------------------------

def test_champion_alias_is_scored_published_and_recorded(spark: Any, make_config: Any, redis_url: str,
                                                         registry: Registry, tmp_path: Path) -> None:
    model = write_onnx_mlp(tmp_path / "champion.onnx", (8, 64, 1), seed=2026)  # W0 is 2 KiB: external data
    version, run_id = registry.log_onnx("demo", model, signature=tensor_sig(8, 1))
    registry.alias("demo", version)
    cfg = load_model_config(make_config(rows=1500, model={"uri": "models:/demo@champion"}))
    assert cfg.model.uri == "models:/demo@champion" and cfg.model.registry is not None

    report = run_job.run(spark, cfg, run_id="reg1", run_date=RUN_DATE, redis_url=redis_url)

    scored = state.read_report(cfg, "reg1", "score")
    assert scored is not None
    reg = scored["registry"]
    mv = registry.client.get_model_version("demo", version)
    assert {k: reg[k] for k in ("uri", "name", "version", "alias", "run_id", "source", "artifact")} == {
        "uri": "models:/demo@champion", "name": "demo", "version": version, "alias": "champion",
        "run_id": run_id, "source": mv.source, "artifact": "model.onnx"}
    assert reg["external_data_merged"] is True
    cached = Path(reg["path"])
    assert cached.parent == Path(cfg.outputs.delta.path) / "_models" and cached.name == f"{reg['sha256']}.onnx"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == reg["sha256"] == scored["model_sha256"]
    assert not list(cached.parent.glob(".download-*"))  # the download dir is gone

    want = model_scores(model, cfg)
    got = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    assert got.num_rows == 1500
    delta_scores = dict(zip(got["user_id"].to_pylist(), got["score"].to_numpy(), strict=True))
    assert delta_scores.keys() == want.keys()
    assert all(delta_scores[k] == want[k][0] for k in want)  # bit-exact float32: the registered model's outputs
    found = ScoreReader(redis_url, prefix="t").get_many("m", list(want))
    assert all(found[str(k)] is not None and found[str(k)].value == float(want[k][0]) for k in want)  # type: ignore[union-attr]
    assert report.delta_version == 0 and 1 <= report.model_loads <= 2


# -- (2) the alias moved to a broken version ------------------------------------------------------

def test_alias_moved_to_a_broken_version_is_refused_before_publishing(
        spark: Any, make_config: Any, redis_url: str, registry: Registry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    name = "demo_broken"
    good, _ = registry.log_onnx(name, write_onnx_mlp(tmp_path / "good.onnx", (8, 16, 1), seed=5), tensor_sig(8, 1))
    registry.alias(name, good)
    cfg_path = make_config(rows=500, name="mb", model={"uri": f"models:/{name}@champion"})
    cfg = load_model_config(cfg_path)
    assert run_job.main(["--model-config", str(cfg_path), "--run-id", "baseline", "--run-date", RUN_DATE]) == 0
    before = published(cfg, redis_url)
    assert before[0] == 0 and before[1] is not None

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.onnx").write_bytes(b"\x08\x07 these bytes are not an ONNX model")
    (tmp_path / "notes.txt").write_text("no model here")
    broken = {
        "garbage bytes": (tmp_path / "bad" / "model.onnx", "model.onnx is not a loadable ONNX model"),
        "two outputs": (write_onnx_mlp(tmp_path / "two.onnx", (8, 16, 2)), "does not match outputs.columns"),
        "nine inputs": (write_onnx_mlp(tmp_path / "nine.onnx", (9, 16, 1)), "model expects 9 features"),
        "no model file": (tmp_path / "notes.txt", "no onnx model file among its artifacts (notes.txt)"),
    }
    for case, (path, needle) in broken.items():
        version, _ = registry.log_file(name, path)
        registry.alias(name, version)
        run = f"bad{next(_ids)}"
        capsys.readouterr()
        code = run_job.main(["--model-config", str(cfg_path), "--run-id", run, "--run-date", RUN_DATE])
        line = one_error_line(capsys)
        assert code == 2, (case, line)
        assert needle in line and f"models:/{name}@champion (version {version})" in line, (case, line)
        assert published(cfg, redis_url) == before, case
        assert not Path(state.staged_path(cfg, run)).exists(), case  # refused before scoring anything
        assert state.read_report(cfg, run, "score") is None, case


# -- (3) a signature that does not fit the config ---------------------------------------------------

SIGNATURES = {
    "tensor width": (lambda: tensor_sig(9, 1), "input 'features' takes 9 features but input.features gives 8"),
    "tensor dtype": (lambda: tensor_sig(8, 1, np.float64), "input 'features' is float64; batchscore feeds float32"),
    "column names": (lambda: column_sig([*FEATS[:7], "age"], ["score"]),
                     ("input.features ['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7'] does not match the model "
                      "signature's inputs ['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'age'] (missing ['age']; not in "
                      "the signature ['f7']); set input.features to")),
    "column order": (lambda: column_sig(FEATS[::-1], ["score"]), "(the same columns in another order)"),
    "output names": (lambda: column_sig(FEATS, ["probability"]),
                     ("outputs.columns ['score'] does not match the model signature's outputs ['probability']; "
                      "set outputs.columns to ['probability']")),
    "output width": (lambda: tensor_sig(8, 2),
                     "the model signature gives 2 output column(s) but outputs.columns names 1"),
}


def test_signature_mismatch_is_refused_clearly(spark: Any, make_config: Any, redis_url: str, registry: Registry,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The graph itself fits the config (8 features -> 1 score): only the signature can refuse it.
    model = write_onnx_mlp(tmp_path / "fits.onnx", (8, 16, 1), seed=9)
    name = "demo_signature"
    cfg_path = make_config(rows=200, name="ms", model={"uri": f"models:/{name}@champion"})
    cfg = load_model_config(cfg_path)
    for case, (signature, needle) in SIGNATURES.items():
        version, _ = registry.log_onnx(name, model, signature=signature())
        registry.alias(name, version)
        capsys.readouterr()
        code = run_job.main(["--model-config", str(cfg_path), "--run-id", f"sig{next(_ids)}", "--run-date", RUN_DATE])
        line = one_error_line(capsys)
        assert code == 2 and needle in line, (case, line)
        assert line.startswith(f"batchscore: error: models:/{name}@champion (version {version}): "), (case, line)
    assert published(cfg, redis_url) == (None, None)
    # The same graph with a signature that fits is scored.
    version, _ = registry.log_onnx(name, model, signature=column_sig(FEATS, ["score"]))
    registry.alias(name, version)
    assert run_job.main(["--model-config", str(cfg_path), "--run-id", "sigok", "--run-date", RUN_DATE]) == 0


# -- (4) the alias moved between score and publish -------------------------------------------------

def _score_and_validate(spark: Any, cfg: ModelConfig, run_id: str) -> dict[str, Any]:
    from batchscore.jobs.score import score
    from batchscore.jobs.validate import validate

    scored = score(spark, cfg, run_id=run_id, run_date=RUN_DATE)
    assert validate(spark, cfg, run_id=run_id).passed
    return scored.to_json()  # as publish reads it back


def test_alias_moved_between_score_and_publish_is_caught(spark: Any, make_config: Any, redis_url: str,
                                                        registry: Registry, tmp_path: Path) -> None:
    name = "demo_moving"
    v1, _ = registry.log_onnx(name, write_onnx_mlp(tmp_path / "one.onnx", (8, 16, 1), seed=21), tensor_sig(8, 1))
    v2, _ = registry.log_onnx(name, write_onnx_mlp(tmp_path / "two.onnx", (8, 16, 1), seed=22), tensor_sig(8, 1))
    registry.alias(name, v1)
    cfg = load_model_config(make_config(rows=300, name="mm", model={"uri": f"models:/{name}@champion"}))
    scored = _score_and_validate(spark, cfg, "moving")
    assert scored["registry"]["version"] == v1
    check_alias_unchanged(cfg, scored)  # nothing moved

    registry.alias(name, v2)
    with pytest.raises(ModelError) as moved:
        check_alias_unchanged(cfg, scored)
    msg = str(moved.value)
    assert moved.value.exit_code == 2 and "\n" not in msg
    assert f"model alias {name}@champion moved from version {v1} to version {v2} since run moving was scored" in msg
    assert "nothing was published" in msg

    registry.client.delete_registered_model_alias(name, "champion")
    with pytest.raises(ModelError, match=f"alias {name}@champion no longer exists .*version {v1}"):
        check_alias_unchanged(cfg, scored)

    pinned = load_model_config(make_config(rows=300, name="mm", model={"uri": f"models:/{name}/{v1}"}))
    with pytest.raises(ModelError, match=f"model.uri is models:/{name}/{v1} but run moving was scored with "
                                         f"models:/{name}@champion"):
        check_alias_unchanged(pinned, scored)
    # A run scored from a pinned version needs no registry call (a version never moves) ...
    check_alias_unchanged(pinned,
                          {**scored, "registry": {**scored["registry"], "uri": pinned.model.uri, "alias": None}})
    # ... and a model given by path has nothing to check.
    plain = load_model_config(make_config(rows=300, name="mm", model={"uri": str(tmp_path / "one.onnx")}))
    check_alias_unchanged(plain, {"run_id": "x", "registry": None})


def _publish_checks_the_alias() -> bool:
    import batchscore.jobs.publish

    return "check_alias_unchanged" in inspect.getsource(batchscore.jobs.publish)


@pytest.mark.skipif(not _publish_checks_the_alias(), reason="jobs/publish.py does not call check_alias_unchanged yet")
def test_publish_refuses_a_run_whose_alias_moved(spark: Any, make_config: Any, redis_url: str, registry: Registry,
                                                tmp_path: Path) -> None:
    import json

    from batchscore.jobs.publish import publish

    name = "demo_publish"
    v1, run1 = registry.log_onnx(name, write_onnx_mlp(tmp_path / "one.onnx", (8, 16, 1), seed=31), tensor_sig(8, 1))
    v2, _ = registry.log_onnx(name, write_onnx_mlp(tmp_path / "two.onnx", (8, 16, 1), seed=32), tensor_sig(8, 1))
    registry.alias(name, v1)
    cfg = load_model_config(make_config(rows=300, name="mp", model={"uri": f"models:/{name}@champion"}))
    _score_and_validate(spark, cfg, "p1")
    registry.alias(name, v2)
    with pytest.raises(ModelError, match=f"moved from version {v1} to version {v2}"):
        publish(spark, cfg, run_id="p1", redis_url=redis_url)
    assert published(cfg, redis_url) == (None, None)

    registry.alias(name, v1)  # back where it was when the run was scored: it publishes
    rep = publish(spark, cfg, run_id="p1", redis_url=redis_url)
    meta = DeltaTable(cfg.outputs.delta.path).history()[0]
    assert rep.delta_version == 0
    recorded = json.loads(meta["batchscore.model_registry"])
    assert recorded["version"] == v1 and recorded["run_id"] == run1 and recorded["alias"] == "champion"


# -- without a server: the driver-only contract and the errors around it ---------------------------

def test_executors_never_get_a_registry_uri() -> None:
    from batchscore.udfs.model_ref import read_artifact

    with pytest.raises(ModelError, match="resolve it on the driver first"):
        read_artifact("models:/demo@champion")


def test_tracking_uri_unset_or_registry_unreachable(make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchscore import registry
    from batchscore.errors import ConfigError, InfrastructureError
    from batchscore.testing.local_redis import free_port

    cfg = load_model_config(make_config(model={"uri": "models:/demo@champion"}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI is not set"):
        registry.resolve(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:s3cret@127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(InfrastructureError, match="the MLflow registry at http://127.0.0.1:") as exc:
        registry.resolve(cfg)
    assert exc.value.exit_code == 4 and "s3cret" not in str(exc.value) and "\n" not in str(exc.value)


# -- torch artifacts: mlflow.pytorch (pt2 / scripted) and a plain TorchScript file ----------------

def test_torch_artifacts_are_found_by_the_convention(make_config: Any, registry: Registry, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import mlflow.pytorch

    from batchscore.jobs.score import check_artifact, resolve_artifact
    from batchscore.testing.demo_data import (
        mlp_forward,
        mlp_weights,
        write_torchscript_mlp,
    )
    from batchscore.udfs.backends import load_backend

    scripted = write_torchscript_mlp(tmp_path / "mlp.pt", (8, 16, 1), seed=41)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    want = mlp_forward(mlp_weights((8, 16, 1), seed=41), x)
    plain, _ = registry.log_file("demo_ts_file", scripted)  # a TorchScript file logged as a plain artifact
    with mlflow.start_run():
        pt2 = mlflow.pytorch.log_model(torch.jit.load(str(scripted)), name="model",
                                       registered_model_name="demo_ts_flavour",
                                       serialization_format="pickle", signature=tensor_sig(8, 1),
                                       pip_requirements=["torch"]).registered_model_version
        module = torch.nn.Sequential(torch.nn.Linear(8, 1), torch.nn.Sigmoid())
        exported = mlflow.pytorch.log_model(module, name="model", registered_model_name="demo_pt2",
                                            signature=tensor_sig(8, 1), input_example=x[:4],
                                            pip_requirements=["torch"]).registered_model_version  # pt2
        pickled = mlflow.pytorch.log_model(module, name="model", registered_model_name="demo_pickled",
                                           serialization_format="pickle",
                                           pip_requirements=["torch"]).registered_model_version
    cases = [(f"models:/demo_ts_file/{plain}", "torchscript", "mlp.pt"),
             (f"models:/demo_ts_flavour/{pt2}", "torchscript", "data/model.pth"),
             (f"models:/demo_pt2/{exported}", "torch_export", "data/model.pt2")]
    for i, (uri, fmt, artifact) in enumerate(cases):
        cfg = load_model_config(make_config(name=f"t{i}", model={"uri": uri, "format": fmt}))
        path, info = resolve_artifact(cfg)
        assert info is not None and info["artifact"] == artifact and Path(path).suffix == Path(artifact).suffix
        ref = check_artifact(cfg, (path, info))  # the driver-side probe loads and runs it
        assert ref.uri == path and ref.sha256 == info["sha256"] and ref.format == fmt
        if "demo_pt2" not in uri:
            got = load_backend(Path(path).read_bytes(), fmt=fmt, uri=path, device="cpu").predict(x)
            assert np.allclose(got, want, atol=1e-6)
    cfg = load_model_config(make_config(name="t9", model={"uri": f"models:/demo_pickled/{pickled}",
                                                          "format": "torchscript"}))
    with pytest.raises(ModelError, match="is a pickled torch module .*not TorchScript"):
        resolve_artifact(cfg)
