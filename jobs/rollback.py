"""``batchscore rollback --to-version N``: a new publication whose content is Delta version N's.

The protocol is :func:`batchscore.sinks.publication.rollback`: under the model's publish lock,
the Redis version recorded for N is reused when Redis still holds all of it with N's content
digest, otherwise N's files are reloaded from Delta into a fresh Redis version (Spark only then);
then one Delta ``restore`` commit (compare-and-set) and the pointer flip. A rollback is a
publication like any other: a later retry of a run it superseded is refused, never flipped
forward over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs.publish import lazy_loader, publish_target
from batchscore.jobs.targets import store_of
from batchscore.sinks import delta, publication


def rollback(cfg: ModelConfig, *, to_version: int, redis_url: str, master: str | None = None) -> dict[str, Any]:
    table = cfg.outputs.delta.path
    if delta.commit_info(table, to_version, cfg.store) is None:
        raise ConfigError(f"{table}: no Delta version {to_version}; `batchscore history --model-config "
                          f"{cfg.source}` lists the published versions")
    out = publication.rollback(store_of(cfg, redis_url), publish_target(cfg), to_version=to_version,
                               loader=lazy_loader(cfg, redis_url, master), log=entry.log)
    pub = out.publication
    assert pub is not None
    return {"delta_version": pub.delta_version, "restored": to_version, "publication": pub.seq,
            "redis_version": pub.redis_version, "previous_redis_version": out.previous_redis_version,
            "reloaded": out.reloaded}


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("rollback", __doc__.splitlines()[0])
    p.add_argument(
        "--to-version", type=int, required=True, help="the Delta version to go back to (see `batchscore history`)"
    )
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        rep = rollback(cfg, to_version=args.to_version, redis_url=cfg.redis_url(), master=args.master)
        entry.summary(
            f"rollback {cfg.name}",
            {
                "restored": rep["restored"],
                "delta version": rep["delta_version"],
                "publication": rep["publication"],
                "redis version": f"{rep['redis_version']} ({'reloaded' if rep['reloaded'] else 'kept'})",
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
