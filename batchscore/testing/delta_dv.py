"""Give an existing Delta table's data files Delta **deletion vectors** (DVs), for tests.

It exists because no Delta writer available here produces DVs (delta-rs 1.6's ``DeltaTable.delete``
rewrites the files even with ``delta.enableDeletionVectors=true``, and delta-spark is not
installed), yet readers of the tables must honour them. :func:`delete_rows` writes them
itself, following the Delta protocol (PROTOCOL.md, "Deletion Vectors" and the appendix "Deletion
Vector Format"):

* the deleted row positions of each file as a ``RoaringBitmapArray``: the magic number 1681511377
  (little endian), then the 64-bit "portable" Roaring format: the number of 32-bit buckets (8
  bytes), then per bucket its key (the high 32 bits, 4 bytes) and a standard 32-bit Roaring bitmap
  (cookie 12346, no run containers; an array container for a 16-bit chunk holding at most 4096
  positions, a bitmap container otherwise). All these integers are little endian;
* storage type ``u`` (the default): one new file ``deletion_vector_<uuid>.bin`` in the table root
  for the commit, holding the version byte 1 and, per DV, its size (4 bytes, big endian), the
  serialized bitmap and the CRC-32 of it (4 bytes, big endian). The descriptor's
  ``pathOrInlineDv`` is the Z85-encoded UUID (20 characters), ``offset`` points at the DV's size
  field, ``sizeInBytes`` is the serialized bitmap's length;
* storage type ``i``: the serialized bitmap Z85-encoded in the descriptor itself (zero-padded to a
  multiple of 4 bytes, ``sizeInBytes`` the unpadded length, no ``offset``);
* one commit: a ``protocol`` upgraded to reader 3 / writer 7 with the ``deletionVectors`` reader and
  writer feature (the features implied by the old versions, or listed before, kept), a
  ``metaData`` with ``delta.enableDeletionVectors=true`` when it was not set, per touched file a
  ``remove`` of its current ``add`` and an ``add`` of the same file carrying the DV descriptor (the
  file's stats kept, ``tightBounds`` set to false since min/max now describe deleted rows too),
  and a ``commitInfo`` (operation ``DELETE``).

A file that already has a DV gets the union of its old and new positions (its old DV is read from
``u``, ``p`` or ``i`` storage, in the portable or the older "native" RoaringBitmapArray layout).

The table is read by replaying its log itself (JSON commits after the newest classic or
multi-part Parquet checkpoint). Local tables (a path or ``file://`` URI) commit with an exclusive
create; any other URI pyarrow's ``FileSystem.from_uri`` resolves, or an explicit pyarrow
``filesystem``, works too, but commits there only check that the version is still free (a test
helper, not a concurrent writer). Refused: append-only tables, tables with change data feed on (a
delete would owe ``cdc`` files), catalog-managed tables and V2 (UUID-named) checkpoints.

delta-rs 1.6.6 reads ``u``, ``i`` and ``p`` DVs in ``DeltaTable.deletion_vectors()``, ``scan()`` and
``QueryBuilder`` SQL; ``to_pyarrow_dataset()`` / ``to_pyarrow_table()`` refuse DV tables
(``DeltaProtocolError``) and ``count()`` (file stats) ignores DVs.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "decode_roaring_array",
    "delete_rows",
    "encode_roaring_array",
    "z85_decode",
    "z85_encode",
]

PORTABLE_MAGIC = 1681511377  # RoaringBitmapArray, 64-bit portable Roaring format (little endian)
NATIVE_MAGIC = 1681511376  # Delta's older layout (big endian): read when merging, never written
_COOKIE_NO_RUN = 12346
_COOKIE_RUN = 12347
_ARRAY_MAX = 4096  # a 16-bit chunk with more positions is a bitmap container
_BITMAP_BYTES = 8192
_DV_FILE_VERSION = 1

# Features a legacy (reader, writer) protocol version implies: PROTOCOL.md "Table Features for New
# and Existing Tables" (an upgrade keeps every feature the old versions allowed).
_LEGACY_WRITER_FEATURES = {
    2: ("appendOnly", "invariants"),
    3: ("checkConstraints",),
    4: ("changeDataFeed", "generatedColumns"),
    5: ("columnMapping",),
    6: ("identityColumns",),
}
_LEGACY_READER_FEATURES = {2: ("columnMapping",)}

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}

_COMMIT_RE = re.compile(r"(\d{20})\.json")
_CHECKPOINT_RE = re.compile(r"(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet")
_V2_CHECKPOINT_RE = re.compile(r"(\d{20})\.checkpoint\.[0-9a-fA-F-]{36}\.(?:json|parquet)")


# --- Z85 ---------------------------------------------------------------------------------------

def z85_encode(data: bytes) -> str:
    """Z85 (ZeroMQ RFC 32) of ``data``, whose length must be a multiple of 4."""
    if len(data) % 4:
        raise ValueError(f"Z85 encodes multiples of 4 bytes, got {len(data)}")
    out = []
    for (word,) in struct.iter_unpack(">I", data):
        chars = []
        for _ in range(5):
            word, digit = divmod(word, 85)
            chars.append(_Z85[digit])
        out.append("".join(reversed(chars)))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """The bytes of a Z85 string (length a multiple of 5)."""
    if len(text) % 5:
        raise ValueError(f"Z85 decodes multiples of 5 characters, got {len(text)}")
    out = bytearray()
    for i in range(0, len(text), 5):
        word = 0
        for c in text[i:i + 5]:
            word = word * 85 + _Z85_INDEX[c]
        out += struct.pack(">I", word)
    return bytes(out)


# --- RoaringBitmapArray ------------------------------------------------------------------------

def _encode_roaring32(values: Sequence[int]) -> bytes:
    """A standard 32-bit Roaring bitmap (no run containers) of sorted, distinct ``values``."""
    chunks: dict[int, list[int]] = {}
    for v in values:
        chunks.setdefault(v >> 16, []).append(v & 0xFFFF)
    keys = sorted(chunks)
    header = struct.pack("<II", _COOKIE_NO_RUN, len(keys))
    descriptive = b"".join(struct.pack("<HH", k, len(chunks[k]) - 1) for k in keys)
    bodies = []
    for k in keys:
        lows = chunks[k]
        if len(lows) <= _ARRAY_MAX:
            bodies.append(struct.pack(f"<{len(lows)}H", *lows))
        else:
            bits = bytearray(_BITMAP_BYTES)  # 1024 little-endian 64-bit words: bit v of the chunk
            for lo in lows:
                bits[lo >> 3] |= 1 << (lo & 7)
            bodies.append(bytes(bits))
    offset = len(header) + len(descriptive) + 4 * len(keys)
    offsets = bytearray()
    for body in bodies:
        offsets += struct.pack("<I", offset)
        offset += len(body)
    return header + descriptive + bytes(offsets) + b"".join(bodies)


def _decode_roaring32(buf: bytes, pos: int) -> tuple[list[int], int]:
    """The values of the 32-bit Roaring bitmap at ``buf[pos:]``, and the position after it."""
    (cookie,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if cookie == _COOKIE_NO_RUN:
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        runs = bytes((n + 7) // 8)
        has_offsets = True
    elif cookie & 0xFFFF == _COOKIE_RUN:
        n = (cookie >> 16) + 1
        runs = buf[pos:pos + (n + 7) // 8]
        pos += len(runs)
        has_offsets = n >= 4
    else:
        raise ValueError(f"not a Roaring bitmap (cookie {cookie})")
    desc = [struct.unpack_from("<HH", buf, pos + 4 * i) for i in range(n)]
    pos += 4 * n + (4 * n if has_offsets else 0)
    values: list[int] = []
    for i, (key, card_minus_1) in enumerate(desc):
        high = key << 16
        if runs[i >> 3] >> (i & 7) & 1:
            (n_runs,) = struct.unpack_from("<H", buf, pos)
            pos += 2
            for start, length in struct.iter_unpack("<HH", buf[pos:pos + 4 * n_runs]):
                values.extend(range(high + start, high + start + length + 1))
            pos += 4 * n_runs
        elif card_minus_1 + 1 <= _ARRAY_MAX:
            count = card_minus_1 + 1
            values.extend(high + lo for lo in struct.unpack_from(f"<{count}H", buf, pos))
            pos += 2 * count
        else:
            bits = buf[pos:pos + _BITMAP_BYTES]
            values.extend(high + (b << 3) + j for b, byte in enumerate(bits) if byte for j in range(8) if byte >> j & 1)
            pos += _BITMAP_BYTES
    return values, pos


def encode_roaring_array(positions: Iterable[int]) -> bytes:
    """A DV's serialized ``RoaringBitmapArray``: magic 1681511377, then the 64-bit portable format."""
    values = sorted(set(positions))
    if values and (values[0] < 0 or values[-1] >= 1 << 63):
        raise ValueError("row positions must be in [0, 2**63)")
    buckets: dict[int, list[int]] = {}
    for v in values:
        buckets.setdefault(v >> 32, []).append(v & 0xFFFFFFFF)
    out = bytearray(struct.pack("<IQ", PORTABLE_MAGIC, len(buckets)))
    for key in sorted(buckets):
        out += struct.pack("<I", key) + _encode_roaring32(buckets[key])
    return bytes(out)


