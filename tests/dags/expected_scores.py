"""Ground truth for the DAG end-to-end test; runs in the JOB environment, not under pytest.

    .venv/bin/python tests/dags/expected_scores.py conf.yaml KEY...  ->  {"KEY": [score, ...], ...}

Scores the keys' feature rows with ONNX Runtime directly (no Spark, no batchscore code), so the
published values are checked against the model itself.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml


def expected(config: str, keys: list[str]) -> dict[str, list[float]]:
    with open(config) as f:
        cfg = yaml.safe_load(f)
    key, features = cfg["input"]["key"], cfg["input"]["features"]
    table = pq.read_table(cfg["input"]["path"])
    rows = table.filter(pc.is_in(table[key], value_set=pa.array(keys).cast(table[key].type)))
    position = {str(k): i for i, k in enumerate(rows[key].to_pylist())}
    x = np.column_stack([rows[c].to_numpy() for c in features]).astype(np.float32)
    session = ort.InferenceSession(cfg["model"]["uri"], providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {k: [float(v) for v in np.atleast_1d(out[position[k]])] for k in keys}


if __name__ == "__main__":
    print(json.dumps(expected(sys.argv[1], sys.argv[2:])))
