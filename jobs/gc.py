"""``batchscore gc``: delete a model's Redis versions beyond the current one and the ``keep`` newest.

Versions replaced less than the grace period ago are kept (readers may still hold a cached
pointer to them). Takes the model's publish lock, so it never races a publish. No Spark needed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from batchscore.exit import exit_now
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.redis_conn import connect
from batchscore.sinks.redis import RedisVersions
from batchscore.sinks.redis_gc import collect
from jobs import entry


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore gc", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--keep", type=int, help="old versions kept besides the current (default: outputs.redis.keep_versions)")
    p.add_argument("--grace-seconds", type=float, help="default: outputs.redis.gc_grace_seconds")
    return p.parse_args(entry.argv_or_sys(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        rc = cfg.outputs.redis
        keep = rc.keep_versions if args.keep is None else max(0, args.keep)
        grace = rc.gc_grace_seconds if args.grace_seconds is None else max(0.0, args.grace_seconds)
        store = RedisVersions(connect(cfg.redis_url(), cluster=rc.cluster), layout.namespace(rc.key_prefix, cfg.name))
        store.lock(run_id="gc", ttl_s=rc.lock_ttl_seconds)
        try:
            dropped = collect(store, keep=keep, grace_s=grace)
            left = store.known_versions()
        finally:
            store.unlock()
        entry.summary(f"gc {cfg.name}", {"current": store.current(), "deleted": dropped or "none",
                                         "kept": left, "keep / grace": f"{keep} / {grace:g} s"})
        return {"deleted": dropped, "kept": left}

    return entry.guarded(body)


if __name__ == "__main__":
    exit_now(main())
