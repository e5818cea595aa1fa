"""First-run bin counts from the merged quantile sketches: within the documented rank error of
the exact counts (ties included), exact for small partitions, and summing to the rows."""

from __future__ import annotations

import numpy as np

from batchscore.validation._partials import SKETCH_POINTS, partial, sketch_bin_counts


def _exact(x: np.ndarray, cuts: list[float]) -> list[int]:
    return [int(((x >= a) & (x < b)).sum()) for a, b in zip([-np.inf, *cuts], [*cuts, np.inf], strict=True)]


def test_sketch_counts_are_within_the_rank_error_of_exact_counts() -> None:
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=300_000), np.round(rng.normal(size=200_000), 1), rng.exponential(size=1_500)]
    parts = [partial(x, 0, [], []) for x in xs]
    x = np.concatenate(xs)
    cuts = [float(c) for c in np.quantile(x, np.linspace(0.05, 0.95, 19))]
    got = sketch_bin_counts(parts, cuts)
    assert sum(got) == len(x)
    assert max(abs(g - e) for g, e in zip(got, _exact(x, cuts), strict=True)) <= 2 * len(x) / SKETCH_POINTS
    assert got != [len(x) // 20] * 20  # real counts, not an even split


def test_small_partitions_give_exact_counts_and_nans_are_not_binned() -> None:
    x = np.array([0.1, 0.2, 0.2, 0.5, 0.9, np.nan, 0.3])
    parts = [partial(x[:4], 0, [], []), partial(x[4:], 2, [], [])]
    cuts = [0.2, 0.5]
    assert sketch_bin_counts(parts, cuts) == _exact(x[~np.isnan(x)], cuts) == [1, 3, 2]
