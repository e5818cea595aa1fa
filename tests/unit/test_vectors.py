"""The language-neutral test vectors (tests/vectors/, docs/redis-layout.md) against the Python code.

The vectors must be current (regenerating them changes nothing), the layout functions the
publisher and readers share must reproduce them, and the Python readers must return, on a real
redis-server loaded with the published layout, exactly what the vectors say every reader returns.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from batchscore import redis_layout as layout
from batchscore.reader import AsyncScoreReader, PointerError, ScoreReader

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)  # compares -0.0 and 0.0 apart


def test_vectors_are_current() -> None:
    for name, text in _generator().build().items():
        assert (VECTORS / name).read_text(encoding="utf-8") == text, (
            f"tests/vectors/{name} is stale: run .venv/bin/python tests/vectors/make_vectors.py")


def test_bucket_of_and_the_loaders_vectorized_buckets_match_the_vectors() -> None:
    import pyarrow as pa

    from batchscore.udfs._redis_load import bucket_ids

    v = _load("buckets.json")
    keys = [c["key"] for c in v["cases"]]
    for c in v["cases"]:
        raw = c["key"].encode("utf-8")
        assert raw.hex() == c["key_utf8_hex"]
        if "int64" in c["input"]:  # as the loader casts an integer key column
            assert pa.array([int(c["input"]["int64"])], pa.int64()).cast(pa.string())[0].as_py() == c["key"]
        for n, b in c["buckets"].items():
            assert layout.bucket_of(c["key"], int(n)) == b, (c["key"], n)
    for n in v["bucket_counts"]:
        got = bucket_ids(pa.array(keys), n).tolist()
        assert got == [c["buckets"][str(n)] for c in v["cases"]], n


def test_score_packing_matches_the_vectors() -> None:
    v = _load("scores.json")
    for c in v["cases"]:
        raw = layout.encode_scores(c["values"])
        assert raw.hex() == c["hex"], c["description"]
        got = layout.decode_scores(bytes.fromhex(c["hex"]), len(c["values"]))
        assert [_bits(x) for x in got] == [_bits(x) for x in c["values"]], c["description"]
        assert [struct.pack(">f", x).hex() for x in got] == c["float32_bits"]
    for c in v["rounding"]:
        assert layout.encode_scores([c["input"]]).hex() == c["hex"], c["description"]
        assert _bits(layout.decode_scores(bytes.fromhex(c["hex"]), 1)[0]) == _bits(c["decoded"])
    for c in v["bad_widths"]:
        with pytest.raises(ValueError):
            layout.decode_scores(bytes.fromhex(c["hex"]), c["columns"])


def test_pointer_values_match_the_vectors() -> None:
    from batchscore.reader import _Cache

    v = _load("identities.json")
    for c in v["valid"]:
        number, epoch = layout.parse_version_id(c["pointer"])
        assert (str(number), epoch, layout.version_id(number, epoch)) == (c["number"], c["epoch"], c["canonical"])
        assert _Cache.parse_pointer("ns", c["pointer"].encode()).vid == c["canonical"]
    for c in v["invalid"]:
        with pytest.raises(ValueError):
            layout.parse_version_id(c["pointer"])
        with pytest.raises(PointerError) as exc:
            _Cache.parse_pointer("ns", c["pointer"].encode())
        assert ("old key layout" in str(exc.value)) == (c["error"] == "legacy_pointer"), c


# -- the published layout on a real redis-server --------------------------------------------------

def _arg(a: Any) -> bytes:
    return bytes.fromhex(a["hex"]) if isinstance(a, dict) else str(a).encode("utf-8")


def load_published(client: Any, extra: list[list[Any]] | None = None) -> None:
    """Flush the database and load the published layout's commands, then ``extra``."""
    client.flushdb()
    for cmd in [*_load("published.json")["commands"], *(extra or [])]:
        client.execute_command(*(_arg(a) for a in cmd))


