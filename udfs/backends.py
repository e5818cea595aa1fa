"""Model backends behind one small interface: ONNX Runtime, TorchScript and ``torch.export``.

A backend is built from the artifact's bytes on a resolved device (``cpu`` or ``cuda:<n>``) and
exposes ``n_inputs`` (the feature width the artifact declares, or None when it does not) and
``predict(x)``: a C-contiguous float32 ``(n, d)`` matrix in, a float32 ``(n, k)`` matrix out. A
model with several outputs gives their columns side by side (each output ``(n,)`` or ``(n, j)``),
one score column each. Model libraries are imported here, lazily, never at module import.

Precision (``scoring.precision``): torch backends run in ``fp32`` (the artifact as exported),
``fp16`` or ``bf16``: the module's floating-point parameters and buffers and each input batch are
cast to that dtype on the device, and outputs come back as float32. ONNX models run in the
precision they were exported in (fp32 only here).
"""

from __future__ import annotations

import io
import os
from typing import Any, Protocol

import numpy as np

from batchscore.errors import ModelError, missing_extra

FORMATS = ("onnx", "torchscript", "torch_export")
PRECISIONS = ("fp32", "fp16", "bf16")


class Backend(Protocol):
    n_inputs: int | None
    on_gpu: bool

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def task_cpus() -> int:
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


_threads = task_cpus  # the old private name


