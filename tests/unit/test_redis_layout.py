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
    target = layout.TARGET_ENTRIES_PER_BUCKET
    assert target <= 256  # well inside hash-max-listpack-entries (512)
    assert layout.bucket_count(target) == 1
    assert layout.bucket_count(target + 1) == 2
    n = layout.bucket_count(100_000)
    counts = np.bincount([layout.bucket_of(str(i), n) for i in range(100_000)], minlength=n)
    assert counts.max() < 512 and counts.mean() <= target


def test_control_keys_share_one_hash_tag_and_data_keys_have_none() -> None:
    ns = layout.namespace("bs", "demo")
    vid = layout.version_id(3, "ab12cd34")
    for key in (layout.pointer_key(ns), layout.meta_key(ns, vid), layout.seq_key(ns), layout.lock_key(ns),
                layout.publication_key(ns), layout.fence_key(ns)):
        assert key.startswith("{bs:demo}:")
    assert "{" not in layout.data_key(ns, vid, 7)


def test_version_identities_round_trip_and_reject_bare_numbers() -> None:
    assert layout.parse_version_id(layout.version_id(12, "9f3a01bc")) == (12, "9f3a01bc")
    assert layout.parse_version_id(b"3.x") == (3, "x")
    for bad in ("3", "3.", ".ab", "x.ab", "3.a-b"):
        with pytest.raises(ValueError):
            layout.parse_version_id(bad)
    # the same number with another epoch is another key: a reused number never reads old data
    assert layout.data_key("bs:m", "3.aa", 0) != layout.data_key("bs:m", "3.bb", 0)


def test_redact_hides_password() -> None:
    assert redact("redis://user:s3cret@10.0.0.1:6380/2") == "redis://10.0.0.1:6380/2"
    assert "s3cret" not in redact("rediss://:s3cret@host/0")


def _hset_reference(key: bytes, fields: list[bytes], values: list[bytes]) -> bytes:
    """``HSET key f1 v1 ...`` in RESP, argument by argument (what redis-py would send)."""
    args = [b"HSET", key, *(x for pair in zip(fields, values, strict=True) for x in pair)]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_resp_fields_of_any_row_range_are_the_hset_arguments() -> None:
    import pyarrow as pa

    from batchscore.udfs._redis_load import resp_fields

    keys = ["a", "bb", "", "ünïcödé", "x" * 300, "k5", "\r\n"]
    scores = np.arange(14, dtype="<f4").reshape(7, 2)
    packed = np.ascontiguousarray(scores).view(np.uint8).reshape(-1)
    for arr, first in ((pa.array(keys), 0), (pa.array(["pad", *keys]).slice(1), 0), (pa.array(keys[2:]), 2)):
        data, offsets = resp_fields(arr, packed[first * 8 :], 8)
        for s, e in ((0, len(arr)), (1, 3), (len(arr) - 1, len(arr))):
            head = b"*%d\r\n$4\r\nHSET\r\n$1\r\nK\r\n" % (2 + 2 * (e - s))
            rows = range(first + s, first + e)
            want = _hset_reference(b"K", [keys[i].encode() for i in rows], [scores[i].tobytes() for i in rows])
            assert head + bytes(data[offsets[s] : offsets[e]]) == want


def test_vectorized_buckets_equal_the_readers_bucket_of() -> None:
    import pyarrow as pa

    from batchscore.udfs._redis_load import bucket_ids

    rng = np.random.default_rng(5)
    keys = ["", "a", "ünïcödé-ключ", "x" * 300, *(str(i) for i in rng.integers(-10**12, 10**12, 3000)),
            *("".join(map(chr, rng.integers(32, 0x2FF, int(n)))) for n in rng.integers(0, 40, 500))]
    for buckets in (1, 7, 7813):
        got = bucket_ids(pa.array(keys).slice(0), buckets)
        assert got.tolist() == [layout.bucket_of(k, buckets) for k in keys]
        assert bucket_ids(pa.array(keys).slice(3, 10), buckets).tolist() == [
            layout.bucket_of(k, buckets) for k in keys[3:13]]
