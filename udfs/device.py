"""Which device a model runs on inside this task: CPU, or the GPU Spark assigned to the task.

Rules (see ``udfs/README.md``):

* ``cpu`` is always CPU.
* ``cuda``/``auto`` take the GPU address from ``TaskContext.get().resources()["gpu"]`` (Spark's
  scheduler, ``spark.task.resource.gpu.amount``). When ``CUDA_VISIBLE_DEVICES`` is already set
  (a resource manager or daemon narrowed visibility), Spark's global address is *not* a valid
  CUDA ordinal in this process: the address's position in that list is used, else ordinal 0.
  Outside a Spark task, or in local mode (no GPU scheduling), ordinal 0.
* ``auto`` without a visible GPU falls back to CPU with one warning per process; ``cuda`` without
  one is a :class:`ModelError`.
"""

from __future__ import annotations

import os
import warnings

from batchscore.errors import ModelError

_warned = False


def gpu_count(fmt: str) -> int:
    """GPUs this process can use for a ``fmt`` model (0 when the library or the GPU is missing)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return 0
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return 0
    try:
        import torch  # counts devices; ORT's CUDA provider cannot
    except ImportError:
        return 1 if fmt == "onnx" else 0
    if fmt == "onnx" and torch.version.cuda is None:  # a CPU-only torch cannot count: trust ORT
        return 1
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def task_gpu_address() -> str | None:
    """The first GPU address Spark assigned to the running task, if any."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpu = ctx.resources().get("gpu")
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


def cuda_ordinal(address: str | None, visible: str | None) -> int:
    """The CUDA ordinal for Spark GPU ``address`` given ``CUDA_VISIBLE_DEVICES`` = ``visible``."""
    if address is None:
        return 0
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids.index(address) if address in ids else 0
    return int(address) if address.isdigit() else 0


def resolve_device(requested: str, fmt: str, *, uri: str = "model", warn: bool = True) -> str:
    """``cpu`` or ``cuda:<ordinal>`` for this task (see the module docstring). ``warn=False``: no
    CPU-fallback warning here (the executors' caches: the driver warns once per run from the devices
    the loads report, :func:`batchscore.udfs.model_cache.cpu_fallbacks`)."""
    global _warned
    if requested == "cpu":
        return "cpu"
    n = gpu_count(fmt)
    if n == 0:
        if requested == "cuda":
            raise ModelError(
                f"{uri}: scoring.device is 'cuda' but no GPU is visible to this process "
                f"(no CUDA-enabled {'onnxruntime-gpu' if fmt == 'onnx' else 'torch'} or no device); "
                "run on a GPU executor (spark.executor/task.resource.gpu.amount) or set scoring.device: auto|cpu"
            )
        if warn and not _warned:
            _warned = True
            warnings.warn("batchscore: scoring.device is 'auto' and no GPU is visible; scoring on CPU", stacklevel=2)
        return "cpu"
    ordinal = cuda_ordinal(task_gpu_address(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return f"cuda:{min(ordinal, n - 1)}"
