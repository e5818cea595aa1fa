"""Generate the language-neutral test vectors of the Redis layout (docs/redis-layout.md).

    .venv/bin/python tests/vectors/make_vectors.py           # (re)write tests/vectors/*.json
    .venv/bin/python tests/vectors/make_vectors.py --check   # exit 1 when a file is stale

Every value is derived from the code the publisher and the Python reader run:
:mod:`batchscore.redis_layout` (keys, identities, buckets, score packing), pyarrow's cast of an
integer key column to strings (what :func:`batchscore.udfs._redis_load.make_loader` hashes) and
:class:`batchscore.sinks.publication.Publication` (the ``{ns}:publication`` record). Nothing random:
the output is the same on every run, so ``--check`` (and tests/unit/test_vectors.py) catch a layout
change that was not carried into the vectors (and so into every other language's reader).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batchscore import redis_layout as layout  # noqa: E402 -- run as a file: importable only after the sys.path edit

FORMAT = 1
BUCKET_COUNTS = [1, 2, 3, 7, 10, 16, 128, 1000, 7919, 65536, 1000003, 2147483647, 2147483648, 4294967295]
INT_KEYS = [0, 7, 42, -1, -42, 2**31 - 1, 2**31, 2**53 + 1, -(2**63), 2**63 - 1]
STRING_KEYS = [
    "", "0", "42", "007", "a", "user-1", "user:{17}", "a b", "line\r\nbreak", "nul\u0000byte", "ünïcödé",
    "\u00e9", "e\u0301", "日本語のキー", "🙂", "k🙂" * 3, "\u0800", "\uffff", "\U0010ffff", "x" * 300,
    "The quick brown fox jumps over the lazy dog", "0123456789" * 100,
]


def _f32(x: float) -> float:
    """``x`` rounded to float32 (round to nearest, ties to even), as the double it is exactly."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def int_key(value: int) -> str:
    """An integer entity key as the loader hashes and stores it: Arrow's cast to string."""
    import pyarrow as pa

    return str(pa.array([value], pa.int64()).cast(pa.string())[0].as_py())


# -- keys -> buckets -------------------------------------------------------------------------------

def buckets_vectors() -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    for v in INT_KEYS:
        key = int_key(v)
        assert key == str(v), (v, key)  # Arrow's decimal text is Python's str(int)
        cases.append({"input": {"int64": str(v)}, **_bucket_case(key)})
    for key in STRING_KEYS:
        cases.append({"input": {"string": key}, **_bucket_case(key)})
    crcs = [c["crc32"] for c in cases]
    assert any(c >= 2**31 for c in crcs) and any(c < 2**31 for c in crcs)  # both halves: catches signed CRCs
    return {
        "format": FORMAT,
        "description": (
            "Entity key -> bucket. key: the text stored as the hash field (an integer key as its decimal text, "
            "'input.int64' given as a string since JSON numbers past 2^53 are not portable); key_utf8_hex: its "
            "UTF-8 bytes; crc32: CRC-32/ISO-HDLC (zlib's, polynomial 0xEDB88320 reflected, init and xorout "
            "0xFFFFFFFF) of those bytes as an unsigned 32-bit number; buckets: bucket count (decimal, as in the "
            "meta field) -> crc32 % count. No Unicode normalization: 'é' (U+00E9) and 'e'+U+0301 differ."),
        "bucket_counts": BUCKET_COUNTS,
        "cases": cases,
    }


def _bucket_case(key: str) -> dict[str, Any]:
    raw = key.encode("utf-8")
    crc = zlib.crc32(raw)
    out = {str(n): layout.bucket_of(key, n) for n in BUCKET_COUNTS}
    assert all(out[str(n)] == crc % n for n in BUCKET_COUNTS)
    return {"key": key, "key_utf8_hex": raw.hex(), "crc32": crc, "buckets": out}


# -- scores -> bytes -------------------------------------------------------------------------------

F32_MAX = _f32(3.4028234663852886e38)
F32_MIN_NORMAL = 2.0**-126
F32_MIN_SUBNORMAL = 2.0**-149
F32_MAX_SUBNORMAL = 2.0**-126 - 2.0**-149