def decode_roaring_array(data: bytes) -> list[int]:
    """The sorted positions in a serialized ``RoaringBitmapArray`` (portable or native layout)."""
    values: list[int] = []
    if struct.unpack_from("<I", data)[0] == PORTABLE_MAGIC:
        (n_buckets,) = struct.unpack_from("<Q", data, 4)
        pos = 12
        for _ in range(n_buckets):
            (key,) = struct.unpack_from("<I", data, pos)
            lows, pos = _decode_roaring32(data, pos + 4)
            values.extend((key << 32) | lo for lo in lows)
        return sorted(values)
    if struct.unpack_from(">I", data)[0] == NATIVE_MAGIC:  # int32 count, then per key (0, 1, ...) size + bitmap
        (n_buckets,) = struct.unpack_from(">i", data, 4)
        pos = 8
        for key in range(n_buckets):
            (size,) = struct.unpack_from(">i", data, pos)
            lows, _ = _decode_roaring32(data, pos + 4)
            values.extend((key << 32) | lo for lo in lows)
            pos += 4 + size
        return sorted(values)
    raise ValueError("not a RoaringBitmapArray (unknown magic number)")


# --- storage -----------------------------------------------------------------------------------

class _Storage:
    """The table's files through a pyarrow filesystem; ``root`` is the table's path in it."""

    def __init__(self, table_uri: str, filesystem: Any | None) -> None:
        import pyarrow.fs as pa_fs

        self._pa_fs = pa_fs
        if filesystem is not None:
            self.fs, self.root = filesystem, table_uri.rstrip("/")
        else:
            uri = table_uri if "://" in table_uri else os.path.abspath(table_uri)
            self.fs, path = pa_fs.FileSystem.from_uri(uri)
            self.root = path.rstrip("/") or "/"
        self.local = isinstance(self.fs, pa_fs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            data: bytes = f.read()
        return data

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_new(self, path: str, data: bytes) -> None:
        """Write ``path`` only if it does not exist yet (exclusive create on a local disk)."""
        if self.local:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        if self.fs.get_file_info(path).type != self._pa_fs.FileType.NotFound:
            raise FileExistsError(path)
        self.write(path, data)

    def list_names(self, rel_dir: str) -> list[str]:
        infos = self.fs.get_file_info(self._pa_fs.FileSelector(self.path(rel_dir), allow_not_found=True))
        return [info.base_name for info in infos if info.type == self._pa_fs.FileType.File]

    def resolve(self, uri: str) -> str:
        """An absolute URI (a ``p`` DV's path) as a path in this filesystem."""
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return unquote(parsed.path)
        return unquote(parsed.netloc + parsed.path)


# --- log replay --------------------------------------------------------------------------------

class _Snapshot:
    def __init__(self) -> None:
        self.version = -1
        self.protocol: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}
        self.adds: dict[str, dict[str, Any]] = {}
        self.last_commit_info: dict[str, Any] = {}

    def apply(self, actions: Sequence[Mapping[str, Any]]) -> None:
        """One commit's (or checkpoint's) actions. Their order in a commit carries no meaning, and
        a commit may remove a file's old (path, DV) and add it with a new DV: removes go first."""
        for action in actions:
            if action.get("protocol"):
                self.protocol = dict(action["protocol"])
            if action.get("metaData"):
                self.metadata = dict(action["metaData"])
            if action.get("remove"):
                self.adds.pop(action["remove"]["path"], None)
        for action in actions:
            if action.get("add"):
                self.adds[action["add"]["path"]] = dict(action["add"])


