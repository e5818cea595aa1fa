"""A 64-bit hash of each row of the float32 feature matrix the model sees (incremental scoring).

Computed on the executors from exactly the matrix handed to the model (after casts, packing and
nulls read as NaN), so two rows hash alike when the model would see the same bits. Vectorized
over rows: one multiply-xorshift round per pair of features, then a 64-bit finalizer
(splitmix64's). The width is part of the seed, so a row and the same row with a feature
appended never collide by construction. Not cryptographic: a collision (≈ n²/2⁶⁵ for n rows
of one key history) would reuse a stale score, which is why the model's content hash and
``--full`` stay the authorities on what must be rescored.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLUMN", "row_hashes"]

COLUMN = "feature_hash"
_SEED = np.uint64(0x9E3779B97F4A7C15)
_MUL = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(30)
    h *= _MUL
    h ^= h >> np.uint64(27)
    h *= _MUL2
    h ^= h >> np.uint64(31)
    return h


def row_hashes(x: np.ndarray) -> np.ndarray:
    """int64 hash per row of the float32 matrix ``x`` (rows, width)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, width = x.shape
    if width % 2:
        x = np.concatenate([x, np.zeros((n, 1), dtype=np.float32)], axis=1)
    words = x.view(np.uint64)  # two features per 64-bit word
    with np.errstate(over="ignore"):
        h = np.full(n, _SEED ^ np.uint64(width), dtype=np.uint64)
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h = _mix(h)
    return h.view(np.int64)
