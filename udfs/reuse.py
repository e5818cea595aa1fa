"""Inside a scoring task: incremental scoring in the same pass as the model.

The reference is the last publication's key, feature hash and outputs: the driver hands the tasks
either that Arrow table (:func:`reference`, as a broadcast) or the publication's files to read
themselves (:class:`ReferenceFiles`, a few hundred bytes in the task closure: cheaper than
pickling and broadcasting tens of MB). Each task looks its rows up in it as they come (one hash
index per Python worker and reference, built at the first batch): a row whose key is there with
the same feature hash takes the published outputs, bit for bit, instead of the model's; the others
go on to the model. So the input is read once, the model sees only the changed and new rows, and
every task writes its whole share of the snapshot itself (no hash pass, no join on the driver, no
driver-side copy). A reference whose keys repeat is refused as bad input (``--full`` rescores).

The task's counts travel to the driver in a zero-row batch marked by schema metadata
(:func:`tally_batch`, :func:`tally_of`) that the task's sink records in its report row; the driver
adds those of the attempts Spark kept: ``rows`` read, ``found`` (key in the reference, null keys
never are) and ``reused``. Changed = found - reused, new = rows - found, dropped = the reference's
rows - found (keys are unique in a publication, and duplicates in the input are refused later).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Lookup", "ReferenceFiles", "Tally", "counted", "lookup_for", "reference", "reusing", "tally_batch",
           "tally_of"]

_MARK = b"batchscore.tally"


@dataclass
class Tally:
    rows: int = 0
    found: int = 0
    reused: int = 0


class Lookup:
    """The reference as a hash index on its keys: ``(key, feature_hash, *outputs)`` columns."""

    def __init__(self, reference: pa.Table, *, where: str = "the reference publication") -> None:
        import pandas as pd

        from batchscore.errors import InputDataError

        keys = reference.column(0).combine_chunks()
        self.index = pd.Index(keys.to_numpy(zero_copy_only=False))
        if not self.index.is_unique:  # the hash table get_indexer needs anyway: no extra pass
            twice = self.index[self.index.duplicated()].tolist()[0]  # a plain int or str
            raise InputDataError(f"{where} holds key {twice!r} more than once, so its scores cannot be reused; "
                                 "rescore everything with --full (the next publication is a clean snapshot)")
        h = reference.column(1).combine_chunks()
        self.hashes = pc.fill_null(h, 0).to_numpy(zero_copy_only=False)
        self.hashed = h.is_valid().to_numpy(zero_copy_only=False)  # a null hash is never reused
        self.outputs = [reference.column(i).combine_chunks() for i in range(2, reference.num_columns)]
        self.fill = "" if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type) else 0
        self._last: tuple[pa.Array, np.ndarray] | None = None

    def positions(self, keys: pa.Array) -> np.ndarray:
        """Each key's row in the reference, -1 where absent (a null key is always absent); read
        only. The same keys asked twice in a row (a batch counted, then screened with nothing left
        out) are looked up once."""
        last = self._last
        if last is not None and _same_memory(last[0], keys):
            return last[1]
        pos = self.index.get_indexer(pc.fill_null(keys, self.fill).to_numpy(zero_copy_only=False))
        if keys.null_count:
            pos[~keys.is_valid().to_numpy(zero_copy_only=False)] = -1
        pos = np.asarray(pos, dtype=np.int64)
        pos.flags.writeable = False
        self._last = (keys, pos)  # the reference to keys keeps its buffers (and their addresses) alive
        return pos


def _same_memory(a: pa.Array, b: pa.Array) -> bool:
    """``a`` and ``b`` view the same buffers at the same offset and length (so hold the same values)."""
    if len(a) != len(b) or a.offset != b.offset or a.type != b.type:
        return False
    ba, bb = a.buffers(), b.buffers()
    return len(ba) == len(bb) and all((x is None and y is None) or (x is not None and y is not None
                                                                   and x.address == y.address and x.size == y.size)
                                      for x, y in zip(ba, bb, strict=True))


_CACHE: dict[str, Lookup] = {}


def reference(table: pa.Table) -> tuple[str, pa.Table]:
    """What the driver broadcasts: the reference table under a token of its own (the workers'
    indexes are cached by it: neither a broadcast's Python object nor its id identifies it there)."""
    import uuid

    return uuid.uuid4().hex, table


@dataclass(frozen=True)
class ReferenceFiles:
    """The reference as the publication's Parquet files, read by each worker: ``columns`` (key,
    feature hash, outputs) under those names, the key cast to ``key_type`` and the outputs to
    float32, as the driver's copy of it. ``token`` names this run's reference in the workers' cache."""

    token: str
    uris: tuple[str, ...]
    columns: tuple[str, ...]
    key_type: Any  # a pyarrow type
    storage: Any  # batchscore.storage.Storage

    def read(self) -> pa.Table:
        from batchscore import storage as st

        names = list(self.columns)
        table = st.read_parquet(self.uris, names, self.storage)
        return pa.table({names[0]: pc.cast(table.column(0), self.key_type),
                         names[1]: pc.cast(table.column(1), pa.int64()),
                         **{c: pc.cast(table.column(c), pa.float32()) for c in names[2:]}})


def lookup_for(broadcast: Any) -> Lookup:
    """The worker's index of ``broadcast`` (a Spark broadcast of :func:`reference`, or a
    :class:`ReferenceFiles`), built once; an earlier run's index is dropped."""
    if isinstance(broadcast, ReferenceFiles):
        token, table = broadcast.token, None
    else:
        token, table = broadcast.value if hasattr(broadcast, "value") else broadcast
    if token not in _CACHE:
        _CACHE.clear()
        _CACHE[token] = (Lookup(table) if table is not None
                         else Lookup(broadcast.read(), where=f"the reference publication ({broadcast.uris[0]}, ...)"))
    return _CACHE[token]


def counted(batches: Iterator[pa.RecordBatch], lookup: Lookup, tally: Tally) -> Iterator[pa.RecordBatch]:
    """``batches`` unchanged (key in column 0), their rows and keys found in the reference counted
    before anything is screened out."""
    for b in batches:
        tally.rows += b.num_rows
        tally.found += int(np.count_nonzero(lookup.positions(b.column(0)) >= 0))
        yield b


def reusing(pieces: Iterator[Any], lookup: Lookup, tally: Tally, side: list[pa.RecordBatch],
            names: list[str]) -> Iterator[Any]:
    """``(keys, matrix)`` pieces (``keys`` a struct of the key and the feature hash) without their
    reusable rows: those become batches of ``names`` (key, hash, the reference's outputs) in ``side``."""
    for keys, x in pieces:
        k, h = keys.field(0), keys.field(1)
        pos = lookup.positions(k)
        hit = pos >= 0
        at = np.where(hit, pos, 0)
        same = hit & lookup.hashed[at] & (lookup.hashes[at] == pc.fill_null(h, 0).to_numpy(zero_copy_only=False))
        if h.null_count:
            same &= h.is_valid().to_numpy(zero_copy_only=False)
        n = int(np.count_nonzero(same))
        if n:
            tally.reused += n
            rows = pa.array(np.flatnonzero(same))
            src = pa.array(pos[same])
            side.append(pa.RecordBatch.from_arrays([k.take(rows), h.take(rows), *(o.take(src) for o in lookup.outputs)],
                                                   names=names))
            if n == len(same):
                continue
            keep = ~same
            keys, x = keys.filter(pa.array(keep)), x[keep]
        yield keys, x


def tally_batch(tally: Tally) -> pa.RecordBatch:
    """The task's counts as a zero-row batch its sink recognises (:func:`tally_of`)."""
    schema = pa.schema([], metadata={_MARK: json.dumps(tally.__dict__).encode()})
    return pa.RecordBatch.from_arrays([], schema=schema)


def tally_of(batch: pa.RecordBatch) -> str | None:
    """The JSON counts a :func:`tally_batch` carries; None for any other batch."""
    md = batch.schema.metadata
    return md[_MARK].decode() if md and _MARK in md else None
