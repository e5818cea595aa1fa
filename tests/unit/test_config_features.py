"""Config of challengers, quarantine and incremental scoring: defaults, derived configs, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError

BASE = """
name: m
model: {uri: m.onnx, format: onnx, version: "1"}
input: {path: f.parquet, key: id, features: [a, b]}
outputs: {delta: {path: out}}
"""


def _load(tmp_path: Path, extra: str) -> ModelConfig:
    p = tmp_path / "m.yaml"
    p.write_text(BASE + extra)
    return load_model_config(p)


def test_challengers_become_configs_of_their_own(tmp_path: Path) -> None:
    cfg = _load(tmp_path, """
challengers:
  - {name: b, model: {uri: models/b.onnx, format: onnx, version: "2"}, columns: [p]}
  - {name: c, model: {uri: c.onnx, format: onnx, version: "3"}, delta_path: shadow/c,
     validation: {range: {min: 0, max: 1}}, comparison: {spearman: {warn: 0.95, block: 0.8}}}
""")
    b = cfg.challenger("b")
    assert b.name == "m@b" and b.model.version == "2" and b.outputs.columns == ["p"]
    assert b.model_path == str(tmp_path / "models" / "b.onnx")  # relative to the project root, like the champion's
    assert b.outputs.delta.path == f"{tmp_path / 'out'}_challengers/b" and b.challengers == []
    assert b.validation == cfg.validation
    c = cfg.challenger("c")
    assert c.outputs.delta.path == str(tmp_path / "shadow" / "c") and c.outputs.columns == ["score"]
    assert c.validation.range.max == 1
    assert cfg.challengers[1].comparison.spearman.block == 0.8
    with pytest.raises(ConfigError, match="no challenger named 'z' \\(challengers: b, c\\)"):
        cfg.challenger("z")


@pytest.mark.parametrize("extra, expected", [
    ("challengers: [{name: champion, model: {uri: x.onnx, format: onnx, version: '2'}}]", "names the model itself"),
    ("challengers: [{name: b, model: {uri: x.onnx, format: onnx, version: '2'}},"
     " {name: b, model: {uri: y.onnx, format: onnx, version: '3'}}]", "names must be unique"),
    ("scoring: {incremental: true}\nchallengers: [{name: b, model: {uri: x.onnx, format: onnx, version: '2'}}]",
     "does not combine with challengers"),
    ("challengers: [{name: b, model: {uri: x.onnx, format: onnx, version: '2'},"
     " comparison: {spearman: {warn: 0.5, block: 0.9}}}]", "below block threshold"),
    ("input: {path: f.parquet, key: id, features: [a], on_invalid: skip}", "input.on_invalid"),
    ("validation: {quarantine_rate: {max: 2}}", "validation.quarantine_rate.max"),
    ("outputs: {delta: {path: out}, redis: {ttl_seconds: 0}}", "outputs.redis.ttl_seconds"),
])
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, extra: str, expected: str) -> None:
    text = BASE
    for section in ("input:", "outputs:"):
        if extra.startswith(section):
            text = "\n".join(line for line in text.splitlines() if not line.startswith(section))
    p = tmp_path / "m.yaml"
    p.write_text(text + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=expected):
        load_model_config(p)


def test_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.input.on_invalid == "fail" and cfg.input.allow_nan is False
    assert cfg.scoring.incremental is False and cfg.outputs.redis.ttl_seconds is None
    assert cfg.validation.quarantine_rate.max == 0.01 and cfg.challengers == []
    assert cfg.outputs.quarantine is None
