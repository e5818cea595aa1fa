"""Reads the backfill history table for the DAG end-to-end test; runs in the JOB environment.

    .venv/bin/python tests/dags/history_scores.py conf.yaml KEY...
      ->  {"version": N, "dates": [...], "scores": {"<date>": {"KEY": [score, ...]}}}
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from deltalake import DeltaTable

from batchscore.config import load_model_config


def read(config: str, keys: list[str]) -> dict[str, object]:
    cfg = load_model_config(config)  # paths as the jobs resolve them
    path = cfg.outputs.history.path if cfg.outputs.history else cfg.outputs.delta.path.rstrip("/") + "_history"
    table = DeltaTable(path)
    data = table.to_pyarrow_table()
    key, columns = cfg.input.key, list(cfg.outputs.columns)
    scores: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for row in data.to_pylist():
        if str(row[key]) in keys:
            scores[str(row["run_date"])][str(row[key])] = [float(row[c]) for c in columns]
    return {"version": table.version(), "dates": sorted({str(d) for d in data["run_date"].to_pylist()}),
            "rows": data.num_rows, "scores": scores}


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1], sys.argv[2:])), flush=True)
    # delta-rs' runtime threads can abort a bare interpreter at exit ("terminate called without an
    # active exception") after the table was read correctly; the answer is printed, leave at once.
    os._exit(0)