def _columns(outs: list[Any], n: int, uri: str) -> np.ndarray:
    """Several model outputs -> one float32 (n, k) matrix."""
    cols = []
    for o in outs:
        a = np.asarray(o, dtype=np.float32)
        if a.ndim == 0 or a.shape[0] != n:
            raise ModelError(
                f"{uri}: a model output has shape {a.shape} for {n} rows; each output must be (rows,) or (rows, k)"
            )
        cols.append(a.reshape(n, -1))
    return cols[0] if len(cols) == 1 else np.concatenate(cols, axis=1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _dtype_complaint(exc: BaseException) -> str | None:
    """The line of a torch error that is about a half/bfloat16 dtype, if any (TorchScript puts
    the real error last, after its own traceback)."""
    for line in reversed(str(exc).strip().splitlines()):
        low = line.lower()
        if any(w in low for w in ("half", "bfloat16", "dtype", "scalar type")):
            return line.strip()[:200]
    return None


class OnnxBackend:
    def __init__(self, data: bytes, *, uri: str, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime", "spark") from None
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(
                    f"{uri}: device 'cuda' asked for but onnxruntime has no CUDA provider "
                    "(install batchscore[gpu] on a GPU machine, or set scoring.device: auto|cpu)"
                )
            ordinal = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": ordinal}), "CPUExecutionProvider"]
        self.on_gpu = device.startswith("cuda")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = task_cpus()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = opts.intra_op_num_threads
        try:
            self._sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(f"{uri}: not a loadable ONNX model ({_first_line(exc)})") from None
        self._uri = uri
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelError(
                f"{uri}: ONNX model has {len(inputs)} inputs ({names}); batchscore feeds one (rows, features) matrix"
            )
        inp = inputs[0]
        self._input, shape = inp.name, inp.shape
        if len(shape) != 2:
            raise ModelError(f"{uri}: ONNX input '{inp.name}' has shape {shape}; expected (batch, features)")
        if inp.type != "tensor(float)":
            raise ModelError(
                f"{uri}: ONNX input '{inp.name}' has type {inp.type}; batchscore feeds tensor(float) (float32)"
            )
        self.n_inputs = shape[1] if isinstance(shape[1], int) else None
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _columns(self._sess.run(None, {self._input: x}), len(x), self._uri)


class _TorchBackend:
    """Shared by TorchScript and torch.export programs: threads, device, inference mode."""

    kind = "torch"

    def __init__(self, data: bytes, *, uri: str, device: str, precision: str = "fp32") -> None:
        try:
            import torch
        except ImportError:
            raise missing_extra("torch", "torch") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(
                f"{uri}: device 'cuda' asked for but torch sees no GPU "
                "(set scoring.device: auto|cpu, or run where a GPU is visible)"
            )
        self.threads = task_cpus()
        torch.set_num_threads(self.threads)
        self._torch, self._uri = torch, uri
        self._device = torch.device(device)
        self._cuda = self.on_gpu = device.startswith("cuda")
        self.precision = precision
        self._dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if precision == "bf16" and self._cuda and not torch.cuda.is_bf16_supported():
            raise ModelError(
                f"{uri}: scoring.precision is 'bf16' but GPU {device} has no bfloat16 support; "
                "use scoring.precision: fp16 or fp32"
            )
        self.n_inputs: int | None = None
        try:
            module = self._load(torch, data)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{uri}: not a loadable {self.kind} model ({_first_line(exc)})") from None
        # fp32 keeps the module exactly as loaded; fp16/bf16 cast its floating-point params/buffers.
        self._module = module if self._dtype is None else module.to(self._dtype)

    def _load(self, torch: Any, data: bytes) -> Any:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self._cuda:
                t = t.pin_memory().to(self._device, non_blocking=True)
            if self._dtype is None:
                out = self._module(t)
            else:
                out = self._reduced(t.to(self._dtype))
        outs = list(out) if isinstance(out, tuple | list) else [out]
        return _columns([o.detach().float().cpu().numpy() for o in outs], len(x), self._uri)

    def _reduced(self, t: Any) -> Any:
        """The forward pass in fp16/bf16; a dtype failure becomes a clear :class:`ModelError`."""
        try:
            return self._module(t)
        except Exception as exc:
            complaint = _dtype_complaint(exc)
            if complaint is None:
                raise
            if self.precision == "fp16" and not self._cuda and "not implemented" in complaint.lower():
                fix = "an op has no fp16 kernel on CPU: use scoring.precision: bf16 (or fp32) on CPU"
            else:
                fix = (
                    "the model likely hard-codes float32 (constants, dtype= arguments, frozen weights): "
                    "use scoring.precision: fp32, or export the model in that precision"
                )
            raise ModelError(
                f"{self._uri}: model failed in {self.precision} on {self._device} ({complaint}); {fix}"
            ) from None


class TorchScriptBackend(_TorchBackend):
    kind = "TorchScript"

    def _load(self, torch: Any, data: bytes) -> Any:
        return torch.jit.load(io.BytesIO(data), map_location=self._device).eval()


class TorchExportBackend(_TorchBackend):
    """A ``torch.export`` program (``torch.export.save``, ``.pt2``); its input spec is checked."""

    kind = "torch.export"

    def _load(self, torch: Any, data: bytes) -> Any:
        program = torch.export.load(io.BytesIO(data))
        metas = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"]
        users = program.graph_signature.user_inputs
        names = [n.name for n in program.graph.nodes if n.op == "placeholder"]
        specs = [m for n, m in zip(names, metas, strict=True) if n in users]
        if len(specs) != 1:
            raise ModelError(
                f"{self._uri}: torch.export program has {len(specs)} inputs; "
                "batchscore feeds one (rows, features) matrix"
            )
        val = specs[0]
        if val is not None:
            if val.dtype != torch.float32:
                raise ModelError(f"{self._uri}: torch.export input has dtype {val.dtype}; batchscore feeds float32")
            if len(val.shape) != 2:
                raise ModelError(
                    f"{self._uri}: torch.export input has shape {tuple(val.shape)}; expected (batch, features)"
                )
            width = val.shape[1]
            self.n_inputs = int(width) if isinstance(width, int) else None
        return program.module().to(self._device)


def load_backend(data: bytes, *, fmt: str, uri: str, device: str, precision: str = "fp32") -> Backend:
    """The backend for ``fmt`` on the resolved ``device`` (``cpu`` or ``cuda:<n>``), in
    ``precision`` (``fp32``, or ``fp16``/``bf16`` for torch formats)."""
    if device == "cuda":
        device = "cuda:0"
    if precision not in PRECISIONS:
        raise ModelError(f"{uri}: unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if fmt == "onnx":
        if precision != "fp32":
            raise ModelError(
                f"{uri}: scoring.precision '{precision}' applies to torch models only; "
                "export the ONNX model in that precision instead (float32 inputs/outputs), or use a torch format"
            )
        return OnnxBackend(data, uri=uri, device=device)
    if fmt == "torchscript":
        return TorchScriptBackend(data, uri=uri, device=device, precision=precision)
    if fmt == "torch_export":
        return TorchExportBackend(data, uri=uri, device=device, precision=precision)
    raise ModelError(f"{uri}: unknown model format '{fmt}'; use one of {', '.join(FORMATS)}")


def warm_up(backend: Backend, n_features: int, rows: int = 2) -> np.ndarray:
    """Run one small batch (first-call allocations, kernel selection) and return its output."""
    return backend.predict(np.zeros((rows, n_features), dtype=np.float32))


def check_model(backend: Backend, *, uri: str, n_features: int, n_outputs: int) -> None:
    """Fail fast (on the driver) when the artifact does not fit the config's input/outputs."""
    if backend.n_inputs is not None and backend.n_inputs != n_features:
        raise ModelError(
            f"{uri}: model expects {backend.n_inputs} features but the config gives {n_features}; "
            "fix input.features or the model"
        )
    try:
        out = warm_up(backend, n_features)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{uri}: model failed on a (2, {n_features}) float32 probe batch: {_first_line(exc)}"
        ) from None
    if tuple(out.shape) != (2, n_outputs):
        raise ModelError(
            f"{uri}: model gives {out.shape[1]} output column(s), which does not match outputs.columns "
            f"({n_outputs} name(s)); fix outputs.columns or the model"
        )
