"""The ``batchscore`` command (also ``python -m batchscore``).

Spark verbs are imported lazily, so ``batchscore lookup`` works in the light base install.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from batchscore.errors import EXIT_BAD_INPUT, EXIT_OK, BatchscoreError
from batchscore.exit import exit_now

SPARK_VERBS = {
    "run": "score -> validate -> publish, in one Spark application",
    "score": "score the input table and stage predictions under the Delta root",
    "validate": "profile the staged scores and judge them against the rules",
    "publish": "load Redis (invisible), commit Delta, flip the Redis pointer",
    "gc": "delete Redis versions older than the kept ones "
    "(--orphans: also unknown data keys; --staged: staged runs never published)",
    "rollback": "a new publication with an earlier Delta version's content (Delta restore + Redis flip)",
    "reconcile": "make Redis serve the Delta table's latest publication (after a crash or a Redis restart)",
    "history": "list published versions",
    "promote": "serve a challenger's published scores as the champion's (one atomic flip; rollback undoes it)",
    "backfill": "score a date range into a date-partitioned history table",
}


def _usage() -> str:
    verbs = "\n".join(
        f"  {v:<9} {d}" for v, d in {**SPARK_VERBS, "lookup": "print current scores of keys from Redis",
                                     "split": "show or set the traffic split between champion and challengers"}.items()
    )
    return (
        "usage: batchscore <command> [options]   (batchscore <command> --help for its options)\n\n"
        f"commands:\n{verbs}\n\nexit codes: 0 ok, 1 unexpected, 2 bad input, 3 validation rejected, 4 infrastructure"
    )


def lookup(argv: Sequence[str]) -> int:
    from batchscore.config import load_model_config
    from batchscore.reader import ScoreReader
    from batchscore.redis_conn import connect

    p = argparse.ArgumentParser(prog="batchscore lookup", description="print the current published scores of keys")
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--json", action="store_true", help="one JSON object per key instead of a table")
    p.add_argument("keys", nargs="+", metavar="KEY")
    args = p.parse_args(argv)
    try:
        cfg = load_model_config(args.model_config)
        reader = ScoreReader(
            client=connect(cfg.redis_url(), cluster=cfg.outputs.redis.cluster, retries=1, timeout=1.0),
            prefix=cfg.outputs.redis.key_prefix,
        )  # online profile
        found = reader.get_many(cfg.name, args.keys)
    except BatchscoreError as exc:
        print(f"batchscore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for key, score in found.items():
        if args.json:
            print(
                json.dumps(
                    {
                        "key": key,
                        **(
                            {
                                "values": score.values,
                                "model_version": score.model_version,
                                "version": score.version,
                                "version_id": score.version_id,
                                "arm": score.arm,
                                "published_at": score.published_at.isoformat() if score.published_at else None,
                                "scored_at": score.scored_at.isoformat() if score.scored_at else None,
                            }
                            if score
                            else {"values": None}
                        ),
                    }
                )
            )
        elif score is None:
            print(f"{key}\t(not found)")
        else:
            vals = " ".join(f"{c}={v:.6g}" for c, v in score.values.items())
            arm = "" if score.arm == "champion" else f"\tarm={score.arm}"
            print(f"{key}\t{vals}\tmodel_version={score.model_version}\tversion={score.version}{arm}")
    return EXIT_OK


def split(argv: Sequence[str]) -> int:
    """``batchscore split``: show or change a model's traffic split between champion and challengers."""
    from batchscore import redis_layout as layout
    from batchscore import splits
    from batchscore.config import load_model_config
    from batchscore.errors import ConfigError, PublishRefusedError
    from batchscore.redis_conn import connect

    p = argparse.ArgumentParser(prog="batchscore split", description="show or set the sticky traffic split of a "
                                "model between its champion and challengers (one atomic compare-and-set)")
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--set", dest="weights", metavar="ARM=W,...",
                   help="e.g. champion=90,challenger_a=10 (weight 0: shadow only); omitted: print the split")
    p.add_argument("--reset-salt", action="store_true", help="draw a new salt: every key may change arm")
    args = p.parse_args(argv)
    try:
        cfg = load_model_config(args.model_config)
        rc = cfg.outputs.redis
        client = connect(cfg.redis_url(), cluster=rc.cluster, retries=1, timeout=2.0)
        ns = layout.namespace(rc.key_prefix, cfg.name)
        current = splits.read_split(client, ns)
        if args.weights:
            try:
                arms = splits.parse_weights(args.weights, [c.name for c in cfg.challengers])
            except ValueError as exc:
                raise ConfigError(f"{cfg.source}: {exc}") from None
            for arm, weight in arms:
                arm_ns = splits.arm_namespace(rc.key_prefix, cfg.name, arm)
                if weight > 0 and client.get(layout.pointer_key(arm_ns)) is None:
                    raise PublishRefusedError(
                        f"arm '{arm}' of '{cfg.name}' has no published version in Redis; publish it first "
                        "(`batchscore run` publishes passing challengers) or give it weight 0")
            try:
                current = splits.set_split(client, ns, arms, expected=current, reset_salt=args.reset_salt)
            except splits.SplitConflict as exc:
                from batchscore.errors import InfrastructureError

                raise InfrastructureError(str(exc)) from None
        if current is None:
            print(f"{cfg.name}: no split: every lookup is served by the champion")
        else:
            arms_text = ", ".join(f"{a}={w} ({w / current.total:.1%})" for a, w in current.arms)
            print(f"{cfg.name}: split #{current.seq} (salt {current.salt}): {arms_text}")
    except BatchscoreError as exc:
        print(f"batchscore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK if args else EXIT_BAD_INPUT
    verb, rest = args[0], args[1:]
    if verb == "lookup":
        return lookup(rest)
    if verb == "split":
        return split(rest)
    if verb in SPARK_VERBS:
        try:
            module = importlib.import_module(f"batchscore.jobs.{verb}")
        except ImportError as exc:
            print(
                f"batchscore: error: `{verb}` needs the job environment ({exc.name} missing); "
                "install it with: pip install 'batchscore[spark]'",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        return int(module.main(rest))
    print(f"batchscore: error: unknown command {verb!r}\n\n{_usage()}", file=sys.stderr)
    return EXIT_BAD_INPUT


def console() -> None:
    """The ``batchscore`` console script: :func:`main`, then a hard exit with its code."""
    exit_now(main())


if __name__ == "__main__":
    console()
