"""The demo: a generated feature table and a small MLP model (no downloads), scored end to end.

``python -m batchscore.jobs.demo`` (what ``make demo`` runs) generates the demo data and model when missing,
starts a throwaway ``redis-server`` when ``BATCHSCORE_REDIS_URL`` is unset, runs the pipeline on
local Spark and prints a few lookups next to the model's own outputs for the same rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from batchscore.errors import BatchscoreError
from batchscore.exit import exit_now
from batchscore.testing.demo_data import (  # noqa: F401  (re-exported for the demo's users)
    expected_scores,
    feature_matrix,
    mlp_forward,
    mlp_weights,
    pa_array,
    write_features,
    write_onnx_mlp,
    write_torchscript_mlp,
)


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
    p = argparse.ArgumentParser(prog="python -m batchscore.jobs.demo", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", default="conf/models/demo.yaml")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--run-date", default=None)
    p.add_argument("--setup-only", action="store_true", help="only generate the demo model and data")
    p.add_argument("--store", choices=["local", "s3", "azure"], default="local",
                   help="s3: every location (model, features, Delta table, reports) on a throwaway S3 server on "
                   "127.0.0.1 (SeaweedFS, from the dev extra), as on a cluster without a shared disk; azure: the "
                   "same on a throwaway Azure Blob Storage server (Azurite: node and npm, make azurite-env)")
    args = p.parse_args(argv)
    ensure_demo(args.model_config, args.rows)
    if args.setup_only:
        return 0
    if args.store != "local":
        try:
            return _on_store(args)
        except BatchscoreError as e:  # the throwaway store could not start (no weed, no node/npm ...)
            print(f"batchscore: error: demo --store {args.store}: {e}", file=sys.stderr)
            return e.exit_code
    return _demo(args, args.model_config)


@contextmanager
def _throwaway_store(kind: str) -> Iterator[tuple[str, str]]:
    """A throwaway store on 127.0.0.1 with the demo's bucket or container, its variables exported:
    ``(root URI, the same root as the input's alias)``."""
    if kind == "s3":
        from batchscore.testing.local_s3 import LocalS3

        with LocalS3(buckets=("demo",)) as s3:
            os.environ.update(s3.env())
            print(f"demo: started a throwaway S3 server (SeaweedFS) at {s3.endpoint}; bucket s3://demo")
            yield "s3://demo", "s3a://demo"  # s3a:// is an alias of s3://
        return
    from batchscore.testing.local_azure import LocalAzure, install

    install()  # npm ci in tests/azurite when Azurite is missing
    with LocalAzure() as az:
        os.environ.update(az.env())
        root = az.make_container("demo")
        print(f"demo: started a throwaway Azure Blob Storage server (Azurite) at {az.endpoint}; container {root}")
        yield root, root.replace("abfss://", "abfs://", 1)  # abfs:// is an alias of abfss://


def _on_store(args: argparse.Namespace) -> int:
    """The same demo with every location on a throwaway object store on 127.0.0.1."""
    import yaml

    from batchscore import storage as st
    from batchscore.config import load_model_config

    local = load_model_config(args.model_config)
    with _throwaway_store(args.store) as (root, alias):
        st.write_bytes(f"{root}/models/model.onnx", Path(local.model_path).read_bytes())
        st.write_bytes(f"{root}/features/part-0.parquet", Path(local.input.path).read_bytes())
        raw = yaml.safe_load(Path(args.model_config).read_text())
        raw["model"]["uri"] = f"{root}/models/model.onnx"
        raw["input"]["path"] = f"{alias}/features"
        raw["outputs"]["delta"]["path"] = f"{root}/predictions"
        raw["runtime"] = {"report_dir": f"{root}/runs"}
        cfg_path = Path(local.outputs.delta.path).parent / f"demo-{args.store}.yaml"
        cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"demo: config with every location on the store: {cfg_path}")
        return _demo(args, str(cfg_path), reference=(local.model_path, local.input.path))


def _demo(args: argparse.Namespace, cfg_path: str, reference: tuple[str, str] | None = None) -> int:
    from batchscore.cli import lookup
    from batchscore.config import load_model_config
    from batchscore.jobs import run as run_job
    from batchscore.testing.local_redis import LocalRedis

    cfg = load_model_config(cfg_path)
    model_path, features_path = reference or (cfg.model_path, cfg.input.path)
    server = None
    if not os.environ.get(cfg.outputs.redis.url_env):
        server = LocalRedis().start()
        os.environ[cfg.outputs.redis.url_env] = server.url
        print(
            f"demo: {cfg.outputs.redis.url_env} unset; started a throwaway "
            f"{Path(server.exe or 'redis-server').name} on 127.0.0.1:{server.port}"
        )
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
