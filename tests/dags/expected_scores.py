"""Ground truth for the DAG end-to-end test; runs in the JOB environment, not under pytest.

    .venv/bin/python tests/dags/expected_scores.py conf.yaml KEY...  ->  {"KEY": [score, ...], ...}

Scores the keys' feature rows with ONNX Runtime directly (no Spark, no batchscore scoring code), so
the published values are checked against the model itself. Only the paths come from batchscore's
config loader, so relative ones resolve as the jobs resolve them (against the config's project root).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.config import load_model_config


def expected(config: str, keys: list[str]) -> dict[str, list[float]]:
    cfg = load_model_config(config)
    key, features = cfg.input.key, list(cfg.input.features or [])
    table = pq.read_table(cfg.input.path)
    rows = table.filter(pc.is_in(table[key], value_set=pa.array(keys).cast(table[key].type)))
    position = {str(k): i for i, k in enumerate(rows[key].to_pylist())}
    x = np.column_stack([rows[c].to_numpy() for c in features]).astype(np.float32)
    session = ort.InferenceSession(cfg.model_path, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {k: [float(v) for v in np.atleast_1d(out[position[k]])] for k in keys}


if __name__ == "__main__":
    print(json.dumps(expected(sys.argv[1], sys.argv[2:])))