SCORE_CASES: list[tuple[str, list[float]]] = [
    ("one column, 0.5", [0.5]),
    ("one column, zero", [0.0]),
    ("one column, negative zero (sign bit set)", [-0.0]),
    ("one column, one", [1.0]),
    ("one column, minus one", [-1.0]),
    ("one column, a typical probability", [_f32(0.7333333)]),
    ("one column, 0.1 as float32", [_f32(0.1)]),
    ("one column, largest finite float32", [F32_MAX]),
    ("one column, most negative finite float32", [-F32_MAX]),
    ("one column, smallest normal float32", [F32_MIN_NORMAL]),
    ("one column, largest subnormal float32", [F32_MAX_SUBNORMAL]),
    ("one column, smallest subnormal float32", [F32_MIN_SUBNORMAL]),
    ("one column, negative subnormal", [-F32_MIN_SUBNORMAL * 3]),
    ("one column, 2^24 (last integer step of 1)", [16777216.0]),
    ("one column, large", [_f32(1.0e30)]),
    ("one column, large negative", [_f32(-7.5e35)]),
    ("three columns, in meta 'columns' order", [0.25, -2.5, 1000.0]),
    ("three columns, mixed edges", [-0.0, F32_MIN_SUBNORMAL, -F32_MAX]),
    ("three columns, float32 roundings of decimals", [_f32(0.1), _f32(1 / 3), _f32(-123.456)]),
]

# Doubles that are not float32 values: an encoder rounds them to nearest (ties to even).
ROUNDING_CASES: list[tuple[str, float]] = [
    ("0.1 rounds to float32 0.100000001490116...", 0.1),
    ("1/3", 1 / 3),
    ("16777217 (2^24 + 1) ties to even 16777216", 16777217.0),
    ("16777219 (2^24 + 3) ties to even 16777220", 16777219.0),
    ("-123.456", -123.456),
    ("1e-45 rounds to the smallest subnormal", 1e-45),
    ("3.4028235e38 (float32 max printed) rounds to float32 max", 3.4028235e38),
]

BAD_WIDTHS = [("0000803f", 3), ("0000803f0000", 1), ("", 1), ("0000803f0000803f", 1)]


def scores_vectors() -> dict[str, Any]:
    cases = []
    for name, values in SCORE_CASES:
        assert all(_f32(v) == v for v in values), name
        raw = layout.encode_scores(values)
        decoded = layout.decode_scores(raw, len(values))
        assert [struct.pack("<d", a) for a in decoded] == [struct.pack("<d", b) for b in values], name
        cases.append({"description": name, "values": values,
                      "float32_bits": [struct.pack(">f", v).hex() for v in values], "hex": raw.hex()})
    rounding = []
    for name, x in ROUNDING_CASES:
        raw = layout.encode_scores([x])
        rounding.append({"description": name, "input": x, "hex": raw.hex(),
                         "decoded": layout.decode_scores(raw, 1)[0]})
    bad = []
    for hexed, columns in BAD_WIDTHS:
        try:
            layout.decode_scores(bytes.fromhex(hexed), columns)
        except ValueError:
            bad.append({"hex": hexed, "columns": columns})
        else:
            raise AssertionError(f"{hexed} decoded as {columns} columns")
    return {
        "format": FORMAT,
        "description": (
            "Scores -> hash value bytes: each output column's score as an IEEE 754 binary32, little-endian, 4 "
            "bytes, in the order of the meta field 'columns', concatenated (no separator, no header). values: "
            "the float32 values written as the JSON numbers (doubles) they are exactly; float32_bits: each "
            "value's bit pattern (big-endian hex, as usually printed); hex: the stored bytes. rounding: doubles "
            "that an encoder rounds to nearest float32 (ties to even) -> bytes and the decoded value. "
            "bad_widths: values a decoder must refuse for that column count (length != 4 * columns)."),
        "cases": cases,
        "rounding": rounding,
        "bad_widths": bad,
    }


# -- pointer values --------------------------------------------------------------------------------

VALID_IDENTITIES = ["1.a", "12.9f3a01bc", "3.x", "7.ABCdef09", "9223372036854775807.00ff00ff", "0.0", "012.ab"]
LEGACY = ["3", "12", "0"]
GARBAGE = ["", "3.", ".ab", "x.ab", "3.a-b", "3.ab.cd", "v3.ab", "-3.ab", "3 .ab", "3.a b", "3.a_b", "+3.ab"]