def _check_error(exc: BaseException, kind: str) -> None:
    if kind in ("legacy_pointer", "bad_pointer"):
        assert isinstance(exc, PointerError), exc
        assert ("old key layout" in str(exc)) == (kind == "legacy_pointer"), exc
    elif kind == "bad_value":
        assert isinstance(exc, ValueError) and not isinstance(exc, LookupError), exc
    else:
        assert isinstance(exc, LookupError) and not isinstance(exc, PointerError), exc
        assert {"missing_meta": "no metadata", "epoch_mismatch": "another life",
                "malformed_meta": "malformed"}[kind] in str(exc), exc


def _check_score(got: Any, want: dict[str, Any] | None, columns: list[str], key: str) -> None:
    if want is None:
        assert got is None, key
        return
    assert got is not None, key
    assert (got.version, got.version_id, got.model_version) == (want["version"], want["version_id"],
                                                                 want["model_version"]), key
    assert list(got.values) == columns
    assert [_bits(got.values[c]) for c in columns] == [_bits(want["values"][c]) for c in columns], key


@pytest.mark.integration
def test_python_readers_return_what_the_published_layout_says(redis_url: str) -> None:
    import redis

    v = _load("published.json")
    admin = redis.Redis.from_url(redis_url)
    for sc in v["scenarios"]:
        load_published(admin, sc["commands"])
        keys = [lk["key"] for lk in sc["lookups"]]
        with ScoreReader(redis_url, prefix=v["prefix"], pointer_ttl=0) as reader:
            if "expect_error" in sc:
                with pytest.raises(Exception) as exc:
                    reader.get_many(v["model"], keys)
                _check_error(exc.value, sc["expect_error"])
                for k in keys:
                    with pytest.raises(Exception) as exc:
                        reader.get(v["model"], k)
                    _check_error(exc.value, sc["expect_error"])
            else:
                assert reader.current_version_id(v["model"]) == sc["current_version_id"], sc["name"]
                many = reader.get_many(v["model"], keys)
                assert list(many) == keys
                for lk in sc["lookups"]:
                    _check_score(many[lk["key"]], lk["expect"], v["columns"], lk["key"])
                    _check_score(reader.get(v["model"], lk["key"]), lk["expect"], v["columns"], lk["key"])

        if "expect_error" in sc:
            with pytest.raises(Exception) as exc:
                asyncio.run(_async_many(redis_url, v, keys))
            _check_error(exc.value, sc["expect_error"])
        else:
            got = asyncio.run(_async_many(redis_url, v, keys))
            for lk in sc["lookups"]:
                _check_score(got[lk["key"]], lk["expect"], v["columns"], lk["key"])


async def _async_many(url: str, v: dict[str, Any], keys: list[str]) -> Any:
    async with AsyncScoreReader(url, prefix=v["prefix"], pointer_ttl=0) as reader:
        return await reader.get_many(v["model"], keys)


@pytest.mark.integration
def test_the_publishers_own_writes_have_the_vectors_fields(redis_url: str) -> None:
    """The dump is derived from the layout functions; this keeps its meta fields and record honest
    against what :class:`RedisVersions` really writes (allocate -> verify -> flip)."""
    from batchscore.redis_conn import connect
    from batchscore.sinks.publication import Publication
    from batchscore.sinks.redis import RedisVersions

    v = _load("published.json")
    store = RedisVersions(connect(redis_url), layout.namespace("real", "m"))
    with store.locked("r1", ttl_s=30):
        version = store.allocate(run_id="r1", rows=0, columns=v["columns"], model_version="x", digest="d" * 64)
        version = store.verify(version, {})
        record = Publication(seq=1, run_id="r1", run_date=None, digest="d" * 64, redis_version=version.vid).record()
        store.flip(version, expected_seq=None, expected_pointer=None, record=record)
    served = v["versions"][next(k for k, x in v["versions"].items() if x["state"] == "published")]
    assert set(store.meta(version.vid)) == set(served["meta"])
    assert store.current() == version.vid
    dumped = next(json.loads(_arg(c[2])) for c in v["commands"]
                  if c[:2] == ["SET", layout.publication_key(v["namespace"])])
    assert set(store.served_record() or {}) == set(dumped)