_MAP_FIELDS = {"partitionValues", "tags", "configuration", "options"}


def _from_checkpoint(value: Any, key: str = "") -> Any:
    """A checkpoint row's action as its JSON form: maps as dicts, null fields left out."""
    if isinstance(value, dict):
        return {k: _from_checkpoint(v, k) for k, v in value.items()
                if v is not None and not k.endswith("_parsed")}
    if key in _MAP_FIELDS and isinstance(value, list):
        return dict(value)
    return value


def _load_snapshot(storage: _Storage) -> _Snapshot:
    names = storage.list_names("_delta_log")
    commits = {int(m.group(1)) for n in names if (m := _COMMIT_RE.fullmatch(n))}
    parts: dict[int, list[str]] = {}
    totals: dict[int, int] = {}
    for n in names:
        if m := _CHECKPOINT_RE.fullmatch(n):
            v = int(m.group(1))
            parts.setdefault(v, []).append(n)
            totals[v] = int(m.group(3) or 1)
    complete = [v for v, files in parts.items() if len(files) == totals[v]]
    v2 = [int(m.group(1)) for n in names if (m := _V2_CHECKPOINT_RE.fullmatch(n))]
    if not commits and not complete:
        raise FileNotFoundError(f"no Delta log under {storage.path('_delta_log')}")
    latest = max([*commits, *complete])
    snap = _Snapshot()
    start = 0
    if complete:
        cp = max(complete)
        if v2 and max(v2) > cp:
            raise NotImplementedError("tables with V2 (UUID-named) checkpoints are not supported")
        import pyarrow.parquet as pq

        for name in sorted(parts[cp]):
            table = pq.read_table(storage.path(f"_delta_log/{name}"), filesystem=storage.fs)
            cols = [c for c in ("protocol", "metaData", "add") if c in table.column_names]  # removes: tombstones
            snap.apply([_from_checkpoint(row) for row in table.select(cols).to_pylist()])
        start = cp + 1
    missing = sorted(set(range(start, latest + 1)) - commits)
    if missing:
        raise ValueError(f"Delta log is missing commits {missing} (after checkpoint {start - 1})")
    for v in range(start, latest + 1):
        text = storage.read(storage.path(f"_delta_log/{v:020d}.json")).decode()
        actions = [json.loads(line) for line in text.splitlines() if line.strip()]
        snap.apply(actions)
        if v == latest:
            snap.last_commit_info = next((a["commitInfo"] for a in actions if a.get("commitInfo")), {})
    snap.version = latest
    return snap


