"""``batchscore history``: a model's published versions (Delta commits) and their Redis versions.

Reads the Delta log and, when the Redis URL variable is set, each version's Redis state
(``current``, ``kept``, ``expired`` or ``collected``). No Spark needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import BatchscoreError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs.targets import store_of
from batchscore.sinks import delta, publication
from batchscore.sinks.redis import RedisVersions

log = logging.getLogger(__name__)


def rows(cfg: ModelConfig, store: RedisVersions | None) -> list[dict[str, Any]]:
    """One row per Delta commit, newest first. A commit's Redis state is matched by its
    publication's identity and content digest, never by a version number alone: ``current``
    (Redis serves this publication), ``kept`` (its version is still in Redis with the same
    content), ``expired`` (gone from Redis past its ``outputs.redis.ttl_seconds`` lifetime), ``collected``."""
    now = publication.served(store) if store else None
    out = []
    for h in delta.history(cfg.outputs.delta.path, cfg.store):
        pub = (
            publication.Publication.of(json.loads(h["batchscore.publication"]))
            if h.get("batchscore.publication")
            else None
        )
        redis_state = None
        ts = h.get("timestamp")
        if store is not None and pub is not None:
            meta = store.meta(pub.redis_version)
            ttl = cfg.outputs.redis.ttl_seconds
            lapsed = bool(ttl and ts and ts / 1000 + ttl < time.time())
            redis_state = (
                "current"
                if now is not None and now.seq == pub.seq
                else "kept"
                if meta.get("digest") == pub.digest
                else "expired"  # outputs.redis.ttl_seconds: its lifetime ended (no later publication renewed it)
                if lapsed and not meta
                else "collected"
            )
        out.append(
            {
                "delta_version": int(h["version"]),
                "operation": h.get("operation"),
                "time": datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="seconds") if ts else None,
                "publication": pub.seq if pub else None,
                "kind": pub.kind if pub else None,
                "run_id": h.get("batchscore.run_id"),
                "model_version": h.get("batchscore.model_version"),
                "rows": int(h["batchscore.rows"]) if h.get("batchscore.rows") else None,
                "redis_version": pub.redis_version if pub else None,
                "redis": redis_state,
                "rollback_to": int(h["batchscore.rollback_to"]) if h.get("batchscore.rollback_to") else None,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batchscore history", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--json", action="store_true", help="one JSON object per version")
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        try:
            store = store_of(cfg)
        except BatchscoreError as exc:
            log.info(f"Redis state not shown: {exc}")
            store = None
        found = rows(cfg, store)
        if args.json:
            for r in found:
                print(json.dumps(r))
        elif not found:
            print(f"no published versions of '{cfg.name}' at {cfg.outputs.delta.path}")
        else:
            print(f"{'delta':>5}  {'pub':>4}  {'time (UTC)':<25} {'run id':<34} {'model':<10} {'rows':>10}  redis")
            for r in found:
                what = f"v{r['redis_version']} {r['redis'] or ''}" if r["redis_version"] else "-"
                run = r["run_id"] or "-"
                if r["rollback_to"] is not None:
                    run = f"rollback to {r['rollback_to']} ({run})"
                rows_txt = f"{r['rows']:,}" if r["rows"] is not None else "-"
                print(
                    f"{r['delta_version']:>5}  {r['publication'] or '-':>4}  {r['time'] or '-':<25} {run:<34} "
                    f"{r['model_version'] or '-':<10} "
                    f"{rows_txt:>10}  {what}"
                )
        return {"versions": found}

    return entry.guarded(body, verbose=getattr(args, "verbose", False))


if __name__ == "__main__":
    exit_now(main())
