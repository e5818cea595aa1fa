"""Layer contracts, checked on the source (every import statement, including those inside functions,
so a lazy import cannot sneak a dependency past the rule).

- ``batchscore.jobs`` (driver side: one module per verb) may import every other layer; nothing
  imports it but ``batchscore.cli``, which dispatches to it.
- ``batchscore.udfs`` (executor side: what runs inside Spark tasks) never imports the driver side,
  the validation gate, pydantic or redis (``udfs/_redis_load.py``, the executor half of the Redis
  load, alone talks to Redis).
- ``batchscore.validation`` (the gate) never imports the jobs, the executors, pydantic, redis or
  model libraries.
- the light base package (everything else under ``batchscore/``) never imports the three above, so
  an online service's ``pip install batchscore`` reads scores without Spark.
- ``dags/`` (the Airflow environment) imports none of the job environment's packages.
- nothing imports the old generic top-level names ``jobs``, ``udfs``, ``validation``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OLD_TOP_LEVEL = {"jobs", "udfs", "validation"}
LAYERS: dict[str, tuple[Path, set[str]]] = {
    "batchscore.udfs": (REPO / "udfs", {"batchscore.jobs", "batchscore.validation", "pydantic", "redis", "airflow"}),
    "batchscore.validation": (REPO / "validation", {"batchscore.jobs", "batchscore.udfs", "pydantic", "redis",
                                                    "airflow", "onnxruntime", "torch"}),
    "batchscore (base)": (REPO / "batchscore", {"batchscore.jobs", "batchscore.udfs", "batchscore.validation",
                                                "airflow"}),
    "batchscore.jobs": (REPO / "jobs", {"airflow"}),
    "dags": (REPO / "dags", {"batchscore", "pyspark", "pandas", "numpy", "great_expectations", "torch",
                             "onnxruntime"}),
}
ALLOWED = {
    ("batchscore (base)", "cli.py"): {"batchscore.jobs"},
    ("batchscore.udfs", "_redis_load.py"): {"redis"},
}


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from a import b`` counts ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _hits(imported: set[str], forbidden: set[str]) -> set[str]:
    return {f for f in forbidden for m in imported if m == f or m.startswith(f + ".")}


def _sources(root: Path) -> list[Path]:
    """The layer's own files: under batchscore/ the symlinked jobs/udfs/validation are other layers."""
    return sorted(p for p in root.rglob("*.py")
                  if not (root.name == "batchscore" and p.relative_to(root).parts[0] in OLD_TOP_LEVEL))


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    root, forbidden = LAYERS[layer]
    files = _sources(root)
    if layer != "dags":
        assert files, f"{root} has no modules"
    bad = []
    for f in files:
        imported = _imports(f)
        hit = _hits(imported, forbidden) - ALLOWED.get((layer, f.name), set())
        old = {m.split(".")[0] for m in imported} & OLD_TOP_LEVEL
        if hit or old:
            bad.append(f"{f.relative_to(REPO)} imports {sorted(hit | old)}")
    assert not bad, bad


def test_the_design_folders_are_the_namespaced_packages() -> None:
    """batchscore/jobs, batchscore/udfs and batchscore/validation are the top-level folders themselves
    (symlinks), so a checkout and the wheel import the same files under the same names."""
    for name in sorted(OLD_TOP_LEVEL):
        link = REPO / "batchscore" / name
        assert link.is_symlink() and link.resolve() == (REPO / name).resolve(), link
    import batchscore.jobs.score
    import batchscore.udfs.scoring
    import batchscore.validation.gate

    assert Path(batchscore.jobs.score.__file__).resolve() == (REPO / "jobs" / "score.py").resolve()
    assert Path(batchscore.udfs.scoring.__file__).resolve() == (REPO / "udfs" / "scoring.py").resolve()
    assert Path(batchscore.validation.gate.__file__).resolve() == (REPO / "validation" / "gate.py").resolve()


@pytest.mark.parametrize("package", ["batchscore", "batchscore.sinks", "batchscore.testing", "batchscore.jobs",
                                     "batchscore.udfs", "batchscore.validation"])
def test_every_subpackage_declares_its_public_names(package: str) -> None:
    import importlib

    mod = importlib.import_module(package)
    assert isinstance(getattr(mod, "__all__", None), list) and mod.__all__, f"{package} has no __all__"
