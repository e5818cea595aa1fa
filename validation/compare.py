"""Champion vs challenger on the same rows: the comparison gate's arithmetic (numpy only).

The inputs come in aligned chunks (row *i* of the champion's chunk is row *i* of the
challenger's: the same entity, scored in the same task). :class:`Accumulator` keeps what one pass
needs: moments of both sides, the agreement count, a seeded uniform sample of aligned pairs (for
Spearman, top-k and the plot) and, in a second pass over the same chunks, exact histogram counts
over bins frozen from the champion sample's quantiles (PSI and KL between the two distributions).
:func:`judge` turns the metrics into :class:`batchscore.validation.rules.RuleResult` with warn/block
levels, like the other rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchscore.validation._drift import psi
from batchscore.validation.rules import LevelName, RuleResult

__all__ = ["Accumulator", "Metrics", "Thresholds", "judge"]


@dataclass
class Accumulator:
    """One column pair, streamed; call :meth:`add` over every chunk, then :meth:`edges`,
    :meth:`count` over every chunk again, then :meth:`metrics`."""

    rows: int  # total rows, known in advance (the staged manifest), for the sampling rate
    sample_size: int = 100_000
    bins: int = 20
    seed: int = 0
    n: int = 0
    finite: int = 0
    agree: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(4))  # champion sum, sumsq; challenger sum, sumsq
    samples: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    cuts: np.ndarray | None = None
    champion_counts: np.ndarray | None = None
    challenger_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._rate = min(1.0, self.sample_size / max(1, self.rows))

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(b)
        self.n += len(a)
        self.agree += int(np.count_nonzero(a == b))
        a, b = a[ok], b[ok]
        self.finite += len(a)
        self.sums += (a.sum(), (a * a).sum(), b.sum(), (b * b).sum())
        pick = self._rng.random(len(a)) < self._rate
        self.samples.append((a[pick].astype(np.float32), b[pick].astype(np.float32)))

    def edges(self) -> np.ndarray:
        """Inner bin edges from the champion sample's quantiles (ties merged)."""
        a = np.concatenate([s[0] for s in self.samples]) if self.samples else np.empty(0)
        qs = np.quantile(a, np.linspace(0, 1, self.bins + 1)[1:-1]) if len(a) else np.empty(0)
        self.cuts = np.unique(qs)
        self.champion_counts = np.zeros(len(self.cuts) + 1, dtype=np.int64)
        self.challenger_counts = np.zeros(len(self.cuts) + 1, dtype=np.int64)
        return self.cuts

    def count(self, a: np.ndarray, b: np.ndarray) -> None:
        assert self.cuts is not None and self.champion_counts is not None and self.challenger_counts is not None
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(b)
        k = len(self.cuts) + 1
        self.champion_counts += np.bincount(np.searchsorted(self.cuts, a[ok], side="right"), minlength=k)
        self.challenger_counts += np.bincount(np.searchsorted(self.cuts, b[ok], side="right"), minlength=k)

    def metrics(self, *, top_share: float, tail_holdout: float) -> Metrics:
        a = np.concatenate([s[0] for s in self.samples]) if self.samples else np.empty(0, np.float32)
        b = np.concatenate([s[1] for s in self.samples]) if self.samples else np.empty(0, np.float32)
        f = self.finite
        mean_a = self.sums[0] / f if f else math.nan
        mean_b = self.sums[2] / f if f else math.nan
        std_a = math.sqrt(max(0.0, self.sums[1] / f - mean_a**2)) if f else math.nan
        std_b = math.sqrt(max(0.0, self.sums[3] / f - mean_b**2)) if f else math.nan
        ca = self.champion_counts.tolist() if self.champion_counts is not None else []
        cb = self.challenger_counts.tolist() if self.challenger_counts is not None else []
        return Metrics(
            rows=self.n, finite_rows=f, sampled=len(a),
            champion_mean=mean_a, challenger_mean=mean_b, champion_std=std_a, challenger_std=std_b,
            mean_shift=abs(mean_b - mean_a) / std_a if f and std_a > 0 else (0.0 if f and mean_a == mean_b else None),
            psi=psi(ca, cb) if ca else None, kl=kl(cb, ca, tail_holdout) if ca else None,
            spearman=spearman(a, b), top_k_overlap=top_k_overlap(a, b, top_share),
            agreement=self.agree / self.n if self.n else None,
            edges=[float(e) for e in (self.cuts if self.cuts is not None else [])],
            champion_counts=[int(c) for c in ca], challenger_counts=[int(c) for c in cb],
        )

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.concatenate([s[0] for s in self.samples]) if self.samples else np.empty(0, np.float32)
        b = np.concatenate([s[1] for s in self.samples]) if self.samples else np.empty(0, np.float32)
        return a, b


def kl(p_counts: list[int], q_counts: list[int], holdout: float) -> float | None:
    """KL(p || q) over the same bins, each smoothed with ``holdout`` of mass spread over all bins."""
    p, q = np.asarray(p_counts, dtype=np.float64), np.asarray(q_counts, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return None
    p = (1 - holdout) * p / p.sum() + holdout / len(p)
    q = (1 - holdout) * q / q.sum() + holdout / len(q)
    return float(np.sum(p * np.log(p / q)))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(counts) < len(x):  # ties: replace by the group's mean rank
        sums = np.bincount(inv, weights=ranks)
        ranks = (sums / counts)[inv]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def top_k_overlap(a: np.ndarray, b: np.ndarray, share: float) -> float | None:
    """|top-k by champion ∩ top-k by challenger| / k over the sample, k = ``share`` of its rows."""
    k = int(len(a) * share)
    if k < 1:
        return None
    top_a = np.argpartition(-a, k - 1)[:k]
    top_b = np.argpartition(-b, k - 1)[:k]
    return len(np.intersect1d(top_a, top_b)) / k


@dataclass(frozen=True)
class Metrics:
    rows: int
    finite_rows: int
    sampled: int
    champion_mean: float
    challenger_mean: float
    champion_std: float
    challenger_std: float
    mean_shift: float | None
    psi: float | None
    kl: float | None
    spearman: float | None
    top_k_overlap: float | None
    agreement: float | None
    edges: list[float]
    champion_counts: list[int]
    challenger_counts: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Thresholds:
    """One metric's rule: ``higher_is_worse`` (PSI, KL, mean shift) or not (Spearman, overlap, agreement)."""

    metric: str
    warn: float | None
    block: float | None
    higher_is_worse: bool


def judge(metrics: Metrics, rules: list[Thresholds], column: str) -> list[RuleResult]:
    """Each rule's result for one column pair: ``block`` when past the block threshold, else
    ``warn`` when past the warn threshold; a metric that cannot be computed (too few rows)
    fails its ``block`` rule, never passes silently."""
    out = []
    for t in rules:
        v = getattr(metrics, t.metric)
        for level, bound in (("block", t.block), ("warn", t.warn)):
            if bound is None:
                continue
            lvl: LevelName = "block" if level == "block" else "warn"
            if v is None:
                out.append(RuleResult(f"compare_{t.metric}", column, lvl, False, None,
                                      f"{'<=' if t.higher_is_worse else '>='} {bound:g}",
                                      detail="could not be computed (too few finite rows)"))
                break
            ok = v <= bound if t.higher_is_worse else v >= bound
            out.append(RuleResult(f"compare_{t.metric}", column, lvl, bool(ok), round(float(v), 6),
                                  f"{'<=' if t.higher_is_worse else '>='} {bound:g}"))
            if not ok:
                break  # past the block threshold: the warning adds nothing
    return out
