"""Validation rules in the model config: malformed rules are refused naming file, rule and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.config import load_model_config
from batchscore.errors import EXIT_BAD_INPUT, ConfigError

GOOD = """
name: m
model: {uri: m.onnx, format: onnx, version: "1"}
input: {path: f.parquet, key: id, features: [a, b]}
outputs: {columns: [score, other], delta: {path: out}}
validation:
"""


def _load(tmp_path: Path, rules: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "m.yaml"
    p.write_text(GOOD + "".join(f"  {line}\n" for line in rules.strip().splitlines()))
    return p, load_model_config


def test_full_rule_set_loads_with_documented_defaults(tmp_path: Path) -> None:
    p, load = _load(tmp_path, """
row_count: {tolerance: 0.01, level: warn}
null_rate: {max: 0.001}
range: {min: 0, max: 1}
mean: {min: 0.1, max: 0.9, max_shift: 0.5, level: warn}
std: {max_change: 0.3, columns: [score]}
quantiles: {level: warn, bands: [{q: 0.5, min: 0.2, max: 0.8}, {q: 0.99, max: 1}]}
class_share: {columns: [other], shares: {0: {min: 0.5}, 1: {max: 0.5}}}
drift: {min_rows: 500, psi: {block: 0.3}}
""")
    v = load(p).validation
    assert v.drift.psi.warn == 0.1 and v.drift.psi.block == 0.3
    assert (v.drift.kl.warn, v.drift.kl.block, v.drift.bins) == (0.05, 0.125, 20)
    assert v.drift.reset_on_new_model_version is True and v.drift.enabled is True
    assert v.class_share is not None and set(v.class_share.shares) == {0.0, 1.0}
    assert v.quantiles is not None and [b.q for b in v.quantiles.bands] == [0.5, 0.99]


@pytest.mark.parametrize(
    ("rules", "field", "reason"),
    [
        ("drift: {psi: {warn: 0.3, block: 0.2}}", "validation.drift.psi",
         "warn threshold 0.3 is above block threshold 0.2"),
        ("drift: {psi: {warm: 0.1}}", "validation.drift.psi.warm", "unknown field"),
        ("drift: {kl: {tail_holdout: 0}}", "validation.drift.kl.tail_holdout", "greater than 0"),
        ("drift: {min_rows: 0}", "validation.drift.min_rows", "greater than or equal to 1"),
        ("mean: {level: warn}", "validation.mean", "give at least one of min, max, max_shift"),
        ("std: {max_change: -1}", "validation.std.max_change", "greater than 0"),
        ("range: {min: 1, max: 0}", "validation.range", "min 1.0 is above max 0.0"),
        ("null_rate: {level: fatal}", "validation.null_rate.level", "'warn' or 'block'"),
        ("quantiles: {bands: [{q: 1.5, min: 0}]}", "validation.quantiles.bands.0.q", "less than 1"),
        ("quantiles: {bands: [{q: 0.5}]}", "validation.quantiles.bands.0", "give min, max or both"),
        ("quantiles: {bands: []}", "validation.quantiles.bands", "at least 1"),
        ("class_share: {shares: {high: {min: 0.1}}}", "validation.class_share.shares.high.[key]", "valid number"),
        ("psi: {block: 0.2}", "validation.psi", "unknown field"),
    ],
)
def test_malformed_rule_is_refused_with_file_rule_and_reason(tmp_path: Path, rules: str, field: str,
                                                             reason: str) -> None:
    p, load = _load(tmp_path, rules)
    with pytest.raises(ConfigError) as err:
        load(p)
    msg = str(err.value)
    assert msg.startswith(str(p)) and f"'{field}'" in msg and reason in msg, msg
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_rule_on_an_unknown_output_column_is_refused(tmp_path: Path) -> None:
    from batchscore.jobs.validate import rules_for

    p, load = _load(tmp_path, "mean: {min: 0, columns: [score, scroe]}")
    with pytest.raises(ConfigError,
                       match=r"m\.yaml: validation\.mean\.columns: unknown output column\(s\) \['scroe'\]"):
        rules_for(load(p), input_rows=10)


def test_rules_resolve_to_every_output_column_by_default(tmp_path: Path) -> None:
    from batchscore.jobs.validate import rules_for

    p, load = _load(tmp_path, "range: {min: 0}\nstd: {max: 1, columns: [other]}\ndrift: {enabled: false}")
    rules = rules_for(load(p), input_rows=10)
    assert rules.range is not None and rules.range.columns == ("score", "other")
    assert rules.std is not None and rules.std.columns == ("other",)
    assert rules.drift is None and rules.row_count.expected == 10
