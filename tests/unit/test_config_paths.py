"""A config's relative paths resolve against its project root, never the working directory.

The root: $BATCHSCORE_PROJECT_ROOT (absolute) when set, else the parent of the ``conf/`` folder
holding the config, else the config's own directory (batchscore.config.project_root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchscore.config import PROJECT_ROOT_ENV, load_model_config, project_root
from batchscore.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

RELATIVE = {
    "name": "m",
    "model": {"uri": "models/m.onnx", "format": "onnx", "version": "1"},
    "input": {"path": "data/features.parquet", "key": "id", "features": ["a", "b"]},
    "outputs": {"delta": {"path": "data/predictions"}, "history": {"path": "data/history"}},
}


def _write(path: Path, cfg: dict) -> Path:  # type: ignore[type-arg]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _paths(cfg) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"model": cfg.model_path, "input": cfg.input.path, "delta": cfg.outputs.delta.path,
            "history": cfg.outputs.history.path, "reports": cfg.runtime.report_dir}


def _expected(root: Path) -> dict[str, str]:
    return {"model": str(root / "models/m.onnx"), "input": str(root / "data/features.parquet"),
            "delta": str(root / "data/predictions"), "history": str(root / "data/history"),
            "reports": str(root / ".batchscore/runs")}


@pytest.fixture(autouse=True)
def _no_root_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)


@pytest.mark.parametrize("where", ["conf/models/m.yaml", "conf/m.yaml"])
def test_paths_resolve_against_the_parent_of_conf_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    root = (tmp_path / "project").resolve()
    config = _write(root / where, RELATIVE)
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    seen = []
    for cwd in (root, elsewhere, Path("/")):
        monkeypatch.chdir(cwd)
        assert project_root(config) == root
        seen.append(_paths(load_model_config(config)))
    assert seen == [_expected(root)] * 3
    # A relative --model-config is a command-line argument: taken from the working directory.
    monkeypatch.chdir(root)
    assert _paths(load_model_config(where)) == _expected(root)


def test_a_config_outside_conf_resolves_against_its_own_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(tmp_path / "a" / "m.yaml", RELATIVE)
    monkeypatch.chdir(tmp_path)
    assert _paths(load_model_config(config)) == _expected((tmp_path / "a").resolve())


def test_the_environment_variable_wins_and_must_be_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(tmp_path / "project" / "conf" / "models" / "m.yaml", RELATIVE)
    other = (tmp_path / "deploy").resolve()
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(other))
    monkeypatch.chdir(tmp_path)
    assert _paths(load_model_config(config)) == _expected(other)
    monkeypatch.setenv(PROJECT_ROOT_ENV, "deploy")
    with pytest.raises(ConfigError, match=f"{PROJECT_ROOT_ENV}='deploy': give an absolute path"):
        load_model_config(config)


def test_uris_and_absolute_paths_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = (tmp_path / "abs" / "features.parquet").resolve()
    cfg = {**RELATIVE,
           "model": {"uri": f"file://{tmp_path / 'abs' / 'm.onnx'}", "format": "onnx", "version": "1"},
           "input": {**RELATIVE["input"], "path": str(absolute)},
           "outputs": {"delta": {"path": "s3://bucket/batchscore/predictions"},
                       "history": {"path": "abfss://c@acct.dfs.core.windows.net/history"}},
           "runtime": {"report_dir": "hdfs://nn:8020/batchscore/runs"}}
    monkeypatch.chdir(tmp_path)
    loaded = load_model_config(_write(tmp_path / "conf" / "m.yaml", cfg))
    assert loaded.model_path == str((tmp_path / "abs" / "m.onnx").resolve())
    assert loaded.input.path == str(absolute)
    assert loaded.outputs.delta.path == "s3://bucket/batchscore/predictions"
    assert loaded.outputs.history is not None
    assert loaded.outputs.history.path == "abfss://c@acct.dfs.core.windows.net/history"
    assert loaded.runtime.report_dir == "hdfs://nn:8020/batchscore/runs"


def test_a_registered_model_uri_is_not_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = {**RELATIVE, "model": {"uri": "models:/churn@champion", "format": "onnx", "version": "1"}}
    loaded = load_model_config(_write(tmp_path / "conf" / "m.yaml", cfg))
    assert loaded.model.uri == "models:/churn@champion"


def test_a_relative_file_uri_is_refused(tmp_path: Path) -> None:
    cfg = {**RELATIVE, "model": {"uri": "file://models/m.onnx", "format": "onnx", "version": "1"}}
    path = _write(tmp_path / "conf" / "m.yaml", cfg)
    with pytest.raises(ConfigError,
                       match=r"model\.uri: 'file://models/m.onnx' is not a file URI with an absolute path"):
        load_model_config(path)


def test_the_shipped_demo_config_resolves_under_the_repo_from_elsewhere(tmp_path: Path) -> None:
    """In a fresh interpreter started in tmp_path, as a scheduler started outside the repo would."""
    demo_yaml = str(REPO / "conf" / "models" / "demo.yaml")
    code = (f"import json; from batchscore.config import load_model_config as l; c = l({demo_yaml!r}); "
            "print(json.dumps([c.model_path, c.input.path, c.outputs.delta.path, c.runtime.report_dir]))")
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ROOT_ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    demo = REPO / ".batchscore" / "demo"
    assert yaml.safe_load(out) == [str(demo / "model.onnx"), str(demo / "features.parquet"),
                                   str(demo / "predictions"), str(REPO / ".batchscore" / "runs")]