# --- deletion vectors --------------------------------------------------------------------------

def _dv_file_name(file_uuid: uuid.UUID) -> str:
    return f"deletion_vector_{file_uuid}.bin"


def _read_dv(storage: _Storage, dv: Mapping[str, Any]) -> list[int]:
    """The positions an existing DV descriptor deletes."""
    kind, where, size = dv["storageType"], dv["pathOrInlineDv"], int(dv["sizeInBytes"])
    if kind == "i":
        return decode_roaring_array(z85_decode(where)[:size])
    if kind == "u":
        prefix, encoded = where[:-20], where[-20:]
        name = _dv_file_name(uuid.UUID(bytes=z85_decode(encoded)))
        path = storage.path(f"{prefix}/{name}" if prefix else name)
    elif kind == "p":
        path = storage.resolve(where)
    else:
        raise ValueError(f"unknown deletion vector storage type {kind!r}")
    data = storage.read(path)
    if data[0] != _DV_FILE_VERSION:
        raise ValueError(f"{path}: DV file format version {data[0]}, expected {_DV_FILE_VERSION}")
    offset = dv.get("offset")
    pos = 1 if offset is None else int(offset)
    (stored_size,) = struct.unpack_from(">I", data, pos)
    if stored_size != size:
        raise ValueError(f"{path}@{pos}: DV size {stored_size}, the log says {size}")
    blob = data[pos + 4:pos + 4 + size]
    (crc,) = struct.unpack_from(">I", data, pos + 4 + size)
    if crc != zlib.crc32(blob):
        raise ValueError(f"{path}@{pos}: DV checksum mismatch")
    return decode_roaring_array(blob)


