from __future__ import annotations

import numpy as np
import pytest

from batchscore import redis_layout as layout
from batchscore.redis_conn import redact


def test_scores_round_trip_exactly_as_float32() -> None:
    values = np.array([0.1, 0.7333333, 1e-8], dtype=np.float32)
    decoded = layout.decode_scores(layout.encode_scores(values.tolist()), 3)
    assert decoded == tuple(float(v) for v in values)


def test_decode_refuses_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected 8"):
        layout.decode_scores(b"\x00" * 4, 2)


def test_bucket_count_keeps_buckets_in_listpack_range() -> None:
    assert layout.bucket_count(0) == 1
    assert layout.bucket_count(256) == 1
    assert layout.bucket_count(257) == 2
    counts = np.bincount([layout.bucket_of(str(i), 391) for i in range(100_000)], minlength=391)
    assert counts.max() < 512


def test_control_keys_share_one_hash_tag_and_data_keys_have_none() -> None:
    ns = layout.namespace("bs", "demo")
    for key in (layout.pointer_key(ns), layout.meta_key(ns, 3), layout.seq_key(ns), layout.lock_key(ns)):
        assert key.startswith("{bs:demo}:")
    assert "{" not in layout.data_key(ns, 3, 7)


def test_redact_hides_password() -> None:
    assert redact("redis://user:s3cret@10.0.0.1:6380/2") == "redis://10.0.0.1:6380/2"
    assert "s3cret" not in redact("rediss://:s3cret@host/0")
