"""Demo and test fixtures: a generated feature table and small MLP models (no downloads).

``python -m jobs.demo`` (what ``make demo`` runs) generates the demo data and model when missing,
starts a throwaway ``redis-server`` when ``BATCHSCORE_REDIS_URL`` is unset, runs the pipeline on
local Spark and prints a few lookups next to the model's own outputs for the same rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from batchscore.exit import exit_now


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
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
        act = "Relu" if i < len(weights) - 1 else "Sigmoid"
        nodes.append(helper.make_node(act, [f"a{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["scores"]))
    graph = helper.make_graph(
        nodes, "mlp",
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


def expected_scores(model_path: str, features_path: str, key: str, keys: Sequence[int], columns: Sequence[str]) -> np.ndarray:
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


def ensure_demo(cfg_path: str, rows: int) -> None:
    from batchscore.config import load_model_config

    cfg = load_model_config(cfg_path)
    if not Path(cfg.model_path).exists():
        write_onnx_mlp(cfg.model_path, (cfg.input.n_features, 64, len(cfg.outputs.columns)))
        print(f"demo: wrote model {cfg.model_path}")
    if not Path(cfg.input.path).exists():
        write_features(cfg.input.path, rows, cfg.input.n_features, key=cfg.input.key)
        print(f"demo: wrote {rows:,} feature rows to {cfg.input.path}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", default="conf/models/demo.yaml")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--run-date", default=None)
    p.add_argument("--setup-only", action="store_true", help="only generate the demo model and data")
    p.add_argument("--store", choices=["local", "s3"], default="local",
                   help="s3: every location (model, features, Delta table, reports) on a throwaway S3 server on "
                   "127.0.0.1 (SeaweedFS, from the dev extra), as on a cluster without a shared disk")
    args = p.parse_args(argv)
    ensure_demo(args.model_config, args.rows)
    if args.setup_only:
        return 0
    if args.store == "s3":
        return _on_s3(args)
    return _demo(args, args.model_config)


def _on_s3(args: argparse.Namespace) -> int:
    """The same demo with every location on a throwaway S3 server (SeaweedFS on 127.0.0.1)."""
    import yaml

    from batchscore import storage as st
    from batchscore.config import load_model_config
    from batchscore.local_s3 import LocalS3

    local = load_model_config(args.model_config)
    with LocalS3(buckets=("demo",)) as s3:
        os.environ.update(s3.env())
        print(f"demo: started a throwaway S3 server (SeaweedFS) at {s3.endpoint}; bucket s3://demo")
        st.write_bytes("s3://demo/models/model.onnx", Path(local.model_path).read_bytes())
        st.write_bytes("s3://demo/features/part-0.parquet", Path(local.input.path).read_bytes())
        raw = yaml.safe_load(Path(args.model_config).read_text())
        raw["model"]["uri"] = "s3://demo/models/model.onnx"
        raw["input"]["path"] = "s3a://demo/features"  # s3a:// is an alias of s3://
        raw["outputs"]["delta"]["path"] = "s3://demo/predictions"
        raw["runtime"] = {"report_dir": "s3://demo/runs"}
        cfg_path = Path(local.outputs.delta.path).parent / "demo-s3.yaml"
        cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"demo: config with every location on the store: {cfg_path}")
        return _demo(args, str(cfg_path), reference=(local.model_path, local.input.path))


def _demo(args: argparse.Namespace, cfg_path: str, reference: tuple[str, str] | None = None) -> int:
    from batchscore.cli import lookup
    from batchscore.config import load_model_config
    from batchscore.local_redis import LocalRedis
    from jobs import run as run_job

    cfg = load_model_config(cfg_path)
    model_path, features_path = reference or (cfg.model_path, cfg.input.path)
    server = None
    if not os.environ.get(cfg.outputs.redis.url_env):
        server = LocalRedis().start()
        os.environ[cfg.outputs.redis.url_env] = server.url
        print(f"demo: {cfg.outputs.redis.url_env} unset; started a throwaway {Path(server.exe or 'redis-server').name} on 127.0.0.1:{server.port}")
    try:
        run_args = ["--model-config", cfg_path] + (["--run-date", args.run_date] if args.run_date else [])
        code = run_job.main(run_args)
        if code != 0:
            return code
        keys = [0, 1, 42, 4242, args.rows - 1]
        print("\nlookups (batchscore lookup):")
        lookup(["--model-config", cfg_path, *map(str, keys)])
        want = expected_scores(model_path, features_path, cfg.input.key, keys, cfg.input.features or [])
        print("\nthe model run directly on the same rows (onnxruntime, outside Spark):")
        for k, v in zip(keys, want, strict=True):
            print(f"{k}\t" + " ".join(f"{c}={x:.6g}" for c, x in zip(cfg.outputs.columns, v, strict=True)))
        from batchscore.reader import ScoreReader

        reader = ScoreReader(os.environ[cfg.outputs.redis.url_env], prefix=cfg.outputs.redis.key_prefix)
        got = reader.get_many(cfg.name, keys)
        same = all(
            (s := got[str(k)]) is not None and tuple(s.values.values()) == tuple(float(x) for x in v)
            for k, v in zip(keys, want, strict=True)
        )
        print(f"\nlookups equal the model's direct output (bit-exact float32): {'yes' if same else 'NO'}")
        if not same:
            return 1
        return 0
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    exit_now(main())
