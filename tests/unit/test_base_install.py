"""The base install (the online reader) must not drag in Spark, pandas or model runtimes."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["pyspark", "pandas", "numpy", "pyarrow", "great_expectations", "onnxruntime", "torch", "deltalake"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


def test_reader_imports_nothing_heavy() -> None:
    loaded = _modules_after("from batchscore import ScoreReader, Score\nimport batchscore.config, batchscore.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_cli_help_works_without_spark() -> None:
    res = subprocess.run([sys.executable, "-m", "batchscore", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for verb in ("run", "score", "validate", "publish", "lookup"):
        assert verb in res.stdout
    assert "3 validation rejected" in res.stdout
