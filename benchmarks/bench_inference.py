"""Inference throughput: batchscore's score stage vs raw ONNX Runtime, Spark's ceilings and
``pyspark.ml.functions.predict_batch_udf`` (``make bench``; not part of ``make test``).

One Spark session (local[2]), one generated Parquet table (1M rows: ``id`` int64 + 32 float32
columns, under ``.batchscore/bench/``, generated once), two ONNX MLPs (light 32->64->1, heavy
32->512->512->512->1, sigmoid). Every case writes to the ``noop`` sink. One warm-up round, then
``--reps`` rounds (default 5); the cases run interleaved within each round, so a noisy neighbour
slows all of them alike. Prints rows/s medians and, for each bar, the median of the per-round
ratios; exits 1 when a bar is missed.

Three more input shapes, each scored by batchscore's Spark-scan path (``input.read: spark``:
``batchscore.udfs.scoring.with_predictions`` on ``spark.read.parquet``, case ``batchscore``) and by
``predict_batch_udf`` on the same frame: ``wide`` (``--wide-rows``, default 200k rows x 500
columns, every 4th float64, the rest float32; 500->64->1), ``array`` (``--array-rows``, default
500k rows, one ``array<float>`` column of 64; 64->64->1) and ``multi`` (the 1M x 32 table, a
32->64->4 model: four output columns).

The public UDF ``batchscore.udfs.predict_udf`` (``kind="pandas"``: a real iterator ``pandas_udf``;
``kind="arrow"``: an iterator ``arrow_udf``) on every shape beside ``predict_batch_udf`` (cases
``predict_udf pandas`` / ``predict_udf arrow``, the narrow shape under ``light``): the same frame,
model, batch size, ``noop`` sink and ``select("id", udf(...))``; fed the feature columns
(``udf(*feats)``) or the array column (``udf(F.col("emb"))``). Bar: the pandas kind >= 1.5x
``predict_batch_udf`` on each shape (the arrow kind's ratios are printed, no bar).

``--cases SUBSTR`` (repeatable) runs only the cases whose ``model case`` label contains one of
them, plus the baselines of their bars and ``predict_batch_udf`` beside a ``predict_udf`` case
(e.g. ``--cases predict_udf``); bars and ratios left without both cases are skipped.

    .venv/bin/python benchmarks/bench_inference.py [--rows 1000000] [--reps 5] [--wide-rows 200000] \
        [--array-rows 500000] [--cases SUBSTR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from batchscore.testing.demo_data import feature_matrix, write_onnx_mlp  # noqa: E402 (after the sys.path edit)

OUT = REPO / ".batchscore" / "bench"
N_FEATURES = 32
MODELS = {"light": ((32, 64, 1), 4096), "heavy": ((32, 512, 512, 512, 1), 1024)}  # layers, batch size
WIDE, ARRAY = 500, 64  # feature columns of the wide table, array length of the array table
SHAPES = {  # shape: (model layers, batch size); their "batchscore" case is the Spark-scan path
    "wide": ((WIDE, 64, 1), 4096),
    "array": ((ARRAY, 64, 1), 4096),
    "multi": ((N_FEATURES, 64, 4), 4096),
}
FILES = 8
UDF_KINDS = ("pandas", "arrow")  # predict_udf(kind=...): cases "predict_udf pandas", "predict_udf arrow"
BARS = [  # (model or shape, case, baseline case, minimum ratio)
    ("light", "batchscore", "identity mapInArrow", 0.85),
    ("light", "batchscore", "predict_batch_udf", 1.15),
    ("heavy", "batchscore", "raw ORT (2 threads)", 0.90),
    ("light", "batchscore read=spark", "predict_batch_udf", 1.2),  # the narrow shape on Spark's scan
    ("wide", "batchscore", "predict_batch_udf", 1.2),
    ("array", "batchscore", "predict_batch_udf", 1.2),
    ("multi", "batchscore", "predict_batch_udf", 1.2),
    *((shape, "predict_udf pandas", "predict_batch_udf", 1.5) for shape in ("light", *SHAPES)),  # the public UDF
]


def _write_once(path: Path, rows: int, width: int, seed: int | None,
                columns: Callable[[np.ndarray, np.ndarray], dict[str, pa.Array]]) -> Path:
    """``FILES`` Parquet files under ``path``: ``id`` + ``columns(row ids, features)`` over a
    ``(rows, width)`` feature matrix, generated only when ``path`` has none yet (``_SUCCESS``)."""
    import pyarrow.parquet as pq

    if (path / "_SUCCESS").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    x = feature_matrix(rows, width) if seed is None else feature_matrix(rows, width, seed=seed)
    for p, part in enumerate(np.array_split(np.arange(rows), FILES)):
        cols = {"id": pa.array(part.astype(np.int64)), **columns(part, x)}
        pq.write_table(pa.table(cols), path / f"part-{p}.parquet", row_group_size=1 << 16)
    (path / "_SUCCESS").touch()
    return path


def make_data(rows: int) -> Path:
    return _write_once(OUT / f"features-{rows}", rows, N_FEATURES, None,
                       lambda part, x: {f"f{i}": pa.array(x[part, i]) for i in range(N_FEATURES)})


def make_wide_data(rows: int) -> Path:
    """``id`` + ``WIDE`` feature columns, every 4th float64 and the rest float32."""
    return _write_once(OUT / f"wide-{rows}x{WIDE}", rows, WIDE, 12, lambda part, x: {
        f"f{i}": pa.array(x[part, i].astype(np.float64) if i % 4 == 3 else x[part, i]) for i in range(WIDE)})


def make_array_data(rows: int) -> Path:
    """``id`` + ``emb``: one ``array<float>`` column of ``ARRAY`` values per row."""
    return _write_once(OUT / f"array-{rows}x{ARRAY}", rows, ARRAY, 13, lambda part, x: {"emb": pa.ListArray.from_arrays(
        pa.array(np.arange(0, len(part) * ARRAY + 1, ARRAY, dtype=np.int32)), pa.array(x[part].ravel()))})


def udf_frames(df, path: Path, args: list, *, columns: list[str], batch: int) -> dict[str, object]:  # type: ignore[no-untyped-def,type-arg]
    """``predict_udf`` of each kind over ``df``: ``select("id", udf(*args).alias("score"))``, as the
    ``predict_batch_udf`` case of the same shape selects it (one output: float; several: a struct)."""
    from batchscore.udfs import predict_udf

    frames = {f"predict_udf {kind}": df.select("id", predict_udf(
        str(path), columns=columns, batch_size=batch, device="cpu", kind=kind)(*args).alias("score"))
        for kind in UDF_KINDS}
    frames["predict_udf no-op"] = df.select("id", _noop_pandas_udf(args, columns).alias("score"))
    return frames


def _noop_pandas_udf(args: list, columns: list[str]):  # type: ignore[no-untyped-def,type-arg]
    """The ceiling of any column ``pandas_udf`` on this shape: the pandas kind's plan and input (several
    feature columns packed into one ``array<float>``, as ``predict_udf`` does), the same return type,
    and a body that runs no model (zeros). What it costs is Spark's ``ArrowEvalPythonExec`` and its
    Arrow <-> pandas conversion, which ``predict_udf`` and ``predict_batch_udf`` pay too."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType, StructField, StructType

    from batchscore.udfs.predict import _feature_arg

    arg, _label = _feature_arg(args)  # exactly what predict_udf is applied to
    multi = len(columns) > 1
    rtype = StructType([StructField(c, FloatType()) for c in columns]) if multi else FloatType()

    def zeros(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for b in batches:
            z = np.zeros((len(b), len(columns)), dtype=np.float32)
            yield pd.DataFrame(z, columns=columns, copy=False) if multi else pd.Series(z[:, 0])

    return F.pandas_udf(zeros, rtype)(arg)  # type: ignore[call-overload]


def raw_ort(model: Path, x: np.ndarray, batch: int) -> Callable[[], None]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run() -> None:
        for i in range(0, len(x), batch):
            sess.run(None, {name: x[i : i + batch]})

    return run


def spark_cases(spark, data: Path, models: dict[str, Path]) -> dict[tuple[str, str], Callable[[], None]]:  # type: ignore[no-untyped-def]
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import FloatType

    from batchscore.config import ModelConfig
    from batchscore.jobs.score import scored_frame
    from batchscore.udfs.model_ref import model_ref

    df = spark.read.parquet(str(data))
    feats = [f"f{i}" for i in range(N_FEATURES)]

    def noop(frame) -> Callable[[], None]:  # type: ignore[no-untyped-def]
        return lambda: frame.write.format("noop").mode("overwrite").save()

    @pandas_udf(df.select(*feats).schema)  # type: ignore[call-overload]
    def identity(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from batches

    def same(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from batches

    cases = {
        ("-", "scan"): noop(df),
        ("-", "identity pandas_udf"): noop(df.select("id", identity(F.struct(*feats)).alias("x"))),
        ("-", "identity mapInArrow"): noop(df.mapInArrow(same, df.schema)),
    }
    for name, path in models.items():
        _layers, batch = MODELS[name]

        def make_predict_fn(path: str = str(path)):  # type: ignore[no-untyped-def]
            import onnxruntime as ort
            from pyspark import TaskContext

            opts = ort.SessionOptions()  # the same thread rule as batchscore: spark.task.cpus
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(TaskContext.get().cpus()), 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0].name
            return lambda x: sess.run(None, {inp: x})[0]

        pbu = predict_batch_udf(make_predict_fn, return_type=FloatType(), batch_size=batch)
        cases[(name, "predict_batch_udf")] = noop(df.select("id", pbu(F.struct(*feats)).alias("score")))
        if name == "light":  # the narrow shape: the public UDF fed the 32 feature columns
            for case, frame in udf_frames(df, path, feats, columns=["score"], batch=batch).items():
                cases[(name, case)] = noop(frame)
        cfg = ModelConfig.model_validate({
            "name": f"bench_{name}", "model": {"uri": str(path), "format": "onnx", "version": "bench"},
            "input": {"path": str(data), "key": "id", "features": feats},
            "outputs": {"columns": ["score"], "delta": {"path": str(OUT / "unused")}},
            "scoring": {"batch_size": batch, "device": "cpu"},
        })
        ref = model_ref(str(path), "onnx", "cpu", n_features=N_FEATURES)
        out = scored_frame(df, cfg, ref, run_id="bench", scored_at=datetime.now(UTC))
        cases[(name, "batchscore")] = noop(out)  # input.read: auto -> the tasks read the files
        via_scan = cfg.model_copy(update={"input": cfg.input.model_copy(update={"read": "spark"})})
        out = scored_frame(df, via_scan, ref, run_id="bench", scored_at=datetime.now(UTC))
        cases[(name, "batchscore read=spark")] = noop(out)  # Spark's scan feeds mapInArrow
    return cases


def ort_predict_fn(path: str, outputs: list[str] | None = None):  # type: ignore[no-untyped-def]
    """``predict_batch_udf``'s ``make_predict_fn``: ORT with ``spark.task.cpus`` threads (as
    batchscore), float32 input (a frame with float64 columns arrives as float64); ``outputs``: a
    dict of columns for a struct return type."""

    def make_predict_fn():  # type: ignore[no-untyped-def]
        import onnxruntime as ort
        from pyspark import TaskContext

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(TaskContext.get().cpus()), 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name

        def predict(x):  # type: ignore[no-untyped-def]
            out = sess.run(None, {inp: x.astype(np.float32, copy=False)})[0]
            return out if outputs is None else {c: out[:, j] for j, c in enumerate(outputs)}

        return predict

    return make_predict_fn


def shape_cases(spark, data: dict[str, Path], models: dict[str, Path]) -> dict[tuple[str, str], Callable[[], None]]:  # type: ignore[no-untyped-def]
    """Per shape: batchscore's Spark-scan path and ``predict_batch_udf`` over the same frame."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType, StructField, StructType

    from batchscore.udfs.model_ref import model_ref
    from batchscore.udfs.scoring import with_predictions

    def noop(frame) -> Callable[[], None]:  # type: ignore[no-untyped-def]
        return lambda: frame.write.format("noop").mode("overwrite").save()

    cases: dict[tuple[str, str], Callable[[], None]] = {}
    for shape, path in models.items():
        layers, batch = SHAPES[shape]
        df = spark.read.parquet(str(data[shape]))
        ref = model_ref(str(path), "onnx", "cpu", n_features=layers[0])
        columns = ["score"] if layers[-1] == 1 else [f"score{j}" for j in range(layers[-1])]
        feats = None if shape == "array" else [f"f{i}" for i in range(layers[0])]
        if layers[-1] == 1:
            pbu = predict_batch_udf(ort_predict_fn(str(path)), return_type=FloatType(), batch_size=batch,
                                    input_tensor_shapes=[[layers[0]]] if shape == "array" else None)
        else:
            struct = StructType([StructField(c, FloatType()) for c in columns])
            pbu = predict_batch_udf(ort_predict_fn(str(path), columns), return_type=struct, batch_size=batch)
        arg = F.col("emb") if feats is None else F.struct(*feats)
        if shape == "wide":
            cases[(shape, "scan")] = noop(df)
        cases[(shape, "predict_batch_udf")] = noop(df.select("id", pbu(arg).alias("score")))
        if shape == "wide":  # the same UDF fed one array column: Spark's Arrow writer then costs as batchscore's
            pbu_array = predict_batch_udf(ort_predict_fn(str(path)), return_type=FloatType(), batch_size=batch,
                                          input_tensor_shapes=[[layers[0]]])
            cases[(shape, "predict_batch_udf array")] = noop(df.select("id", pbu_array(F.array(*feats)).alias("score")))
        for case, frame in udf_frames(df, path, [F.col("emb")] if feats is None else feats, columns=columns,
                                      batch=batch).items():
            cases[(shape, case)] = noop(frame)
        out = with_predictions(df, ref, key="id", features=feats, feature_array="emb" if feats is None else None,
                               columns=columns, batch_size=batch)
        cases[(shape, "batchscore")] = noop(out)
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wide-rows", type=int, default=200_000)
    ap.add_argument("--array-rows", type=int, default=500_000)
    ap.add_argument("--cases", action="append", metavar="SUBSTR",
                    help="only the cases whose 'model case' label contains SUBSTR (repeatable), plus their baselines")
    args = ap.parse_args()
    data = make_data(args.rows)
    models = {n: OUT / f"{n}.onnx" for n in MODELS}
    for n, p in models.items():
        if not p.exists():
            write_onnx_mlp(p, MODELS[n][0])
    shape_data = {"wide": make_wide_data(args.wide_rows), "array": make_array_data(args.array_rows), "multi": data}
    shape_models = {n: OUT / f"{n}-{'x'.join(map(str, SHAPES[n][0]))}.onnx" for n in SHAPES}
    for n, p in shape_models.items():
        if not p.exists():
            write_onnx_mlp(p, SHAPES[n][0])
    rows = {"wide": args.wide_rows, "array": args.array_rows}  # the others: --rows

    from batchscore.jobs._session import build_session

    spark = build_session("batchscore-bench-inference", master="local[2]",
                          conf={"spark.ui.showConsoleProgress": "false"})
    x = feature_matrix(args.rows, N_FEATURES)
    cases = {(n, "raw ORT (2 threads)"): raw_ort(p, x, MODELS[n][1]) for n, p in models.items()}
    cases.update(spark_cases(spark, data, models))
    cases.update(shape_cases(spark, shape_data, shape_models))
    del x
    if args.cases:
        keep = {k for k in cases if any(s in " ".join(k) for s in args.cases)}
        for model, case, base, _need in BARS:
            if (model, case) in keep:
                keep.add((model, base) if (model, base) in cases else ("-", base))
        keep |= {(model, "predict_batch_udf") for model, case in keep if case.startswith("predict_udf")}
        cases = {k: v for k, v in cases.items() if k in keep}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        for key, run in cases.items():
            t = time.perf_counter()
            run()
            if rep:
                times[key].append(time.perf_counter() - t)
        print(f"round {rep}/{args.reps} done" + (" (warm-up)" if not rep else ""), file=sys.stderr, flush=True)
    n_rows = {k: rows.get(k[0], args.rows) for k in times}
    rate = {k: n_rows[k] / statistics.median(v) for k, v in times.items()}
    spark.stop()

    print(f"\nlight/heavy/multi: {args.rows:,} rows x {N_FEATURES} float32; wide: {args.wide_rows:,} rows x {WIDE} "
          f"(1/4 float64); array: {args.array_rows:,} rows x array<float>({ARRAY}); local[2], {os.cpu_count()} CPUs, "
          f"median of {args.reps}; load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'model':6} {'case':24} {'rows/s':>12} {'min..max rows/s':>24}")
    for (model, case), r in rate.items():
        lo, hi = n_rows[(model, case)] / max(times[(model, case)]), n_rows[(model, case)] / min(times[(model, case)])
        print(f"{model:6} {case:24} {r:12,.0f} {lo:11,.0f}..{hi:<11,.0f}")
    ok = True
    print("\nbars (median of the per-round ratios: both cases ran in the same round, so the VM's drift")
    print("between rounds cancels; the ratio of the medians above is shown beside it):")
    for model, case, base, need in BARS:
        base_key = (model, base) if (model, base) in times else ("-", base)
        if (model, case) not in times or base_key not in times:
            continue  # not run (--cases)
        per_round = [tb / tc for tb, tc in zip(times[base_key], times[(model, case)], strict=True)]
        ratio = statistics.median(per_round)
        ok &= ratio >= need
        medians = rate[(model, case)] / rate[base_key]
        spread = f"rounds {min(per_round):.2f}..{max(per_round):.2f}, medians {medians:.2f}x"
        verdict = "ok" if ratio >= need else "MISSED"
        print(f"  {model:6} {case} / {base}: {ratio:.2f}x ({spread}; need >= {need:.2f}x) {verdict}")
    for model in MODELS:
        if not {(model, c) for c in ("batchscore", "predict_batch_udf", "raw ORT (2 threads)")} <= rate.keys():
            continue
        r = rate[(model, "batchscore")] / rate[(model, "predict_batch_udf")]
        raw = rate[(model, "batchscore")] / rate[(model, "raw ORT (2 threads)")]
        print(f"  {model:6} batchscore / predict_batch_udf: {r:.2f}x; / raw ORT: {raw:.2f}x")

    def rounds(model: str, case: str, base: str) -> list[float] | None:
        if (model, case) not in times or (model, base) not in times:
            return None
        return [tb / tc for tb, tc in zip(times[(model, base)], times[(model, case)], strict=True)]

    if got := rounds("heavy", "batchscore read=spark", "predict_batch_udf"):
        print(f"  heavy  batchscore read=spark / predict_batch_udf: {statistics.median(got):.2f}x "
              "(no bar: the model's cost)")
    if got := rounds("wide", "batchscore", "predict_batch_udf array"):
        print(f"  wide   batchscore / predict_batch_udf array: {statistics.median(got):.2f}x (no bar; rounds "
              f"{min(got):.2f}..{max(got):.2f})")
    print("\npredict_udf / predict_batch_udf on the same shape (median of the per-round ratios; rounds min..max):")
    print(f"  {'shape':6} {'kind':7} {'rows/s':>12} {'ratio':>7}  rounds")
    for model in ("light", *SHAPES):
        for kind in (*UDF_KINDS, "no-op"):
            if got := rounds(model, f"predict_udf {kind}", "predict_batch_udf"):
                shape = "narrow" if model == "light" else model
                speed = rate[(model, f"predict_udf {kind}")]
                bar = {"pandas": "  (bar >= 1.50x)",
                       "no-op": "  (a pandas_udf that runs no model: the ceiling of any)"}.get(kind, "")
                print(f"  {shape:6} {kind:7} {speed:12,.0f} {statistics.median(got):6.2f}x"
                      f"  {min(got):.2f}..{max(got):.2f}{bar}")
    (OUT / "inference.json").write_text(json.dumps({" | ".join(k): v for k, v in rate.items()}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
