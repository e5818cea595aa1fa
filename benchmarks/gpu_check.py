"""GPU check of the scoring core, without Spark (``make gpu-check``; not part of ``make bench``).

The heavy MLP (32->512->512->512->1, sigmoid) as TorchScript, scored from a host float32 matrix
through batchscore's own path (``batchscore.udfs.device.resolve_device`` -> ``batchscore.udfs.backends`` ->
``batchscore.udfs.scoring.score_pieces``: batches re-cut to ``--batch``, the next batch prepared in a
second thread, host->device copy, float32 scores back on the host) vs raw torch on tensors already
on the GPU (the ceiling: no copies, no Python per batch beyond the call). Prints rows/s for both and
the ratio (target >= 0.9x), and checks that the two give the same scores.

Runs where only numpy + torch are installed (a GPU box with no Java/pyspark): it then drives the
backend with a plain loop and says so. Without a GPU it runs on CPU and says that the figures are
not the GPU check (the device-selection path still runs: ``--device auto`` falls back with one
warning, ``--device cuda`` fails clearly).

    python benchmarks/gpu_check.py [--device cuda|auto|cpu] [--rows 2000000] [--batch 8192] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batchscore.testing.demo_data import feature_matrix, write_torchscript_mlp  # noqa: E402
from batchscore.udfs.backends import load_backend  # noqa: E402
from batchscore.udfs.device import resolve_device  # noqa: E402
from batchscore.udfs.model_ref import model_ref, read_artifact  # noqa: E402

LAYERS = (32, 512, 512, 512, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "auto", "cpu"])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = ap.parse_args()
    import torch

    path = write_torchscript_mlp(Path(tempfile.mkdtemp()) / "heavy.pt", LAYERS)
    ref = model_ref(str(path), "torchscript", args.device, n_features=LAYERS[0])
    device = resolve_device(ref.device, ref.format, uri=ref.uri)  # the executor's own rule
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {device}"
          + (f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else
             " -- no GPU: these are CPU figures, not the GPU check"))
    x = feature_matrix(args.rows, LAYERS[0])
    try:
        from batchscore.udfs.scoring import score_pieces

        def batchscore() -> np.ndarray:
            pieces = ((None, x[i : i + 65536]) for i in range(0, len(x), 65536))  # Arrow-sized slices
            return np.concatenate([out for _, out in score_pieces(ref, pieces, n_outputs=1, batch_size=args.batch)])
        how = "batchscore.udfs.scoring.score_pieces (exact batches; next batch prepared in a thread on GPU)"
    except ImportError as exc:  # no pyspark/pyarrow here: the backend alone
        backend = load_backend(read_artifact(ref.uri), fmt=ref.format, uri=ref.uri, device=device,
                               precision=args.precision)

        def batchscore() -> np.ndarray:
            return np.concatenate([backend.predict(x[i : i + args.batch]) for i in range(0, len(x), args.batch)])
        how = f"backend.predict loop ({exc.name} not installed)"

    dev = torch.device(device)
    module = torch.jit.load(str(path), map_location=dev).eval()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    module = module.to(dtype)
    xt = torch.from_numpy(x).to(dev, dtype)

    def raw() -> torch.Tensor:
        with torch.inference_mode():
            outs = [module(xt[i : i + args.batch]) for i in range(0, len(xt), args.batch)]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        return torch.cat(outs)

    times: dict[str, list[float]] = {"raw torch (tensors on device)": [], "batchscore": []}
    results: dict[str, object] = {}
    for rep in range(args.reps + 1):  # round 0 warms up (CUDA context, kernels, allocator)
        for name, fn in (("raw torch (tensors on device)", raw), ("batchscore", batchscore)):
            t = time.perf_counter()
            results[name] = fn()
            if rep:
                times[name].append(time.perf_counter() - t)
    raw_out = results["raw torch (tensors on device)"].float().cpu().numpy().reshape(-1)  # type: ignore[attr-defined]
    ours = np.asarray(results["batchscore"]).reshape(-1)
    diff = float(np.max(np.abs(raw_out - ours)))
    rate = {k: args.rows / statistics.median(v) for k, v in times.items()}
    per_round = [tr / tb for tr, tb in zip(times["raw torch (tensors on device)"], times["batchscore"], strict=True)]
    print(f"{args.rows:,} rows x {LAYERS[0]}, batch {args.batch}, {args.precision}, median of {args.reps}; "
          f"batchscore via {how}")
    for k, r in rate.items():
        print(f"  {k:32} {r:14,.0f} rows/s")
    ratio = statistics.median(per_round)
    print(f"  batchscore / raw: {ratio:.2f}x (rounds {min(per_round):.2f}..{max(per_round):.2f}; target >= 0.90x); "
          f"max |diff| {diff:.2e}")
    if diff > (1e-4 if args.precision == "fp32" else 2e-2):
        print("FAILED: batchscore's scores differ from raw torch")
        return 1
    return 0 if ratio >= 0.9 or not device.startswith("cuda") else 1


if __name__ == "__main__":
    from batchscore.errors import ModelError

    try:
        sys.exit(main())
    except ModelError as exc:  # e.g. --device cuda where no GPU is visible
        print(f"gpu_check: {exc}", file=sys.stderr)
        sys.exit(2)
