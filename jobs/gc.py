"""``batchscore gc``: delete a model's Redis versions beyond the current one and the ``keep`` newest.

Versions replaced less than the grace period ago are kept (readers may still hold a cached
pointer to them). Runs under the model's publish lock (never races a publish) and reconciles a
half-finished publication first. ``--orphans`` also removes data keys of versions Redis no longer
knows (a bounded ``SCAN``; left by a server restarted during a load) and reports them. No Spark
needed unless the reconcile has to reload Redis from Delta.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchscore.exit import exit_now
from batchscore.config import load_model_config
from batchscore.sinks import publication
from batchscore.sinks.redis_gc import orphans
from jobs import entry
from jobs.publish import lazy_loader, store_of, target_of


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore gc", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--keep", type=int, help="old versions kept besides the current (default: outputs.redis.keep_versions)")
    p.add_argument("--grace-seconds", type=float, help="default: outputs.redis.gc_grace_seconds")
    p.add_argument("--orphans", action="store_true", help="also delete data keys of unknown versions (bounded SCAN)")
    p.add_argument("--max-scan-keys", type=int, default=1_000_000, help="with --orphans: stop after this many keys")
    p.add_argument("--master", help="Spark master, only used if a reconcile must reload Redis from Delta")
    return p.parse_args(entry.argv_or_sys(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        rc = cfg.outputs.redis
        keep = rc.keep_versions if args.keep is None else max(0, args.keep)
        grace = rc.gc_grace_seconds if args.grace_seconds is None else max(0.0, args.grace_seconds)
        url = cfg.redis_url()
        store = store_of(cfg, url)
        target = target_of(cfg)
        dropped = publication.gc(store, target, keep=keep, grace_s=grace, loader=lazy_loader(cfg, url, args.master),
                                 log=entry.log)
        report: dict[str, Any] = {"deleted": dropped, "kept": store.known_versions()}
        if args.orphans:
            with store.locked("gc", ttl_s=rc.lock_ttl_seconds):
                o = orphans(store, max_keys=args.max_scan_keys)
            report["orphans"] = {"scanned": o.scanned, "deleted_keys": o.deleted, "versions": o.identities,
                                 "complete": o.complete}
        summary = {"current": store.current(), "deleted": dropped or "none", "kept": report["kept"],
                   "keep / grace": f"{keep} / {grace:g} s"}
        if args.orphans:
            o_rep = report["orphans"]
            summary["orphans"] = (f"{o_rep['deleted_keys']} key(s) of {len(o_rep['versions'])} unknown version(s) "
                                  f"deleted, {o_rep['scanned']} scanned" + ("" if o_rep["complete"] else " (scan budget hit: run again)"))
        entry.summary(f"gc {cfg.name}", summary)
        return report

    return entry.guarded(body)


if __name__ == "__main__":
    exit_now(main())
