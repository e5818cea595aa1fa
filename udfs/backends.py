"""Model backends behind one small interface: ONNX Runtime and TorchScript.

A backend is built from the artifact's bytes and exposes ``n_inputs`` (the feature width the
artifact declares, or None when dynamic) and ``predict(x)`` mapping a float32 ``(n, d)`` matrix to
a float32 ``(n, k)`` matrix. Model libraries are imported here, lazily, never at module import.
"""

from __future__ import annotations

import io
import os
from typing import Protocol

import numpy as np

from batchscore.errors import ModelError, missing_extra


class Backend(Protocol):
    n_inputs: int | None

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def _threads() -> int:
    """Intra-op threads: ``spark.task.cpus`` inside a Spark task, so N concurrent tasks on an
    executor use N x task.cpus threads and never oversubscribe it; ``BATCHSCORE_THREADS`` (or 1)
    outside a task."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except ImportError:
        pass
    return max(1, int(os.environ.get("BATCHSCORE_THREADS", "1")))


class OnnxBackend:
    def __init__(self, data: bytes, *, uri: str, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime", "spark") from None
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(
                    f"{uri}: device 'cuda' asked for but onnxruntime has no CUDA provider "
                    "(install batchscore[gpu] on a GPU machine, or set scoring.device: auto|cpu)"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            first = str(exc).strip().splitlines()[0][:200]
            raise ModelError(f"{uri}: not a loadable ONNX model ({first})") from None
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{uri}: ONNX model has {len(inputs)} inputs; batchscore feeds one matrix")
        self._input = inputs[0].name
        shape = inputs[0].shape
        self.n_inputs = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        if len(shape) != 2:
            raise ModelError(f"{uri}: ONNX input '{self._input}' has shape {shape}; expected (batch, features)")

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._sess.run(None, {self._input: x})[0]
        return np.asarray(out, dtype=np.float32)


class TorchScriptBackend:
    def __init__(self, data: bytes, *, uri: str, device: str) -> None:
        try:
            import torch
        except ImportError:
            raise missing_extra("torch", "torch") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelError(
                f"{uri}: device 'cuda' asked for but torch sees no GPU "
                "(set scoring.device: auto|cpu, or run where a GPU is visible)"
            )
        torch.set_num_threads(_threads())
        self._torch = torch
        self._device = torch.device("cuda" if device == "cuda" else "cpu")
        try:
            self._module = torch.jit.load(io.BytesIO(data), map_location=self._device).eval()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise ModelError(f"{uri}: not a loadable TorchScript model ({first})") from None
        self.n_inputs = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(x).to(self._device))
        return out.detach().to("cpu").numpy().astype(np.float32, copy=False)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if device != "auto":
        return device
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "cuda"
    except ImportError:
        pass
    return "cpu"


def load_backend(data: bytes, *, fmt: str, uri: str, device: str) -> Backend:
    if fmt == "onnx":
        return OnnxBackend(data, uri=uri, device=device)
    if fmt == "torchscript":
        return TorchScriptBackend(data, uri=uri, device=device)
    raise ModelError(f"{uri}: unknown model format '{fmt}'; use 'onnx' or 'torchscript'")


def check_model(backend: Backend, *, uri: str, n_features: int, n_outputs: int) -> None:
    """Fail fast (on the driver) when the artifact does not fit the config's input/outputs."""
    if backend.n_inputs is not None and backend.n_inputs != n_features:
        raise ModelError(
            f"{uri}: model expects {backend.n_inputs} features but the config gives {n_features}; "
            "fix input.features or the model"
        )
    probe = np.zeros((2, n_features), dtype=np.float32)
    try:
        out = backend.predict(probe)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"{uri}: model failed on a ({2}, {n_features}) float32 probe batch: {first}") from None
    shape = tuple(out.shape)
    if n_outputs == 1 and shape == (2,):
        return
    if shape != (2, n_outputs):
        raise ModelError(
            f"{uri}: model output shape {shape} for 2 rows does not match outputs.columns "
            f"({n_outputs} column(s): expected (2, {n_outputs})); fix outputs.columns or the model"
        )
