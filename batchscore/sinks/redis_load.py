"""Loading one Redis version from Spark executors (``mapInPandas`` over bucketed rows).

Each task receives whole buckets (the frame is repartitioned by bucket), writes each bucket as
pipelined ``HSET`` commands of bounded size, and yields ``(bucket, entities)`` counts for the
driver's verification. Rewriting the same version is idempotent, so Spark's task retries are safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from batchscore import redis_layout as layout

#: Entities per pipelined round trip (bounded memory per task).
PIPELINE_ENTITIES = 20_000


def make_loader(url: str, ns: str, version: int, columns: list[str]) -> Any:
    """The ``mapInPandas`` function: input columns ``k`` (string), ``b`` (bucket), ``columns``."""

    def load(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pandas as pd

        from batchscore.redis_conn import connect

        client = connect(url, check=False)
        counts: dict[int, int] = {}
        pipe = client.pipeline(transaction=False)
        pending = 0
        for pdf in batches:
            if pdf.empty:
                continue
            pdf = pdf.sort_values("b", kind="stable")
            keys = pdf["k"].to_numpy()
            buckets = pdf["b"].to_numpy()
            packed = np.ascontiguousarray(pdf[columns].to_numpy(dtype="<f4")).tobytes()
            width = 4 * len(columns)
            starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
            ends = np.r_[starts[1:], len(buckets)]
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                b = int(buckets[s])
                mapping = {keys[i]: packed[i * width : (i + 1) * width] for i in range(s, e)}
                pipe.hset(layout.data_key(ns, version, b), mapping=mapping)
                counts[b] = counts.get(b, 0) + (e - s)
                pending += e - s
                if pending >= PIPELINE_ENTITIES:
                    pipe.execute()
                    pending = 0
        if pending:
            pipe.execute()
        client.close()
        yield pd.DataFrame({"b": list(counts), "n": list(counts.values())}, dtype="int64")

    return load
