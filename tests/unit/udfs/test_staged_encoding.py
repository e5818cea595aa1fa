"""The staged writer dictionary-encodes only the columns that repeat (constants, labels), not the
keys and scores, and the file reads back equal to what was written."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.udfs._staged_write import repeating_columns


def test_only_repeating_columns_are_dictionary_encoded() -> None:
    n = 10_000
    rng = np.random.default_rng(3)
    b = pa.record_batch({
        "user_id": pa.array(np.arange(n, dtype=np.int64) * 7),
        "email": pa.array([f"u{i}@x" for i in range(n)]),
        "score": pa.array(rng.random(n, dtype=np.float32)),
        "label": pa.array(rng.integers(0, 3, n)),
        "model_version": pa.array(["v1"] * n),
        "scored_at": pa.array(np.full(n, 1_700_000_000_000_000)).cast(pa.timestamp("us", tz="UTC")),
        "emb": pa.array([[1.0, 2.0]] * n, pa.list_(pa.float32())),
    })
    assert repeating_columns(b) == ["label", "model_version", "scored_at"]
    out = io.BytesIO()
    with pq.ParquetWriter(out, b.schema, use_dictionary=repeating_columns(b)) as w:
        w.write_batch(b)
    meta = pq.ParquetFile(io.BytesIO(out.getvalue())).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["model_version"])
    assert not any("DICTIONARY" in e for e in encodings["score"])
    assert pq.read_table(io.BytesIO(out.getvalue())).equals(pa.Table.from_batches([b]))
