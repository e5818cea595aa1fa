"""Demo and test data: small MLP models written as ONNX / TorchScript and generated feature tables
(no downloads), plus the ground truth (ONNX Runtime run directly, outside Spark).

Used by ``python -m batchscore.jobs.demo``, the tests and the benchmarks. numpy is needed; onnx,
torch, pyarrow and onnxruntime are imported by the functions that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["expected_scores", "feature_matrix", "mlp_forward", "mlp_weights", "write_features", "write_onnx_mlp",
           "write_torchscript_mlp"]


def mlp_weights(layers: Sequence[int], seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0, 1 / np.sqrt(i), size=(i, o)).astype(np.float32), rng.normal(0, 0.1, size=o).astype(np.float32))
        for i, o in zip(layers[:-1], layers[1:], strict=True)
    ]


def mlp_forward(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The MLP in numpy (ReLU hidden layers, sigmoid output): the reference for tests."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        h = np.maximum(h, 0) if i < len(weights) - 1 else 1 / (1 + np.exp(-h))
    return h.astype(np.float32)


def write_onnx_mlp(path: str | Path, layers: Sequence[int] = (32, 64, 1), seed: int = 7) -> Path:
    """An ONNX MLP with a dynamic batch dimension, input ``features`` (N, layers[0]) float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = mlp_weights(layers, seed)
    nodes, inits, prev = [], [], "features"
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
        ]
        act = "Relu" if i < len(weights) - 1 else "Sigmoid"
        nodes.append(helper.make_node(act, [f"a{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", layers[0]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", layers[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def write_torchscript_mlp(path: str | Path, layers: Sequence[int] = (32, 64, 1), seed: int = 7) -> Path:
    """The same MLP as :func:`write_onnx_mlp`, as TorchScript."""
    import torch

    weights = mlp_weights(layers, seed)
    mods: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        mods += [lin, torch.nn.ReLU() if i < len(weights) - 1 else torch.nn.Sigmoid()]
    scripted = torch.jit.script(torch.nn.Sequential(*mods).eval())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(out))
    return out


def feature_matrix(rows: int, n_features: int = 32, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, n_features)).astype(np.float32)


def write_features(path: str | Path, rows: int, n_features: int = 32, seed: int = 11, key: str = "user_id") -> Path:
    """A Parquet feature table: ``key`` int64 (0..rows-1) + ``f0..f{n-1}`` float32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = feature_matrix(rows, n_features, seed)
    cols = {key: pa.array(np.arange(rows, dtype=np.int64))}
    cols.update({f"f{i}": pa.array(x[:, i]) for i in range(n_features)})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), out, row_group_size=1 << 16)
    return out


def expected_scores(
    model_path: str, features_path: str, key: str, keys: Sequence[int], columns: Sequence[str]
) -> np.ndarray:
    """Score ``keys``' rows with ONNX Runtime directly (outside Spark): the ground truth."""
    import onnxruntime as ort
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(features_path)
    picked = table.filter(pc.is_in(table[key], pa_array(keys)))
    order = {int(k): i for i, k in enumerate(picked[key].to_pylist())}
    x = np.column_stack([picked[c].to_numpy() for c in columns]).astype(np.float32)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return np.asarray(out[[order[int(k)] for k in keys]], dtype=np.float32)


def pa_array(values: Sequence[int]):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.array(list(values), type=pa.int64())
