"""The wheel installs one namespace: ``batchscore`` (with ``batchscore.jobs``, ``batchscore.udfs``,
``batchscore.validation`` taken from the repository's top-level folders), nothing generic."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    return next(out.glob("batchscore-*.whl"))


def test_the_wheel_holds_only_batchscore(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"batchscore", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for module in ("batchscore/jobs/score.py", "batchscore/udfs/predict.py", "batchscore/validation/gate.py",
                   "batchscore/testing/local_redis.py", "batchscore/udfs/_redis_load.py"):
        assert module in names, module
    assert not any("/tests/" in n or n.startswith(("jobs/", "udfs/", "validation/")) for n in names)


def test_a_fresh_venv_imports_no_generic_package(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    before = {p.name for p in site.iterdir()}  # what the venv seeds (pip, setuptools)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    ours = {p.name for p in site.iterdir()} - before
    assert ours == {"batchscore", wheel.name.split("-py3")[0] + ".dist-info"}, ours
    for generic in ("jobs", "udfs", "validation"):
        probe = subprocess.run([str(py), "-c", f"import {generic}"], cwd=tmp_path, capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, (generic, probe.stderr)
    assert (site / "batchscore" / "jobs" / "score.py").is_file()
    assert not (site / "batchscore" / "jobs").is_symlink()  # the files themselves, not links into a checkout
