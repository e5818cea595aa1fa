"""Layer contracts: jobs -> (udfs | validation | batchscore); never the reverse.

Checked on the source (every import statement, including those inside functions), so a lazy
import cannot sneak a dependency past the rule. ``batchscore.cli`` alone dispatches to ``jobs``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "udfs": {"jobs", "validation", "pydantic", "redis", "airflow"},
    "validation": {"jobs", "udfs", "pydantic", "redis", "airflow", "onnxruntime", "torch"},
    "batchscore": {"jobs", "udfs", "validation", "airflow"},
    "dags": {"jobs", "udfs", "validation", "batchscore", "pyspark", "pandas", "numpy", "great_expectations", "torch", "onnxruntime"},
}
ALLOWED = {("batchscore", "cli.py"): {"jobs"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_respects_its_layer(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    if package != "dags":
        assert files, f"{package}/ has no modules"
    bad = []
    for f in files:
        allowed = ALLOWED.get((package, f.name), set())
        hit = (_imports(f) & FORBIDDEN[package]) - allowed
        if hit:
            bad.append(f"{f.relative_to(REPO)} imports {sorted(hit)}")
    assert not bad, bad