def _num_records(storage: _Storage, add: Mapping[str, Any], stats: Mapping[str, Any]) -> int:
    if "numRecords" in stats:
        return int(stats["numRecords"])
    import pyarrow.parquet as pq

    path = add["path"]
    full = storage.resolve(path) if "://" in path else storage.path(unquote(path))
    with storage.fs.open_input_file(full) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def _upgraded_protocol(protocol: Mapping[str, Any]) -> dict[str, Any]:
    reader = int(protocol.get("minReaderVersion", 1))
    writer = int(protocol.get("minWriterVersion", 2))
    if reader >= 3:
        reader_features = list(protocol.get("readerFeatures") or [])
    else:
        reader_features = [f for v, fs in _LEGACY_READER_FEATURES.items() if reader >= v for f in fs]
    if writer >= 7:
        writer_features = list(protocol.get("writerFeatures") or [])
    else:
        writer_features = [f for v, fs in _LEGACY_WRITER_FEATURES.items() if writer >= v for f in fs]
    for feature in [*reader_features, "deletionVectors"]:
        if feature not in writer_features:
            writer_features.append(feature)
    if "deletionVectors" not in reader_features:
        reader_features.append("deletionVectors")
    return {"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": reader_features, "writerFeatures": writer_features}


def _match_path(key: str, adds: Mapping[str, Any], storage: _Storage) -> str:
    """The log ``path`` of the file ``key`` names: a path relative to the table root (decoded or as
    in the log), or the file's absolute path / URI as ``DeltaTable.file_uris()`` lists it."""
    if key in adds:
        return key
    by_decoded = {unquote(p): p for p in adds}
    rel = key
    if rel not in by_decoded and ("://" in key or key.startswith("/")):
        absolute = storage.resolve(key) if "://" in key else key
        root = storage.root.rstrip("/") + "/"
        if absolute.startswith(root):
            rel = absolute[len(root):]
    if rel in by_decoded:
        return by_decoded[rel]
    raise KeyError(f"{key!r} is not a data file of the table's current version "
                   f"(files: {sorted(by_decoded)})")


