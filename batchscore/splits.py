"""Sticky traffic splits between a champion and its challengers, decided at lookup time (light: ``redis`` only).

A model's split record lives at ``{ns}:split`` (``ns`` the champion's namespace), a JSON object::

    {"seq": 3, "salt": "9f3a01bc5d2e", "arms": [["champion", 90], ["challenger_a", 10], ["b", 0]]}

A reader sends key ``k`` to the arm whose cumulative weight interval holds
``u = int.from_bytes(sha256(salt + "\\0" + str(k))[:8], "big") / 2**64``; the same (salt, key) always
lands on the same arm, in every reader (Python sync and asyncio, Node), across pointer flips,
restarts and re-reads of the record; a weight change moves only the keys whose interval moved. An
arm of weight 0 is shadow only: scored and published, never served. The record changes only by
:func:`set_split`, one Lua compare-and-set on ``seq`` that also announces the change on the
model's channel (readers drop their cached record); no record means everything goes to the
champion. Arm ``champion`` reads the model's namespace, any other arm ``a`` the challenger's
namespace ``<prefix>:<model>@<a>``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchscore import redis_layout as layout

__all__ = ["CHAMPION", "Split", "SplitConflict", "arm_namespace", "assign", "parse", "read_split", "set_split",
           "split_key"]

CHAMPION = "champion"


class SplitConflict(RuntimeError):
    """The split record changed since it was read (another ``batchscore split`` ran): read it and retry."""


def split_key(ns: str) -> str:
    return f"{{{ns}}}:split"


def arm_namespace(prefix: str, model: str, arm: str) -> str:
    """The Redis namespace arm ``arm`` of ``model`` is served from."""
    return layout.namespace(prefix, model if arm == CHAMPION else f"{model}@{arm}")


@dataclass(frozen=True)
class Split:
    seq: int
    salt: str
    arms: tuple[tuple[str, int], ...]  # (arm, weight), in the order their intervals are laid out

    @property
    def total(self) -> int:
        return sum(w for _, w in self.arms)

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "salt": self.salt, "arms": [list(a) for a in self.arms]},
                          separators=(",", ":"))

    def arm_of(self, key: Any) -> str:
        return assign(self, key)

    def served(self) -> list[str]:
        return [a for a, w in self.arms if w > 0]


def _unit(salt: str, key: Any) -> float:
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(split: Split, key: Any) -> str:
    """The arm ``key`` is served from (the key as its text, as every reader writes it)."""
    u = _unit(split.salt, key) * split.total
    edge = 0
    for arm, weight in split.arms:
        edge += weight
        if weight and u < edge:
            return arm
    return next(a for a, w in reversed(split.arms) if w > 0)


def parse(raw: bytes | str | None) -> Split | None:
    """The record, or None when absent; a malformed one raises ``ValueError`` naming what is wrong."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        doc = json.loads(text)
        arms = tuple((str(a), int(w)) for a, w in doc["arms"])
        split = Split(int(doc["seq"]), str(doc["salt"]), arms)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"split record is not valid ({exc}): {text[:120]!r}") from None
    if split.total <= 0 or any(w < 0 for _, w in arms):
        raise ValueError(f"split record has no positive weight: {text[:120]!r}")
    return split


def read_split(client: Any, ns: str) -> Split | None:
    return parse(client.get(split_key(ns)))


# KEYS: split, channel name as ARGV. ARGV: expected seq (0: none yet), new record, channel, message.
_CAS = """
local cur = redis.call('GET', KEYS[1])
local seq = 0
if cur then seq = tonumber(cjson.decode(cur)['seq']) end
if seq ~= tonumber(ARGV[1]) then return {0, cur or ''} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1, ARGV[2]}
"""


def parse_weights(text: str, known: list[str]) -> tuple[tuple[str, int], ...]:
    """``champion=90,challenger_a=10`` -> arms; names must be ``champion`` or a known challenger."""
    arms = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, weight = part.partition("=")
        if not sep or not weight.strip().isdigit():
            raise ValueError(f"--set {text!r}: write arm=weight pairs with whole weights, e.g. champion=90,b=10")
        if name.strip() not in (CHAMPION, *known):
            raise ValueError(f"--set: unknown arm '{name.strip()}' (arms: {', '.join([CHAMPION, *known])})")
        arms.append((name.strip(), int(weight)))
    names = [a for a, _ in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"--set {text!r}: an arm is named twice")
    if not any(w > 0 for _, w in arms):
        raise ValueError(f"--set {text!r}: at least one arm needs a positive weight")
    return tuple(arms)


def set_split(client: Any, ns: str, arms: tuple[tuple[str, int], ...], *, expected: Split | None,
              reset_salt: bool = False) -> Split:
    """Replace the record by ``arms`` if it is still ``expected`` (None: no record yet); keeps the
    salt (so keys keep their arms) unless ``reset_salt``. Raises :class:`SplitConflict` otherwise."""
    salt = expected.salt if expected is not None and not reset_salt else secrets.token_hex(6)
    new = Split((expected.seq if expected else 0) + 1, salt, arms)
    ok, _ = client.eval(_CAS, 1, split_key(ns), expected.seq if expected else 0, new.to_json(),
                        layout.channel(ns), json.dumps({"split": new.seq}))
    if not int(ok):
        raise SplitConflict(f"the split of {ns} changed while it was being set; read it again and retry")
    return new


def shares(split: Split) -> Mapping[str, float]:
    return {a: w / split.total for a, w in split.arms}
