"""The patch load's diff (:func:`batchscore.jobs.redis_patch._diff`) against a plain-Python model of it:
changed, new and removed entities, scores compared bit for bit, repeated keys refused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchscore.jobs.redis_patch import _diff


def _table(keys: list[object], *cols: list[float]) -> pa.Table:
    return pa.table({"k": keys, **{f"s{i}": pa.array(c, pa.float32()) for i, c in enumerate(cols)}})


def _model(new: pa.Table, old: pa.Table, cols: list[str]) -> tuple[set[object], set[object], set[object]]:
    """What the diff must find, entity by entity, with the float32 bit patterns compared in Python."""
    def bits(t: pa.Table) -> dict[object, tuple[int, ...]]:
        rows = zip(t.column("k").to_pylist(), *(np.asarray(t.column(c), "<f4").view(np.int32).tolist() for c in cols),
                   strict=True)
        return {r[0]: tuple(r[1:]) for r in rows}

    n, o = bits(new), bits(old)
    return {k for k in n if k not in o or n[k] != o[k]}, set(o) - set(n), set(n) - set(o)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_diff_finds_exactly_the_changed_new_and_removed_entities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    old_keys = rng.permutation(5000).astype(np.int64)
    old = _table(old_keys.tolist(), rng.random(5000).tolist(), rng.random(5000).tolist())
    keep = rng.permutation(old_keys)[:4800]  # 200 removed
    new_keys = np.concatenate([keep, np.arange(5000, 5150)])  # 150 new
    by_key = {k: i for i, k in enumerate(old_keys.tolist())}
    s0 = np.array([old.column("s0")[by_key[k]].as_py() if k in by_key else 0.5 for k in new_keys.tolist()], np.float32)
    s1 = np.array([old.column("s1")[by_key[k]].as_py() if k in by_key else 0.5 for k in new_keys.tolist()], np.float32)
    touched = rng.choice(4800, 60, replace=False)
    s1[touched[:50]] = np.nextafter(s1[touched[:50]], np.float32(2))  # one ulp: a change
    s0[touched[50:]] = -s0[touched[50:]]
    new = _table(new_keys.tolist(), s0.tolist(), s1.tolist())

    got = _diff(new, old, ["s0", "s1"])
    assert got is not None
    changed, gone, added = got
    want_changed, want_gone, want_added = _model(new, old, ["s0", "s1"])
    assert set(changed.column("k").to_pylist()) == want_changed and changed.num_rows == len(want_changed) == 210
    assert set(gone.to_pylist()) == want_gone and len(want_gone) == 200
    assert set(added.to_pylist()) == want_added and len(want_added) == 150
    # the rows written carry the new scores
    chosen = dict(zip(changed.column("k").to_pylist(), changed.column("s1").to_pylist(), strict=True))
    new_s1 = dict(zip(new_keys.tolist(), s1.tolist(), strict=True))
    assert all(chosen[k] == pytest.approx(new_s1[k], abs=0) for k in chosen)


def test_bit_patterns_decide_not_float_equality() -> None:
    old = _table(["a", "b", "c"], [0.0, float("nan"), 1.0])
    new = _table(["a", "b", "c"], [-0.0, float("nan"), 1.0])  # -0.0 == 0.0 as floats, not as bits
    got = _diff(new, old, ["s0"])
    assert got is not None
    assert got[0].column("k").to_pylist() == ["a"] and len(got[1]) == 0 and len(got[2]) == 0


@pytest.mark.parametrize("new_keys", [[1, 2, 2, 3], [1, 2, 3, 7, 7], [9, 9]])
def test_repeated_keys_are_refused_whether_or_not_the_served_version_has_them(new_keys: list[int]) -> None:
    old = _table([1, 2, 3], [0.1, 0.2, 0.3])
    new = _table(new_keys, [0.5] * len(new_keys))
    assert _diff(new, old, ["s0"]) is None


def test_an_empty_served_version_makes_every_entity_new() -> None:
    got = _diff(_table([4, 5], [0.1, 0.2]), _table([], []), ["s0"])
    assert got is not None and got[0].num_rows == 2 and len(got[1]) == 0 and sorted(got[2].to_pylist()) == [4, 5]