def delete_rows(
    table_uri: str,
    deleted: Mapping[str, Sequence[int]],
    *,
    storage_type: str = "u",
    filesystem: Any | None = None,
) -> int:
    """Mark rows of the table's data files deleted with deletion vectors; return the new version.

    ``deleted`` maps a data file (its path relative to the table root, as in the log and in
    ``DeltaTable.get_add_actions()``, or its absolute path as ``DeltaTable.file_uris()`` lists it)
    to the 0-based positions of the rows in that file to delete. A file with a DV already gets the
    union. ``storage_type`` is ``"u"`` (one new DV file for the commit, in the table root) or
    ``"i"`` (inline in the log). ``filesystem``: a pyarrow filesystem holding the table at path
    ``table_uri`` (default: resolved from ``table_uri``; local paths and ``file://`` URIs).
    """
    if storage_type not in ("u", "i"):
        raise ValueError(f"storage_type must be 'u' or 'i', got {storage_type!r}")
    if not deleted:
        raise ValueError("nothing to delete")
    storage = _Storage(table_uri, filesystem)
    snap = _load_snapshot(storage)
    if "catalogManaged" in (snap.protocol.get("readerFeatures") or []):
        raise NotImplementedError("catalog-managed tables commit through their catalog")
    table_config = snap.metadata.get("configuration") or {}
    if table_config.get("delta.appendOnly") == "true":
        raise ValueError("the table is append-only (delta.appendOnly=true): rows cannot be deleted")
    if table_config.get("delta.enableChangeDataFeed") == "true":
        raise NotImplementedError("the table has change data feed on: a delete must write cdc files, not done here")
    now = int(time.time() * 1000)

    touched: list[tuple[dict[str, Any], list[int], int, int]] = []  # (add, all positions, newly deleted, rows)
    seen: set[str] = set()
    for key, positions in deleted.items():
        path = _match_path(key, snap.adds, storage)
        if path in seen:
            raise ValueError(f"{key!r} names a file given twice")
        seen.add(path)
        add = snap.adds[path]
        new = {int(p) for p in positions}
        if not new:
            raise ValueError(f"no row positions given for {key!r}")
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        n_rows = _num_records(storage, add, stats)
        bad = sorted(p for p in new if not 0 <= p < n_rows)
        if bad:
            raise ValueError(f"{key!r} has {n_rows} rows; positions out of range: {bad[:10]}")
        old = set(_read_dv(storage, add["deletionVector"])) if add.get("deletionVector") else set()
        touched.append((add, sorted(old | new), len(new - old), n_rows))

    dv_uuid = uuid.uuid4()
    dv_file = bytearray([_DV_FILE_VERSION])
    actions: list[dict[str, Any]] = []
    new_adds: list[dict[str, Any]] = []
    for add, union, _, n_rows in touched:
        blob = encode_roaring_array(union)
        descriptor: dict[str, Any] = {"storageType": storage_type, "sizeInBytes": len(blob),
                                      "cardinality": len(union)}
        if storage_type == "u":
            descriptor["pathOrInlineDv"] = z85_encode(dv_uuid.bytes)
            descriptor["offset"] = len(dv_file)
            dv_file += struct.pack(">I", len(blob)) + blob + struct.pack(">I", zlib.crc32(blob))
        else:
            descriptor["pathOrInlineDv"] = z85_encode(blob + bytes(-len(blob) % 4))
        remove = {"path": add["path"], "deletionTimestamp": now, "dataChange": True,
                  "extendedFileMetadata": True, "partitionValues": add.get("partitionValues") or {},
                  "size": add["size"]}
        for field in ("tags", "deletionVector", "baseRowId", "defaultRowCommitVersion"):
            if add.get(field) is not None:
                remove[field] = add[field]
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        stats["numRecords"] = n_rows  # required, physical rows (PROTOCOL.md "Per-file Statistics")
        stats["tightBounds"] = False
        new_add = {**add, "dataChange": True, "stats": json.dumps(stats, separators=(",", ":")),
                   "deletionVector": descriptor}
        actions.append({"remove": remove})
        new_adds.append({"add": new_add})
    actions += new_adds

    header: list[dict[str, Any]] = []
    protocol = _upgraded_protocol(snap.protocol)
    if protocol != snap.protocol:
        header.append({"protocol": protocol})
    config = dict(snap.metadata.get("configuration") or {})
    if config.get("delta.enableDeletionVectors") != "true":
        config["delta.enableDeletionVectors"] = "true"
        header.append({"metaData": {**snap.metadata, "configuration": config}})

    commit_info: dict[str, Any] = {
        "timestamp": now,
        "operation": "DELETE",
        "operationParameters": {"predicate": "row positions (batchscore.testing.delta_dv)"},
        "readVersion": snap.version,
        "isBlindAppend": False,
        "engineInfo": "batchscore.testing.delta_dv",
        "operationMetrics": {
            "numDeletedRows": str(sum(n for _, _, n, _ in touched)),
            "numDeletionVectorsAdded": str(len(touched)),
            "numRemovedFiles": "0",
            "numAddedFiles": "0",
        },
    }
    if config.get("delta.enableInCommitTimestamps") == "true":
        previous = int(snap.last_commit_info.get("inCommitTimestamp", 0))
        commit_info = {"inCommitTimestamp": max(now, previous + 1), **commit_info}

    if storage_type == "u":
        storage.write_new(storage.path(_dv_file_name(dv_uuid)), bytes(dv_file))
    version = snap.version + 1
    lines = [json.dumps(a, separators=(",", ":")) for a in [{"commitInfo": commit_info}, *header, *actions]]
    storage.write_new(storage.path(f"_delta_log/{version:020d}.json"), ("\n".join(lines) + "\n").encode())
    return version
