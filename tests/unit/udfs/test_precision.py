"""scoring.precision: torch models run in fp16/bf16 (cast weights and inputs, float32 out), the
cache keeps one entry per precision, fp32 is unchanged, and onnx + fp16/bf16 is refused at load."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from batchscore.config import load_model_config
from batchscore.errors import EXIT_BAD_INPUT, ConfigError, ModelError
from batchscore.testing.demo_data import feature_matrix, write_torchscript_mlp
from batchscore.udfs.backends import check_model, load_backend
from batchscore.udfs.model_cache import ModelCache
from batchscore.udfs.model_ref import model_ref


def _backend_helpers() -> object:
    """``test_udf_backends``'s artifact builders (loaded by path, as tests/spark does)."""
    spec = importlib.util.spec_from_file_location("_udf_backends_helpers",
                                                  Path(__file__).with_name("test_udf_backends.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_helpers = _backend_helpers()
LAYERS: tuple[int, ...] = _helpers.LAYERS  # type: ignore[attr-defined]
write_torch_export_mlp = _helpers.write_torch_export_mlp  # type: ignore[attr-defined]

# Sigmoid outputs in (0, 1): bf16 keeps 8 mantissa bits (~4e-3 relative), fp16 keeps 11.
ATOL = {"bf16": 2e-2, "fp16": 2e-3}
TORCH_FORMATS = ("torchscript", "torch_export")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("precision")
    return {"torchscript": write_torchscript_mlp(d / "m.pt", LAYERS),
            "torch_export": write_torch_export_mlp(d / "m.pt2")}


def _direct_fp32(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """The artifact run by torch itself, in float32, without batchscore."""
    import torch

    module = torch.jit.load(str(path)).eval() if fmt == "torchscript" else torch.export.load(str(path)).module()
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_fp32_is_the_direct_torch_output_bit_for_bit(artifacts: dict[str, Path], fmt: str) -> None:
    x = feature_matrix(257, LAYERS[0])
    for backend in (load_backend(artifacts[fmt].read_bytes(), fmt=fmt, uri=fmt, device="cpu"),
                    load_backend(artifacts[fmt].read_bytes(), fmt=fmt, uri=fmt, device="cpu", precision="fp32")):
        np.testing.assert_array_equal(backend.predict(x), _direct_fp32(artifacts[fmt], fmt, x))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_reduced_precision_scores_close_to_fp32_but_not_identical(artifacts: dict[str, Path], fmt: str,
                                                                  precision: str) -> None:
    x = feature_matrix(300, LAYERS[0])
    expected = _direct_fp32(artifacts[fmt], fmt, x)
    backend = load_backend(artifacts[fmt].read_bytes(), fmt=fmt, uri=fmt, device="cpu", precision=precision)
    check_model(backend, uri=fmt, n_features=LAYERS[0], n_outputs=LAYERS[-1])
    out = backend.predict(x)
    assert out.dtype == np.float32 and out.shape == expected.shape and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, atol=ATOL[precision], rtol=0)
    assert not np.array_equal(out, expected)  # the cast happened: rounding shows in the scores
    assert np.abs(out - expected).max() > 1e-6


def test_cache_keeps_fp32_and_bf16_of_one_artifact_apart(artifacts: dict[str, Path]) -> None:
    path = str(artifacts["torchscript"])
    fp32 = model_ref(path, "torchscript", "cpu", n_features=LAYERS[0])
    bf16 = replace(fp32, precision="bf16")
    assert fp32.cache_key("cpu") != bf16.cache_key("cpu")
    cache = ModelCache(max_models=4)
    b32, loaded32 = cache.get(fp32)
    b16, loaded16 = cache.get(bf16)
    assert loaded32 is not None and loaded16 is not None and b32 is not b16
    assert cache.get(fp32) == (b32, None) and cache.get(bf16) == (b16, None)
    assert (cache.stats.loads, cache.stats.hits, len(cache)) == (2, 2, 2)
    x = feature_matrix(64, LAYERS[0])
    assert not np.array_equal(b32.predict(x), b16.predict(x))
    np.testing.assert_array_equal(b32.predict(x), _direct_fp32(artifacts["torchscript"], "torchscript", x))


def test_a_float32_only_op_in_reduced_precision_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    class Hardcoded(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.ones(x.shape[1], 1, dtype=torch.float32)

    path = tmp_path / "hard.pt"
    torch.jit.script(Hardcoded()).save(str(path))
    load_backend(path.read_bytes(), fmt="torchscript", uri="hard.pt", device="cpu").predict(feature_matrix(3, 4))
    backend = load_backend(path.read_bytes(), fmt="torchscript", uri="hard.pt", device="cpu", precision="bf16")
    with pytest.raises(ModelError, match=r"hard.pt: model failed in bf16 on cpu .*use scoring.precision: fp32") as err:
        backend.predict(feature_matrix(3, 4))
    assert "\n" not in str(err.value)


def test_an_op_without_a_cpu_fp16_kernel_suggests_bf16(tmp_path: Path) -> None:
    import torch

    class NoHalfKernel(torch.nn.Module):  # what torch raises for an op with no CPU Half kernel
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype == torch.float16:
                raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
            return x

    path = tmp_path / "nohalf.pt"
    torch.jit.script(NoHalfKernel()).save(str(path))
    x = feature_matrix(3, 4)
    fp16 = load_backend(path.read_bytes(), fmt="torchscript", uri="nohalf.pt", device="cpu", precision="fp16")
    with pytest.raises(ModelError, match=r"nohalf.pt: model failed in fp16 on cpu .*not implemented for 'Half'.*"
                                         r"use scoring.precision: bf16 \(or fp32\) on CPU"):
        fp16.predict(x)
    bf16 = load_backend(path.read_bytes(), fmt="torchscript", uri="nohalf.pt", device="cpu", precision="bf16")
    np.testing.assert_allclose(bf16.predict(x), x, atol=2e-2)


def test_onnx_backend_refuses_reduced_precision() -> None:
    with pytest.raises(ModelError, match="scoring.precision 'bf16' applies to torch models only"):
        load_backend(b"", fmt="onnx", uri="m.onnx", device="cpu", precision="bf16")


CONFIG = """
name: m
model: {{uri: m.{ext}, format: {fmt}, version: "1"}}
input: {{path: f.parquet, key: id, features: [a, b]}}
outputs: {{delta: {{path: out}}}}
scoring: {{precision: {precision}}}
"""


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_onnx_with_reduced_precision_is_refused_at_config_load(tmp_path: Path, precision: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(CONFIG.format(ext="onnx", fmt="onnx", precision=precision))
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: scoring.precision: '{precision}' applies to torch models only")
    assert f"export the ONNX model in {precision} instead" in msg and "use a torch format" in msg
    assert "\n" not in msg
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_precision_loads_for_torch_formats_and_defaults_to_fp32(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(CONFIG.format(ext="pt2", fmt="torch_export", precision="bf16"))
    assert load_model_config(path).scoring.precision == "bf16"
    path.write_text(CONFIG.format(ext="onnx", fmt="onnx", precision="fp32"))
    assert load_model_config(path).scoring.precision == "fp32"
    path.write_text(CONFIG.format(ext="onnx", fmt="onnx", precision="fp32").replace("scoring: {precision: fp32}\n", ""))
    assert load_model_config(path).scoring.precision == "fp32"
    path.write_text(CONFIG.format(ext="pt", fmt="torchscript", precision="int8"))
    with pytest.raises(ConfigError, match="field 'scoring.precision'"):
        load_model_config(path)
