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
model's publish lock, so it never races a publish, and reports what it removed. Any store
(local disk, ``s3://`` ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs.publish import lazy_loader, publish_target
from batchscore.jobs.targets import store_of
from batchscore.sinks import delta, publication
from batchscore.sinks.redis_gc import orphans
from batchscore.storage import DEFAULT, Storage

log = logging.getLogger(__name__)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore gc", description=__doc__.splitlines()[0])
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument(
        "--keep", type=int, help="old versions kept besides the current (default: outputs.redis.keep_versions)"
    )
    p.add_argument("--grace-seconds", type=float, help="default: outputs.redis.gc_grace_seconds")
    p.add_argument("--orphans", action="store_true", help="also delete data keys of unknown versions (bounded SCAN)")
    p.add_argument("--max-scan-keys", type=int, default=1_000_000, help="with --orphans: stop after this many keys")
    p.add_argument("--master", help="Spark master, only used if a reconcile must reload Redis from Delta")
    p.add_argument(
        "--staged",
        action="store_true",
        help="also remove <delta>/runs/<run_id>/ of runs never published (rejected or abandoned) "
        "and older than --staged-retention-hours",
    )
    p.add_argument(
        "--staged-retention-hours",
        type=_positive_hours,
        default=DEFAULT_STAGED_RETENTION_HOURS,
        help="with --staged: keep staged runs younger than this (default: %(default)g, i.e. 7 days)",
    )
    return p.parse_args(entry.argv_or_sys(argv))


DEFAULT_STAGED_RETENTION_HOURS = 168.0


def _positive_hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a number of hours above 0 (a run being scored right now is 0 hours old)"
        )
    return hours


def _is_run_id(name: str) -> bool:
    try:
        state.check_run_id(name)
    except ConfigError:
        return False
    return True


def staged_runs(
    table: str, *, retention_hours: float, now: float | None = None, storage: Storage = DEFAULT
) -> dict[str, Any]:
    """Remove the staged directories ``<table>/runs/<run_id>/`` of runs that were never
    published, that the live Delta version does not use, and whose newest file is older than
    ``retention_hours``; return what was removed and why the rest was kept. Works on local disk
    and object stores alike (:mod:`batchscore.storage`)."""
    import pyarrow.fs as pafs

    runs = st.join(table, "runs")
    report: dict[str, Any] = {"removed": [], "kept": {}, "ignored": [], "retention_hours": retention_hours}
    fs, path = storage.filesystem(runs)
    with st.guard(runs, "list staged runs", storage):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    if not infos:
        return report
    # Every run the log knows: publication records (rollbacks name the run they restore) and any
    # commit's run id. And the live version's own files, whatever the log says about them.
    known = {p.get("run_id") for p in delta.publications(table, storage)}
    known |= {h.get("batchscore.run_id") for h in delta.history(table, storage)}
    live: set[str] = set()
    version = delta.table_version(table, storage)
    if version is not None:
        for f in delta.files_at(table, version, storage):
            try:
                rel = st.relative(table, f).split("/")
            except ValueError:
                continue
            if len(rel) > 2 and rel[0] == "runs":
                live.add(rel[1])
    groups: dict[str, list[Any]] = {}
    for i in infos:
        rel = i.path[len(path) :].lstrip("/").split("/")
        if len(rel) == 1 and i.type != pafs.FileType.Directory:
            report["ignored"].append(rel[0])  # a file directly under runs/: not a run's directory
        else:
            groups.setdefault(rel[0], []).append(i)  # the run's folder itself, its files and sub-folders
    now = time.time() if now is None else now
    for name in sorted(groups):
        entries = groups[name]
        files = [f for f in entries if f.type == pafs.FileType.File]
        if not _is_run_id(name) or (st.is_local(runs) and os.path.islink(os.path.join(path, name))):
            report["ignored"].append(name)  # not a run's directory: never touched
            continue
        # newest of its files and folders (an object store's "folders" have no time; an empty run is old)
        newest = max((f.mtime.timestamp() for f in entries if f.mtime is not None), default=0.0)
        age_h = (now - newest) / 3600
        if name in live:
            report["kept"][name] = "live (files of the current Delta version)"
        elif name in known:
            report["kept"][name] = "published"
        elif age_h < retention_hours:
            report["kept"][name] = f"younger than the retention ({age_h:.1f} h)"
        else:
            st.delete_dir(st.join(runs, name), storage)
            report["removed"].append(
                {
                    "run_id": name,
                    "age_hours": round(age_h, 1),
                    "files": len(files),
                    "bytes": sum(int(f.size or 0) for f in files),
                }
            )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)

    def one(cfg: ModelConfig) -> dict[str, Any]:
        rc = cfg.outputs.redis
        keep = rc.keep_versions if args.keep is None else max(0, args.keep)
        grace = rc.gc_grace_seconds if args.grace_seconds is None else max(0.0, args.grace_seconds)
        url = cfg.redis_url()
        store = store_of(cfg, url)
        target = publish_target(cfg)
        dropped = publication.gc(
            store, target, keep=keep, grace_s=grace, loader=lazy_loader(cfg, url, args.master), log=entry.log
        )
        report: dict[str, Any] = {"deleted": dropped, "kept": store.known_versions()}
        if args.orphans:
            with store.locked("gc", ttl_s=rc.lock_ttl_seconds):
                o = orphans(store, max_keys=args.max_scan_keys)
            report["orphans"] = {
                "scanned": o.scanned,
                "deleted_keys": o.deleted,
                "versions": o.identities,
                "complete": o.complete,
            }
        if args.staged:
            with store.locked("gc-staged", ttl_s=rc.lock_ttl_seconds):  # no publish in between
                report["staged"] = staged_runs(
                    cfg.outputs.delta.path, retention_hours=args.staged_retention_hours, storage=cfg.store
                )
            for r in report["staged"]["removed"]:
                log.info(
                    f"gc {cfg.name}: removed staged run {r['run_id']} ({r['files']} files, {r['bytes']:,} bytes, "
                    f"{r['age_hours']:g} h old, never published)"
                )
        summary = {
            "current": store.current(),
            "deleted": dropped or "none",
            "kept": report["kept"],
            "keep / grace": f"{keep} / {grace:g} s",
        }
        if args.orphans:
            o_rep = report["orphans"]
            summary["orphans"] = (
                f"{o_rep['deleted_keys']} key(s) of {len(o_rep['versions'])} unknown version(s) "
                f"deleted, {o_rep['scanned']} scanned" + ("" if o_rep["complete"] else " (scan budget hit: run again)")
            )
        if args.staged:
            st = report["staged"]
            kept = Counter(why.split(" (")[0] for why in st["kept"].values())
            summary["staged removed"] = (", ".join(r["run_id"] for r in st["removed"]) or "none") + (
                f" ({sum(r['bytes'] for r in st['removed']):,} bytes)" if st["removed"] else ""
            )
            summary["staged kept"] = ", ".join(f"{n} {why}" for why, n in sorted(kept.items())) or "none"
            summary["staged retention"] = f"{st['retention_hours']:g} h"
        entry.summary(f"gc {cfg.name}", summary)
        return report

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        report = one(cfg)
        if cfg.challengers:  # each challenger's own namespace and table, the same way
            report["challengers"] = {c.name: one(cfg.challenger(c.name)) for c in cfg.challengers}
        return report

    return entry.guarded(body, verbose=getattr(args, "verbose", False))


if __name__ == "__main__":
    exit_now(main())
