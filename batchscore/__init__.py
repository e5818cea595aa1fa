"""batchscore: batch scoring on Spark, published atomically to Delta and Redis.

The base install holds only what an online service needs to read published scores
(:class:`ScoreReader`); the Spark jobs need the ``spark`` extra.
"""

from __future__ import annotations

from batchscore.reader import PointerError, Score, ScoreReader

__all__ = ["PointerError", "Score", "ScoreReader"]
__version__ = "0.1.0"
