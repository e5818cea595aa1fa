"""Validation rules as plain data, and the result of judging one.

The jobs layer builds these from the model config (already resolved to concrete output columns);
this package never sees pydantic. ``None`` bounds mean "unbounded"; an absent rule is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValueRange:
    min: float | None = None
    max: float | None = None
    level: LevelName = "block"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Band:
    """Absolute bounds on a statistic, plus an optional bound on its move from the reference.

    ``max_move`` is in reference standard deviations for the mean and relative for the std.
    """

    min: float | None = None
    max: float | None = None
    max_move: float | None = None
    level: LevelName = "block"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantileBands:
    bands: tuple[tuple[float, float | None, float | None], ...]  # (q, min, max)
    level: LevelName = "block"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassShares:
    shares: tuple[tuple[float, float | None, float | None], ...]  # (class value, min share, max share)
    level: LevelName = "block"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drift:
    columns: tuple[str, ...]
    min_rows: int = 1000
    bins: int = 20
    psi_warn: float | None = 0.1
    psi_block: float | None = 0.25
    kl_warn: float | None = 0.05
    kl_block: float | None = 0.125
    tail_holdout: float = 0.005


@dataclass(frozen=True)
class Finite:
    """No score may be +inf or -inf. Always on and ``block``: a ±inf score is never a valid score,
    and statistics are computed without them. ``columns=None``: every output column (the profile
    holds exactly those)."""

    level: LevelName = "block"
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class QuarantineRate:
    """``input.on_invalid: quarantine``: the share of the input's rows set aside must stay at most ``max``."""

    rows: int  # rows read from the input
    quarantined: int
    max: float = 0.01
    level: LevelName = "block"


@dataclass(frozen=True)
class Rules:
    row_count: RowCount
    null_rate: NullRate
    range: ValueRange | None = None
    mean: Band | None = None
    std: Band | None = None
    quantiles: QuantileBands | None = None
    class_share: ClassShares | None = None
    drift: Drift | None = None
    finite: Finite = field(default_factory=Finite)
    quarantine: QuarantineRate | None = None

    def quantiles_needed(self) -> tuple[float, ...]:
        return tuple(q for q, _, _ in self.quantiles.bands) if self.quantiles else ()

    def classes_for(self, column: str) -> tuple[float, ...]:
        cs = self.class_share
        return tuple(v for v, _, _ in cs.shares) if cs and column in cs.columns else ()


@dataclass(frozen=True)
class RuleResult:
    rule: str
    column: str | None
    level: LevelName
    passed: bool
    observed: Any
    expected: str
    skipped: str | None = field(default=None)
    detail: str | None = field(default=None)  # what was observed, in words, where the number alone is terse

    def describe(self) -> str:
        where = f"{self.column}: " if self.column else ""
        if self.detail:
            return f"{self.rule} {where}{self.detail}; expected {self.expected} ({self.level})"
        return f"{self.rule} {where}observed {_short(self.observed)}, expected {self.expected}"

    def as_dict(self) -> dict[str, Any]:
        out = {
            "rule": self.rule,
            "column": self.column,
            "level": self.level,
            "passed": self.passed,
            "observed": self.observed,
            "expected": self.expected,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if self.detail:
            out["detail"] = self.detail
        return out


def _short(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
