"""``batchscore reconcile``: make Redis serve the publication the Delta table's log ends with.

Delta leads: a publication happens when its commit lands. After a crash between the commit and
the flip, or a Redis restarted without persistence, this flips Redis to the Delta head's
publication, reusing its Redis version when Redis still holds all of it (same identity and
content digest) and otherwise reloading it from the Delta version's files (Spark only then).
Every publish, rollback and gc does the same first. Idempotent: a second run says "in sync".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchscore.config import ModelConfig, load_model_config
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs.publish import lazy_loader, publish_target
from batchscore.jobs.targets import store_of
from batchscore.sinks import publication


def reconcile(cfg: ModelConfig, *, redis_url: str, master: str | None = None) -> dict[str, Any]:
    out = publication.reconcile(store_of(cfg, redis_url), publish_target(cfg),
                                loader=lazy_loader(cfg, redis_url, master), log=entry.log)
    pub = out.publication
    return {"action": out.action, "publication": pub.seq if pub else None, "run_id": pub.run_id if pub else None,
            "delta_version": pub.delta_version if pub else None, "redis_version": pub.redis_version if pub else None,
            "previous_redis_version": out.previous_redis_version, "reloaded": out.reloaded}


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("reconcile", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        rep = reconcile(cfg, redis_url=cfg.redis_url(), master=args.master)
        entry.summary(f"reconcile {cfg.name}", {k.replace("_", " "): v for k, v in rep.items()})
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
