"""Backends score like the numpy reference; artifacts that do not fit the config are refused;
device and thread rules (no GPU on CI: the CPU fallback and the clear 'cuda' error)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from batchscore.errors import ModelError
from batchscore.testing.demo_data import (
    feature_matrix,
    mlp_forward,
    mlp_weights,
    write_onnx_mlp,
    write_torchscript_mlp,
)
from batchscore.udfs import device as dev
from batchscore.udfs.backends import check_model, load_backend, task_cpus

LAYERS = (8, 16, 3)


def write_torch_export_mlp(path: Path, layers: tuple[int, ...] = LAYERS, seed: int = 7, split: bool = False) -> Path:
    """The demo MLP as a ``torch.export`` program (``split``: two outputs, column 0 and the rest)."""
    import torch

    mods: list[torch.nn.Module] = []
    weights = mlp_weights(layers, seed)
    for i, (w, bias) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(bias))
        mods += [lin, torch.nn.ReLU() if i < len(weights) - 1 else torch.nn.Sigmoid()]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(*mods)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.net(x)
            return (y[:, 0], y[:, 1:]) if split else y

    batch = torch.export.Dim("batch", min=1)
    prog = torch.export.export(Net().eval(), (torch.zeros(4, layers[0]),), dynamic_shapes=({0: batch},))
    torch.export.save(prog, str(path))
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "onnx": write_onnx_mlp(d / "m.onnx", LAYERS),
        "torchscript": write_torchscript_mlp(d / "m.pt", LAYERS),
        "torch_export": write_torch_export_mlp(d / "m.pt2"),
        "split": write_torch_export_mlp(d / "split.pt2", split=True),
    }


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
def test_backends_score_like_the_reference(artifacts: dict[str, Path], fmt: str) -> None:
    backend = load_backend(artifacts[fmt].read_bytes(), fmt=fmt, uri=fmt, device="cpu")
    x = feature_matrix(300, LAYERS[0])
    out = backend.predict(x)
    assert out.dtype == np.float32 and out.shape == (300, 3)
    np.testing.assert_allclose(out, mlp_forward(mlp_weights(LAYERS), x), atol=1e-5)
    check_model(backend, uri=fmt, n_features=8, n_outputs=3)


def test_several_outputs_become_several_columns(artifacts: dict[str, Path]) -> None:
    backend = load_backend(artifacts["split"].read_bytes(), fmt="torch_export", uri="split", device="cpu")
    x = feature_matrix(20, LAYERS[0])
    np.testing.assert_allclose(backend.predict(x), mlp_forward(mlp_weights(LAYERS), x), atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_declared_input_width_mismatch_is_refused(artifacts: dict[str, Path], fmt: str) -> None:
    backend = load_backend(artifacts[fmt].read_bytes(), fmt=fmt, uri="m", device="cpu")
    assert backend.n_inputs == 8
    with pytest.raises(ModelError, match="model expects 8 features but the config gives 5"):
        check_model(backend, uri="m", n_features=5, n_outputs=3)


def test_output_count_and_probe_failures_are_refused(artifacts: dict[str, Path]) -> None:
    onnx = load_backend(artifacts["onnx"].read_bytes(), fmt="onnx", uri="m.onnx", device="cpu")
    with pytest.raises(ModelError, match=r"gives 3 output column\(s\), which does not match outputs.columns \(1 name"):
        check_model(onnx, uri="m.onnx", n_features=8, n_outputs=1)
    ts = load_backend(artifacts["torchscript"].read_bytes(), fmt="torchscript", uri="m.pt", device="cpu")
    with pytest.raises(ModelError, match=r"m.pt: model failed on a \(2, 5\) float32 probe batch"):
        check_model(ts, uri="m.pt", n_features=5, n_outputs=3)


def test_non_float_onnx_input_and_garbage_bytes_are_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(ModelError, match=r"input 'x' has type tensor\(int64\)"):
        load_backend(m.SerializeToString(), fmt="onnx", uri="int.onnx", device="cpu")
    for fmt in ("onnx", "torchscript", "torch_export"):
        with pytest.raises(ModelError, match="not a loadable"):
            load_backend(b"not a model", fmt=fmt, uri="junk", device="cpu")
    with pytest.raises(ModelError, match="unknown model format 'pickle'"):
        load_backend(b"", fmt="pickle", uri="junk", device="cpu")


def test_cuda_without_a_gpu_is_a_clear_error(artifacts: dict[str, Path]) -> None:
    if dev.gpu_count("onnx") or dev.gpu_count("torchscript"):
        pytest.skip("a GPU is visible here")
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(ModelError, match="scoring.device is 'cuda' but no GPU is visible"):
            dev.resolve_device("cuda", fmt, uri="m")
    with pytest.raises(ModelError, match="torch sees no GPU"):
        load_backend(artifacts["torchscript"].read_bytes(), fmt="torchscript", uri="m.pt", device="cuda")


def test_auto_falls_back_to_cpu_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever the machine has
    monkeypatch.setattr(dev, "_warned", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert dev.resolve_device("auto", "onnx") == "cpu"
        assert dev.resolve_device("auto", "torchscript") == "cpu"
    assert len([w for w in seen if "no GPU is visible" in str(w.message)]) == 1
    assert dev.resolve_device("cpu", "onnx") == "cpu"


def test_cuda_ordinal_follows_spark_address_and_visible_devices() -> None:
    assert dev.cuda_ordinal(None, None) == 0
    assert dev.cuda_ordinal("3", None) == 3  # nothing narrowed visibility: the global id
    assert dev.cuda_ordinal("3", "2,3") == 1  # narrowed: its position in the visible list
    assert dev.cuda_ordinal("5", "5") == 0
    assert dev.cuda_ordinal("3", "0") == 0  # not listed: ordinal 0


def test_threads_follow_the_setting_outside_spark(artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("BATCHSCORE_THREADS", "3")
    try:
        assert task_cpus() == 3
        onnx = load_backend(artifacts["onnx"].read_bytes(), fmt="onnx", uri="m", device="cpu")
        assert onnx.threads == 3  # type: ignore[attr-defined]
        load_backend(artifacts["torchscript"].read_bytes(), fmt="torchscript", uri="m", device="cpu")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
