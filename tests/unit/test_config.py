"""Config loading: every shipped config loads; bad files are refused naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.config import load_model_config
from batchscore.errors import EXIT_BAD_INPUT, ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_model_config(path)
    assert cfg.name == path.stem
    assert Path(cfg.model_path).is_absolute()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


GOOD = """
name: m
model: {uri: m.onnx, format: onnx, version: "1"}
input: {path: f.parquet, key: id, features: [a, b]}
outputs: {delta: {path: out}}
"""


def test_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_model_config(_write(tmp_path, GOOD))
    assert cfg.outputs.columns == ["score"]
    assert cfg.outputs.redis.url_env == "BATCHSCORE_REDIS_URL"
    assert cfg.scoring.batch_size == 4096 and cfg.scoring.device == "auto"
    assert Path(cfg.outputs.delta.path).is_absolute()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "extra: 1\n", "unknown field 'extra'"),
        (GOOD.replace("version: \"1\"", "version: \"1\", colour: red"), "unknown field 'model.colour'"),
        (GOOD.replace("format: onnx", "format: pmml"), "field 'model.format'"),
        (GOOD + "scoring: {batch_size: many}\n", "field 'scoring.batch_size'"),
        (GOOD + "scoring: {batch_size: 0}\n", "field 'scoring.batch_size'"),
        (GOOD.replace("outputs: {delta: {path: out}}", ""), "missing required field 'outputs'"),
        (GOOD.replace("features: [a, b]", "features: [a, b], feature_array: v"), "exactly one of"),
        ("name: m\nmodel: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_config_is_refused_with_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    msg = str(err.value)
    assert expected in msg
    assert str(path) in msg
    assert "\n" not in msg
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_missing_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model config not found; pass --model-config"):
        load_model_config(tmp_path / "nope.yaml")


def test_redis_url_comes_from_the_named_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_model_config(_write(tmp_path, GOOD + "    \n"))
    monkeypatch.delenv("BATCHSCORE_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="BATCHSCORE_REDIS_URL is not set"):
        cfg.redis_url()
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", "redis://127.0.0.1:1/0")
    assert cfg.redis_url() == "redis://127.0.0.1:1/0"
