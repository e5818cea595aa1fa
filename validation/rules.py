"""Validation rules as plain data, and the result of judging one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LevelName = Literal["warn", "block"]


@dataclass(frozen=True)
class RowCount:
    expected: int
    tolerance: float = 0.0
    level: LevelName = "block"


@dataclass(frozen=True)
class NullRate:
    max: float = 0.0
    level: LevelName = "block"


@dataclass(frozen=True)
class ValueRange:
    min: float | None = None
    max: float | None = None
    level: LevelName = "block"


@dataclass(frozen=True)
class Rules:
    row_count: RowCount
    null_rate: NullRate
    range: ValueRange | None = None


@dataclass(frozen=True)
class RuleResult:
    rule: str
    column: str | None
    level: LevelName
    passed: bool
    observed: Any
    expected: str

    def describe(self) -> str:
        where = f"{self.column}: " if self.column else ""
        return f"{self.rule} {where}observed {self.observed}, expected {self.expected}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "column": self.column,
            "level": self.level,
            "passed": self.passed,
            "observed": self.observed,
            "expected": self.expected,
        }
