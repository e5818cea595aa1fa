"""``batchscore gc``: delete a model's Redis versions beyond the current one and the ``keep`` newest.

Versions replaced less than the grace period ago are kept (readers may still hold a cached
pointer to them). Runs under the model's publish lock (never races a publish) and reconciles a
half-finished publication first. ``--orphans`` also removes data keys of versions Redis no longer
knows (a bounded ``SCAN``; left by a server restarted during a load) and reports them. No Spark
needed unless the reconcile has to reload Redis from Delta.

``--staged`` also removes the staged Parquet of runs that were never published (rejected by
validation, or abandoned): the ``<outputs.delta.path>/runs/<run_id>/`` directories whose run id is
not the run of any publication (nor of any commit) in the Delta log, whose files the live Delta
version does not use, and whose newest file is older than ``--staged-retention-hours`` (default
168, i.e. 7 days; a run being scored or waiting for its publish is younger). It runs under the
model's publish lock, so it never races a publish, and reports what it removed. Local (or
mounted) tables only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchscore.exit import exit_now
from batchscore.config import load_model_config
from batchscore.errors import ConfigError
from batchscore.sinks import delta, publication
from batchscore.sinks.redis_gc import orphans
from jobs import entry, state
from jobs.publish import lazy_loader, store_of, target_of


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore gc", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--keep", type=int, help="old versions kept besides the current (default: outputs.redis.keep_versions)")
    p.add_argument("--grace-seconds", type=float, help="default: outputs.redis.gc_grace_seconds")
    p.add_argument("--orphans", action="store_true", help="also delete data keys of unknown versions (bounded SCAN)")
    p.add_argument("--max-scan-keys", type=int, default=1_000_000, help="with --orphans: stop after this many keys")
    p.add_argument("--master", help="Spark master, only used if a reconcile must reload Redis from Delta")
    p.add_argument("--staged", action="store_true",
                   help="also remove <delta>/runs/<run_id>/ of runs never published (rejected or abandoned) "
                   "and older than --staged-retention-hours")
    p.add_argument("--staged-retention-hours", type=_positive_hours, default=DEFAULT_STAGED_RETENTION_HOURS,
                   help="with --staged: keep staged runs younger than this (default: %(default)g, i.e. 7 days)")
    return p.parse_args(entry.argv_or_sys(argv))


DEFAULT_STAGED_RETENTION_HOURS = 168.0


def _positive_hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of hours above 0 (a run being scored "
                                         "right now is 0 hours old)")
    return hours


def _is_run_id(name: str) -> bool:
    try:
        state.check_run_id(name)
    except ConfigError:
        return False
    return True


def _newest_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.stat().st_mtime
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    count = size = 0
    for parent, _dirs, files in os.walk(path):
        for name in files:
            count += 1
            size += os.lstat(os.path.join(parent, name)).st_size
    return count, size


def staged_runs(table: str, *, retention_hours: float, now: float | None = None) -> dict[str, Any]:
    """Remove the staged directories ``<table>/runs/<run_id>/`` of runs that were never
    published, that the live Delta version does not use, and whose newest file is older than
    ``retention_hours``; return what was removed and why the rest was kept."""
    if "://" in table and not table.startswith("file://"):
        raise ConfigError(f"{table}: --staged supports local (or mounted) Delta tables only")
    root = Path(table.removeprefix("file://"))
    runs = root / "runs"
    report: dict[str, Any] = {"removed": [], "kept": {}, "ignored": [], "retention_hours": retention_hours}
    if not runs.is_dir():
        return report
    # Every run the log knows: publication records (rollbacks name the run they restore) and any
    # commit's run id. And the live version's own files, whatever the log says about them.
    known = {p.get("run_id") for p in delta.publications(table)}
    known |= {h.get("batchscore.run_id") for h in delta.history(table)}
    live: set[str] = set()
    version = delta.table_version(table)
    if version is not None:
        resolved = root.resolve()
        for f in delta.files_at(table, version):
            try:
                rel = Path(f).resolve().relative_to(resolved).parts
            except ValueError:
                continue
            if len(rel) > 2 and rel[0] == "runs":
                live.add(rel[1])
    now = time.time() if now is None else now
    for d in sorted(runs.iterdir()):
        if not d.is_dir() or d.is_symlink() or not _is_run_id(d.name):
            report["ignored"].append(d.name)  # not a run's directory: never touched
            continue
        age_h = (now - _newest_mtime(d)) / 3600
        if d.name in live:
            report["kept"][d.name] = "live (files of the current Delta version)"
        elif d.name in known:
            report["kept"][d.name] = "published"
        elif age_h < retention_hours:
            report["kept"][d.name] = f"younger than the retention ({age_h:.1f} h)"
        else:
            files, size = _size(d)
            shutil.rmtree(d)
            report["removed"].append({"run_id": d.name, "age_hours": round(age_h, 1), "files": files, "bytes": size})
    return report


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
        if args.staged:
            with store.locked("gc-staged", ttl_s=rc.lock_ttl_seconds):  # no publish in between
                report["staged"] = staged_runs(cfg.outputs.delta.path, retention_hours=args.staged_retention_hours)
            for r in report["staged"]["removed"]:
                entry.log(f"gc {cfg.name}: removed staged run {r['run_id']} ({r['files']} files, {r['bytes']:,} bytes, "
                          f"{r['age_hours']:g} h old, never published)")
        summary = {"current": store.current(), "deleted": dropped or "none", "kept": report["kept"],
                   "keep / grace": f"{keep} / {grace:g} s"}
        if args.orphans:
            o_rep = report["orphans"]
            summary["orphans"] = (f"{o_rep['deleted_keys']} key(s) of {len(o_rep['versions'])} unknown version(s) "
                                  f"deleted, {o_rep['scanned']} scanned" + ("" if o_rep["complete"] else " (scan budget hit: run again)"))
        if args.staged:
            st = report["staged"]
            kept = Counter(why.split(" (")[0] for why in st["kept"].values())
            summary["staged removed"] = (", ".join(r["run_id"] for r in st["removed"]) or "none") + (
                f" ({sum(r['bytes'] for r in st['removed']):,} bytes)" if st["removed"] else "")
            summary["staged kept"] = ", ".join(f"{n} {why}" for why, n in sorted(kept.items())) or "none"
            summary["staged retention"] = f"{st['retention_hours']:g} h"
        entry.summary(f"gc {cfg.name}", summary)
        return report

    return entry.guarded(body)


if __name__ == "__main__":
    exit_now(main())