def identities_vectors() -> dict[str, Any]:
    valid = []
    for vid in VALID_IDENTITIES:
        n, epoch = layout.parse_version_id(vid)
        valid.append({"pointer": vid, "number": str(n), "epoch": epoch, "canonical": layout.version_id(n, epoch)})
    invalid = []
    for raw, kind in [*((r, "legacy_pointer") for r in LEGACY), *((r, "bad_pointer") for r in GARBAGE)]:
        try:
            layout.parse_version_id(raw)
        except ValueError:
            invalid.append({"pointer": raw, "error": kind})
        else:
            raise AssertionError(f"{raw!r} parsed")
    return {
        "format": FORMAT,
        "description": (
            "Pointer values ({ns}:current) -> version identity. valid: 'N.epoch' with N one or more ASCII digits "
            "(number given as a string; it fits a signed 64-bit integer) and epoch one or more ASCII letters or "
            "digits; canonical: the identity in the meta and data key names (the number's decimal text without "
            "leading zeros, '.', the epoch as is). The publisher only ever writes canonical identities. invalid: a "
            "reader must raise; legacy_pointer is a bare number (the old layout), bad_pointer anything else."),
        "valid": valid,
        "invalid": invalid,
    }


# -- a small published layout ----------------------------------------------------------------------

PREFIX, MODEL = "vec", "demo"
NS = layout.namespace(PREFIX, MODEL)
COLUMNS = ["p_click", "p_buy", "ltv"]
V1 = layout.version_id(1, "0a1b2c3d")
V2 = layout.version_id(2, "5e6f7a8b")
V3 = layout.version_id(3, "77aa88bb")  # loading: never served
V2_OLD_LIFE = layout.version_id(2, "00c0ffee")  # data left over from an earlier life of number 2
T0 = 1795000000.0

KEYS_BOTH = ["42", "-7", "9007199254740993", "user:{17}", "ünïcödé", "🙂", "e\u0301", "\u00e9", "x" * 300]
ONLY_V1 = ["1001", "gone"]
ONLY_V2 = ["", "1002", "new key"]
ABSENT = ["43", "nobody", "E\u0301"]


def _entities(version: int, keys: list[str]) -> dict[str, list[float]]:
    out = {}
    for i, k in enumerate(keys):
        out[k] = [_f32((version * 0.1) + i / 64), _f32(-(i + 1) * 0.015625 * version),
                  _f32(version * 1000.0 + i * 37.5)]
    return out


def _arg(x: Any) -> Any:
    return {"hex": x.hex()} if isinstance(x, bytes) else str(x)


def _version(number: int, vid: str, *, entities: dict[str, list[float]], buckets: int, state: str,
             model_version: str, run_id: str, extra: dict[str, str] | None = None,
             write: list[str] | None = None) -> tuple[list[list[Any]], dict[str, Any]]:
    """HSET commands of one version (meta as :meth:`RedisVersions.allocate` writes it + later states)."""
    epoch = vid.partition(".")[2]
    digest = hashlib.sha256(f"vectors:{vid}".encode()).hexdigest()
    meta: dict[str, Any] = {"number": number, "epoch": epoch, "state": state, "count": len(entities),
                            "buckets": buckets, "columns": ",".join(COLUMNS), "model_version": model_version,
                            "run_id": run_id, "digest": digest, "created_at": T0 + number, **(extra or {})}
    cmds: list[list[Any]] = [["HSET", layout.meta_key(NS, vid), *(_arg(x) for kv in meta.items() for x in kv)]]
    by_bucket: dict[int, list[str]] = {}
    for k in (write if write is not None else list(entities)):
        by_bucket.setdefault(layout.bucket_of(k, buckets), []).append(k)
    for b in sorted(by_bucket):
        fields = [x for k in by_bucket[b] for x in (_arg(k), _arg(layout.encode_scores(entities[k])))]
        cmds.append(["HSET", layout.data_key(NS, vid, b), *fields])
    return cmds, {str(k): str(v) for k, v in meta.items()}


def _record(seq: int, run_id: str, vid: str, digest: str, rows: int, delta_version: int, *,
            kind: str = "publish", rollback_to: int | None = None) -> str:
    from batchscore.sinks.publication import Publication

    pub = Publication(seq=seq, run_id=run_id, run_date=f"2026-11-{20 + seq:02d}", digest=digest, redis_version=vid,
                      kind=kind, rows=rows, rollback_to=rollback_to, delta_version=delta_version)
    return json.dumps(pub.record(), sort_keys=True)  # as RedisVersions.flip writes it


