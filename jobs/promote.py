"""``batchscore promote --challenger NAME``: serve a challenger's published scores as the champion's.

The challenger's current publication (its Delta table's head) becomes a new publication of the
champion, through the same fenced protocol as every publish (:func:`batchscore.jobs.publish.publish`):
its files are copied under the champion's table root as run ``promote-<name>-<its run id>``
(invisible until committed), loaded into a new Redis version of the champion's namespace, committed
to the champion's Delta table and flipped in one step, so readers switch atomically. The run's
validation is the challenger's own passing validation of exactly that content, re-bound to the
copied files' digest. Refused when the challenger's last comparison with the champion was blocked,
when it has no publication, or when its output columns differ from the champion's.

``batchscore rollback --to-version N`` undoes a promotion like any publication, and
``batchscore history`` lists it under its ``promote-...`` run id. The next scheduled run scores the
champion named in the config again: make the challenger the champion there to keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pyspark.sql import SparkSession

from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import PublishRefusedError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs._session import session_for
from batchscore.jobs.compare import last_comparison
from batchscore.jobs.publish import publish
from batchscore.jobs.reports import PublishReport, ScoreReport, ValidationReport
from batchscore.sinks import delta, publication


def promote(spark: SparkSession, cfg: ModelConfig, *, challenger: str, redis_url: str) -> PublishReport:
    side = cfg.challenger(challenger)
    verdict = last_comparison(cfg, challenger)
    if verdict is None:
        raise PublishRefusedError(f"challenger {challenger} of '{cfg.name}' was never compared with the champion; "
                                  "run `batchscore run` first")
    if not verdict.passed:
        raise PublishRefusedError(f"challenger {challenger}'s last comparison (run {verdict.run_id}) was blocked: "
                                  f"{'; '.join(verdict.blocking)}; not promoted")
    if list(side.outputs.columns) != list(cfg.outputs.columns):
        raise PublishRefusedError(f"challenger {challenger} writes columns {side.outputs.columns}, the champion "
                                  f"{cfg.outputs.columns}; a promotion needs the same output columns")
    head = publication.head(side.outputs.delta.path, side.store)
    if head is None or head.delta_version is None:
        raise PublishRefusedError(f"challenger {challenger} of '{cfg.name}' has no publication to promote")
    validated = state.read(side, head.run_id, ValidationReport)
    scored = state.read(side, head.run_id, ScoreReport)
    if validated is None or scored is None or not validated.passed or validated.digest != head.digest:
        raise PublishRefusedError(f"challenger {challenger}'s published run {head.run_id} has no passing validation "
                                  "of its content on record; not promoted")
    run_id = state.check_run_id(f"promote-{challenger}-{head.run_id}")
    target = state.staged_path(cfg, run_id)
    if not delta.committed_version(cfg.outputs.delta.path, cfg.name, run_id, cfg.store):
        st.delete_dir(target, cfg.store)
        files = {}
        for uri in delta.files_at(side.outputs.delta.path, head.delta_version, side.store):
            name = uri.rsplit("/", 1)[1]
            data = st.read_bytes(uri, side.store)
            st.write_bytes(st.join(target, name), data, cfg.store)
            files[name] = _sha256(data)
        delta.write_manifest(target, files, cfg.store)
        staged = delta.stage(cfg.outputs.delta.path, run_id, cfg.store)
        state.write_report(cfg, run_id, "score", replace(scored, model=cfg.name, run_id=run_id, staged_path=target,
                                                         digest=staged.digest, registry=None))
        state.write_report(cfg, run_id, "validation", replace(
            validated, model=cfg.name, run_id=run_id, digest=staged.digest,
            mode=f"promotion of challenger {challenger} (its run {head.run_id}, validated with its rules)"))
        entry.log(f"promote {cfg.name}: challenger {challenger}'s publication {head.seq} (run {head.run_id}) staged "
                  f"as run {run_id}")
    # The served scores are the challenger's: Redis's metadata and the commit name its model version.
    served = cfg.model_copy(update={"model": cfg.model.model_copy(update={"version": side.model.version}),
                                    "challengers": []})
    return publish(spark, served, run_id=run_id, redis_url=redis_url, allow_older=True, kind="promote")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("promote", __doc__.splitlines()[0])
    p.add_argument("--challenger", required=True, help="the challenger (challengers[].name) to serve as champion")
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> PublishReport:
        cfg = load_model_config(args.model_config)
        url = cfg.redis_url()
        before = publication.head(cfg.outputs.delta.path, cfg.store)
        spark = session_for(cfg, "promote", master=args.master, verbose=args.verbose)
        rep = promote(spark, cfg, challenger=args.challenger, redis_url=url)
        undo = (f"batchscore rollback --model-config {args.model_config} --to-version {before.delta_version}"
                if before is not None and before.delta_version is not None else "(no earlier publication)")
        entry.summary(f"promote {cfg.name}", {"challenger": args.challenger, "run id": rep.run_id,
                                              "delta version": rep.delta_version, "redis version": rep.redis_version,
                                              "undo": undo})
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
