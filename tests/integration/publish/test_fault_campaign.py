"""A seeded, time-bounded fault campaign over the publication protocol.

Random steps (publish a new run, retry an earlier one, publish one the gate rejected, roll back,
gc, reconcile, a Redis restart without persistence, a crash at any point between two side
effects, a lock taken over by another try) drive :mod:`batchscore.sinks.publication` directly,
with the executor-side loader run in-process. Redis (a real redis-server) and Delta (a real table,
read back with deltalake) are real. After every step:

* Redis serves the Delta head's publication (same seq, run, digest), or it is behind and a
  reconcile brings it there;
* a reader polling all the time never saw a mix of versions, a missing key of the served version,
  or a value other than that content's scores;
* only validated content is ever served, and no version identity is ever reused for other content.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from deltalake import DeltaTable

from batchscore.errors import BatchscoreError
from batchscore.reader import ScoreReader
from batchscore.sinks import delta, publication
from batchscore.sinks.redis import RedisVersions
from batchscore.testing import crashpoint
from batchscore.testing.local_redis import LocalRedis

from .conftest import inproc_loader

pytestmark = [pytest.mark.integration]
NS, KEY, COLS = "c:m", "user_id", ["score"]
KEYS = np.arange(400, dtype=np.int64) * 11
POINTS = ["after_redis_load", "after_delta_commit", "after_flip", "during_gc", "rollback_after_restore", "mid_load"]
SEEDS = [1, 2, 3]
STEPS = 200
# Each seed opens with one step of every kind (roll, crash point), so a short budget still covers
# them all: a publish, one that dies after its load (its run stays pending), that run re-scored, a
# retry, a rollback, a rejected run, gc, reconcile, a Redis restart, a lock taken over (refused), then a crash
# at each remaining point. Random steps follow until the budget is spent.
OPENING: list[tuple[float, str | None]] = [
    (0.1, None), (0.1, "after_redis_load"), (0.51, None), (0.4, None), (0.6, None), (0.53, None), (0.75, None),
    (0.85, None), (0.9, None), (0.99, None), (0.1, "after_delta_commit"), (0.1, "after_flip"), (0.75, "during_gc"),
    (0.6, "rollback_after_restore"), (0.1, "mid_load")]
# per seed, after the opening (BATCHSCORE_CAMPAIGN_BUDGET_S changes it)
BUDGET_S = float(os.environ.get("BATCHSCORE_CAMPAIGN_BUDGET_S", "40"))
GRACE_S = 0.5  # > the polling reader's longest read, so GC never deletes a version under it


class Crash(BaseException):
    """A process death at a crash point (BaseException: nothing in the protocol catches it)."""


def loader_for(url: str, crash: dict[str, str | None]) -> publication.Loader:
    def interrupt() -> BaseException | None:
        if crash["at"] != "mid_load":
            return None
        crash["at"] = None
        return Crash("mid_load")

    return inproc_loader(url, NS, KEY, COLS, interrupt=interrupt)


class World:
    def __init__(self, root: Path, server: LocalRedis, rng: random.Random) -> None:
        self.root, self.server, self.rng = root, server, rng
        self.table = str(root / "pred")
        self.target = publication.Target(model="m", table=self.table, key=KEY, columns=COLS, model_version="v1",
                                         keep_versions=1, gc_grace_seconds=GRACE_S, lock_ttl_seconds=30)
        self.restarts = 0  # the reader skips a read that a restart cut through
        self.other: RedisVersions | None = None  # the try that takes a lock over
        self.crash: dict[str, str | None] = {"at": None}
        self.expected: dict[str, np.ndarray] = {}  # digest -> scores, for validated content
        self.identities: dict[str, str] = {}  # version identity -> digest it was served with
        self.runs: list[str] = []
        self.n = 0

    def store(self) -> RedisVersions:
        return RedisVersions(redis.Redis.from_url(self.server.url), NS)

    def stage(self, *, rejected: bool = False, run_id: str | None = None) -> tuple[str, delta.StagedRun]:
        self.n += 1
        run_id = run_id or f"r{self.n}"
        d = Path(self.table) / "runs" / run_id
        d.mkdir(parents=True, exist_ok=True)
        values = ((KEYS * (self.n + 3)) % 1009 / 1009 + self.n).astype(np.float32)
        pq.write_table(pa.table({KEY: KEYS, "score": values, "run_id": [run_id] * len(KEYS)}), d / "part-00000.parquet")
        staged = delta.stage(self.table, run_id)
        if not rejected:
            self.expected[staged.digest] = values
            self.runs.append(run_id)
        return run_id, staged

    def publish(self, run_id: str, staged: delta.StagedRun, validated: str) -> None:
        publication.publish(self.store(), self.target, staged, run_id=run_id, run_date="2026-11-22",
                            validated_digest=validated, metadata={}, loader=loader_for(self.server.url, self.crash))

    def step(self, forced: tuple[float, str | None] | None = None) -> str:
        """One step: random, or ``forced`` as (roll, crash point) for the opening that covers every kind."""
        roll = self.rng.random()
        if self.rng.random() < 0.2:
            self.crash["at"] = self.rng.choice(POINTS)
        if forced is not None:
            roll, self.crash["at"] = forced
        try:
            if roll < 0.35 or not self.runs:
                run_id, staged = self.stage()
                self.publish(run_id, staged, staged.digest)
                return f"publish {run_id}"
            if roll < 0.5:
                run_id = self.rng.choice(self.runs)
                self.publish(run_id, delta.stage(self.table, run_id), delta.stage(self.table, run_id).digest)
                return f"retry {run_id}"
            if roll < 0.52:  # a run whose publish died, re-scored under the same id with new content
                done = {p["run_id"] for p in delta.publications(self.table)}
                pending = [r for r in self.runs if r not in done]
                if not pending:
                    return "no run to re-score"
                run_id, staged = self.stage(run_id=self.rng.choice(pending))
                self.publish(run_id, staged, staged.digest)
                return f"rescore {run_id}"
            if roll < 0.55:
                run_id, staged = self.stage(rejected=True)
                self.publish(run_id, staged, "a-digest-the-gate-rejected")
                return f"rejected {run_id}"
            if roll < 0.7:
                pubs = delta.publications(self.table)
                if not pubs:
                    return "no rollback target"
                # the opening rolls back to the oldest publication, so a restore really happens
                to = pubs[-1]["delta_version"] if forced is not None else self.rng.choice(pubs)["delta_version"]
                publication.rollback(self.store(), self.target, to_version=to,
                                     loader=loader_for(self.server.url, self.crash))
                return f"rollback to {to}"
            if roll < 0.8:
                keep = self.rng.choice([0, 1])
                if forced is not None:  # the opening's gc deletes something: replaced versions past the grace
                    keep = 0
                    time.sleep(GRACE_S)
                publication.gc(self.store(), self.target, keep=keep, grace_s=GRACE_S,
                               loader=loader_for(self.server.url, self.crash))
                return "gc"
            if roll < 0.88:
                publication.reconcile(self.store(), self.target, loader=loader_for(self.server.url, self.crash))
                return "reconcile"
            if roll < 0.94:
                self.restarts += 1
                self.server.proc.terminate()
                self.server.proc.wait(timeout=10)
                self.server.start()
                self.restarts += 1
                return "redis restarted without persistence"
            # a lock taken over: another try of the same owner fences this one out mid-publish
            run_id, staged = self.stage()
            self.other = self.store()
            self.crash["at"] = "takeover"
            try:
                self.publish(run_id, staged, staged.digest)
            finally:
                self.other.unlock()
            return f"takeover {run_id}"
        except Crash as c:
            return f"crash at {c}"
        except BatchscoreError as exc:
            return f"refused: {type(exc).__name__}"
        finally:
            self.crash["at"] = None

    def check(self, log: list[str]) -> None:
        head = publication.head(self.table)
        if head is None:
            return
        store = self.store()
        served = publication.served(store)
        if served is None or served.seq != head.seq:
            assert served is None or served.seq < head.seq, (served, head, log[-5:])
            publication.reconcile(store, self.target, loader=loader_for(self.server.url, {"at": None}))
            served = publication.served(store)
        assert served is not None and (served.seq, served.run_id, served.digest) == (head.seq, head.run_id, head.digest)
        assert served.digest in self.expected, "served content that did not pass validation"
        assert self.identities.setdefault(served.redis_version, served.digest) == served.digest, "identity reused"
        live = DeltaTable(self.table).to_pyarrow_table()
        assert np.array_equal(live.sort_by(KEY)["score"].to_numpy(), self.expected[served.digest])


def _reader(url: str, world: World, stop: threading.Event, problems: list[str]) -> None:
    reader = ScoreReader(url, prefix="c", pointer_ttl=0)
    while not stop.is_set():
        restarts = world.restarts
        try:
            found = reader.get_many("m", KEYS.tolist())
        except Exception:  # noqa: BLE001 - Redis restarting
            time.sleep(0.01)
            continue
        if restarts % 2 or world.restarts != restarts:
            continue  # a restart wiped the server under this read
        got = [s for s in found.values() if s is not None]
        if not got:
            continue  # nothing served (a wiped server before reconcile)
        ids = {s.version_id for s in got}
        if len(got) != len(KEYS) or len(ids) != 1:
            problems.append(f"mixed or missing: {len(got)} keys, versions {ids}")
            continue
        values = np.array([found[str(k)].value for k in KEYS], np.float32)  # type: ignore[union-attr]
        if not any(np.array_equal(values, v) for v in list(world.expected.values())):
            problems.append(f"version {ids} serves scores of no validated run")


@pytest.mark.parametrize("seed", SEEDS)
def test_fault_campaign(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    with LocalRedis() as server:
        world = World(tmp_path, server, rng)

        def reached(point: str, **_: Any) -> None:
            if world.crash["at"] == point:
                world.crash["at"] = None
                raise Crash(point)

        monkeypatch.setattr(crashpoint, "reached", reached)
        takeover = RedisVersions.check_fence

        def check_fence(self: RedisVersions, what: str) -> None:
            if world.crash["at"] == "takeover" and world.other is not None:  # another try takes the lock now
                world.crash["at"] = None
                world.other.lock(owner=(self.token or "x|").split("|")[0], ttl_s=30)
            takeover(self, what)

        monkeypatch.setattr(RedisVersions, "check_fence", check_fence)
        stop, problems = threading.Event(), []
        t = threading.Thread(target=_reader, args=(server.url, world, stop, problems), daemon=True)
        t.start()
        log: list[str] = []
        started = time.monotonic()
        try:
            for forced in OPENING:
                log.append(world.step(forced))
                world.check(log)
            for _ in range(STEPS - len(OPENING)):
                if time.monotonic() - started > BUDGET_S:
                    break
                log.append(world.step())
                world.check(log)
        finally:
            stop.set()
            t.join(timeout=5)
        assert not problems, problems[:5]
        kinds = {entry.split()[0] for entry in log}
        # the campaign ran its faults (refused: the rejected run and the try whose lock was taken over)
        assert {"publish", "retry", "rescore", "rollback", "refused:", "gc", "reconcile", "crash",
                "redis"} <= kinds, log
        crashed = {entry.removeprefix("crash at ") for entry in log if entry.startswith("crash at ")}
        assert set(POINTS) <= crashed, (crashed, log)  # a crash at every point, mid-load included
        assert len(log) >= 40, f"only {len(log)} steps in {BUDGET_S} s"