def _expect(number: int, vid: str, model_version: str, values: list[float] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {"version": number, "version_id": vid, "model_version": model_version,
            "values": dict(zip(COLUMNS, values, strict=True))}


def published_vectors() -> dict[str, Any]:
    e1 = _entities(1, KEYS_BOTH + ONLY_V1)
    e2 = _entities(2, KEYS_BOTH + ONLY_V2)
    e3 = _entities(3, KEYS_BOTH + ONLY_V2)
    e2_old = {k: [-9.0, -9.0, -9.0] for k in KEYS_BOTH}
    assert all(len(set(map(tuple, (e1.get(k, []), e2.get(k, []))))) == 2 for k in KEYS_BOTH)  # versions differ

    c1, m1 = _version(1, V1, entities=e1, buckets=4, state="retired", model_version="demo-1", run_id="r1",
                      extra={"published_at": T0 + 10, "retired_at": T0 + 20})
    c2, m2 = _version(2, V2, entities=e2, buckets=5, state="published", model_version="demo-2", run_id="r2",
                      extra={"published_at": T0 + 20})
    c3, _ = _version(3, V3, entities=e3, buckets=5, state="loading", model_version="demo-3", run_id="r3",
                     write=KEYS_BOTH[:4])
    old: list[list[Any]] = []
    for b in sorted({layout.bucket_of(k, 5) for k in KEYS_BOTH}):
        fields = [x for k in KEYS_BOTH if layout.bucket_of(k, 5) == b
                  for x in (_arg(k), _arg(layout.encode_scores(e2_old[k])))]
        old.append(["HSET", layout.data_key(NS, V2_OLD_LIFE, b), *fields])

    rec2 = _record(2, "r2", V2, m2["digest"], len(e2), 1)
    commands: list[list[Any]] = [
        *c1, *c2, *c3, *old,
        ["SET", layout.seq_key(NS), "3"],
        ["ZADD", layout.versions_key(NS), "1", V1, "2", V2, "3", V3],
        ["SET", layout.run_key(NS, "r1"), V1],
        ["SET", layout.run_key(NS, "r2"), V2],
        ["SET", layout.run_key(NS, "r3"), V3],
        ["SET", layout.publication_key(NS), rec2],
        ["SET", layout.pointer_key(NS), V2],
    ]
    keys = KEYS_BOTH + ONLY_V1 + ONLY_V2 + ABSENT

    def lookups(number: int, vid: str, mv: str, ents: dict[str, list[float]]) -> list[dict[str, Any]]:
        return [{"key": k, "expect": _expect(number, vid, mv, ents.get(k))} for k in keys]

    rollback_rec = _record(3, "r1", V1, m1["digest"], len(e1), 2, kind="rollback", rollback_to=0)
    flip_to_v1 = [
        ["SET", layout.pointer_key(NS), V1],
        ["SET", layout.publication_key(NS), rollback_rec],
        ["HSET", layout.meta_key(NS, V1), "state", "published", "published_at", str(T0 + 30)],
        ["HSET", layout.meta_key(NS, V2), "state", "retired", "retired_at", str(T0 + 30)],
        ["PUBLISH", layout.channel(NS), "flip"],
    ]
    bad_meta = layout.version_id(8, "11111111")
    wrong_number = layout.version_id(9, "33333333")
    zero_buckets = layout.version_id(10, "44444444")
    no_columns = layout.version_id(11, "55555555")
    corrupt_key = KEYS_BOTH[0]

    def meta_of(vid: str, **over: Any) -> list[Any]:
        m = {**m2, "number": vid.partition(".")[0], "epoch": vid.partition(".")[2], **over}
        return ["HSET", layout.meta_key(NS, vid), *(str(x) for kv in m.items() for x in kv)]

    def failing(name: str, description: str, cmds: list[list[Any]], error: str) -> dict[str, Any]:
        return {"name": name, "description": description, "commands": cmds, "expect_error": error,
                "lookups": [{"key": k} for k in keys[:3]]}

    scenarios = [
        {"name": "served", "description": "the dump as is: the pointer names version 2; version 1 (retired), "
         "version 3 (loading) and data of an earlier life of number 2 (epoch 00c0ffee) must not be read",
         "commands": [], "current_version_id": V2, "lookups": lookups(2, V2, "demo-2", e2)},
        {"name": "flip", "description": "a flip (here a rollback to version 1) as the publisher's flip script "
         "writes it, then the announcement; a reader re-reads the pointer (at the latest after its TTL, at once "
         "when subscribed) and serves version 1",
         "commands": flip_to_v1, "current_version_id": V1, "lookups": lookups(1, V1, "demo-1", e1)},
        {"name": "nothing_published", "description": "no pointer: nothing is served, every lookup is null",
         "commands": [["DEL", layout.pointer_key(NS)]], "current_version_id": None,
         "lookups": [{"key": k, "expect": None} for k in keys]},
        failing("legacy_pointer", "a bare number, the old layout's pointer: refuse (do not read version 2)",
                [["SET", layout.pointer_key(NS), "2"]], "legacy_pointer"),
        failing("bad_pointer", "a pointer that is no version identity: refuse",
                [["SET", layout.pointer_key(NS), "v2.5e6f7a8b"]], "bad_pointer"),
        failing("missing_meta", "the pointer names an identity whose meta is gone (collected, flushed): a "
                "retryable lookup error, never an empty answer",
                [["SET", layout.pointer_key(NS), layout.version_id(7, "0badc0de")]], "missing_meta"),
        failing("epoch_mismatch", "meta under the pointer's key whose epoch field disagrees with the pointer's "
                "epoch: treated as missing", [meta_of(bad_meta, epoch="22222222"),
                                              ["SET", layout.pointer_key(NS), bad_meta]], "epoch_mismatch"),
        failing("number_mismatch", "meta whose number field disagrees with the pointer's number: treated as "
                "missing", [meta_of(wrong_number, number="90"), ["SET", layout.pointer_key(NS), wrong_number]],
                "epoch_mismatch"),
        failing("zero_buckets", "meta with buckets 0: malformed", [meta_of(zero_buckets, buckets="0"),
                                                                  ["SET", layout.pointer_key(NS), zero_buckets]],
                "malformed_meta"),
        failing("empty_column", "meta whose columns list has an empty name: malformed",
                [meta_of(no_columns, columns="p_click,,ltv"), ["SET", layout.pointer_key(NS), no_columns]],
                "malformed_meta"),
        {"name": "bad_value", "description": "a value of the wrong width (8 bytes for 3 columns): a lookup "
         "of that key fails", "commands": [["HSET", layout.data_key(NS, V2, layout.bucket_of(corrupt_key, 5)),
                                            corrupt_key, {"hex": layout.encode_scores([1.0, 2.0]).hex()}]],
         "expect_error": "bad_value", "lookups": [{"key": corrupt_key}]},
    ]
    return {
        "format": FORMAT,
        "description": (
            "A small published layout: load 'commands' into an empty Redis database (each command a list of "
            "arguments: a JSON string is sent as its UTF-8 bytes, {'hex': ...} as those bytes), then for each "
            "scenario: flush, load 'commands', run the scenario's own 'commands', and look the keys up with a "
            "reader of prefix 'prefix' and a pointer cache of 0 (or invalidated), one key at a time (get) and "
            "all in one batch (getMany). 'expect' null: not found. 'expect_error': every lookup must fail with "
            "that kind (legacy_pointer, bad_pointer: the pointer; missing_meta, epoch_mismatch, malformed_meta: "
            "the meta, retryable; bad_value: the stored bytes). current_version_id: the identity the reader "
            "resolves (null: nothing published)."),
        "prefix": PREFIX,
        "model": MODEL,
        "namespace": NS,
        "columns": COLUMNS,
        "commands": commands,
        "versions": {
            V1: {"state": "retired", "buckets": 4, "meta": m1, "entities": e1},
            V2: {"state": "published", "buckets": 5, "meta": m2, "entities": e2},
            V3: {"state": "loading", "buckets": 5, "entities_written": KEYS_BOTH[:4]},
            V2_OLD_LIFE: {"state": "orphan data of an earlier life of number 2 (no meta)", "buckets": 5},
        },
        "scenarios": scenarios,
    }


FILES = {
    "buckets.json": buckets_vectors,
    "scores.json": scores_vectors,
    "identities.json": identities_vectors,
    "published.json": published_vectors,
}


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def build() -> dict[str, str]:
    """File name -> its JSON text."""
    return {name: render(make()) for name, make in FILES.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = p.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale test vectors: {', '.join(stale)}; run {Path(__file__).relative_to(REPO)}", file=sys.stderr)
        return 1
    print(("wrote " if stale else "up to date: ") + ", ".join(stale or FILES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
