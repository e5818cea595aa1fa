"""Champion and challengers in one pass (``challengers:`` in the model config), driver side.

Each challenger is scored, validated and published as its own model config
(:meth:`batchscore.config.ModelConfig.challenger`: ``<model>@<name>``, its own Delta table and Redis
namespace, its own rules) from the same scoring pass as the champion: every task runs each batch
through every model (:class:`batchscore.udfs.scoring.Models`) and writes one file per model, of the
same name and with the same rows in the same order (:class:`batchscore.udfs._staged_write.Shadow`),
so the champion-vs-challenger comparison pairs files instead of joining on the key
(:mod:`batchscore.jobs.compare`). A challenger is only ever served through a split
(``batchscore split``); ``batchscore promote`` makes its published scores the champion's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from batchscore import storage as st
from batchscore.config import ModelConfig
from batchscore.jobs import _state as state
from batchscore.jobs.reports import ScoreReport
from batchscore.sinks import delta
from batchscore.udfs._staged_write import Shadow, written
from batchscore.udfs.model_ref import ModelRef
from batchscore.udfs.scoring import Models

__all__ = ["Side", "sides_for", "stage_shadows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Side:
    """One challenger of a run: its derived config, its artifact and where its columns sit."""

    name: str
    cfg: ModelConfig
    ref: ModelRef
    registry: dict[str, Any] | None
    shadow: Shadow


def sides_for(cfg: ModelConfig, run_id: str, check: Any) -> list[Side]:
    """Each challenger's derived config, checked artifact (``check(cfg) -> (ref, registry info)``)
    and :class:`Shadow` (its outputs follow the champion's and the challengers' before it)."""
    out, start = [], 1 + len(cfg.outputs.columns)
    for c in cfg.challengers:
        ccfg = cfg.challenger(c.name)
        ref, info = check(ccfg)
        shadow = Shadow(c.name, state.staged_path(ccfg, run_id), ccfg.model.version,
                        tuple(ccfg.outputs.columns), start)
        out.append(Side(c.name, ccfg, ref, info, shadow))
        start += len(ccfg.outputs.columns)
        log.info(f"score {cfg.name}: challenger {c.name}: model {ref.uri.rsplit('/', 1)[-1]} sha256 {ref.sha256[:12]}")
    return out


def models(ref: ModelRef, cfg: ModelConfig, sides: list[Side]) -> Models:
    return Models((ref, *(s.ref for s in sides)),
                  (len(cfg.outputs.columns), *(len(s.cfg.outputs.columns) for s in sides)))


def frame_columns(cfg: ModelConfig, sides: list[Side]) -> list[str]:
    """The scored frame's output columns: the champion's, then each challenger's under a unique name."""
    return [*cfg.outputs.columns, *(f"__bs_{s.name}__{c}" for s in sides for c in s.cfg.outputs.columns)]


def clear(sides: list[Side], run_id: str) -> None:
    for s in sides:
        state.invalidate(s.cfg, run_id, "validation", "comparison", "publish", "run")
        st.delete_dir(s.shadow.run_path, s.cfg.store)


def stage_shadows(sides: list[Side], jobs: list[list[Any]], champion: ScoreReport) -> list[ScoreReport]:
    """Record each challenger's files (the attempts Spark kept) and write its score report: the same
    input, rows and quarantine as the champion's."""
    reports = []
    for s in sides:
        store = s.cfg.store
        files = {n: h for rows in jobs for n, h in written(rows, s.shadow.kind).items()}
        delta.write_manifest(s.shadow.run_path, files, store)
        staged = delta.stage(s.cfg.outputs.delta.path, champion.run_id, store, writers_hashes=True)
        if staged.total_rows != champion.staged_rows:
            raise RuntimeError(
                f"challenger {s.name}: {staged.total_rows} rows staged, the champion {champion.staged_rows}")
        rep = replace(champion, model=s.cfg.name, model_version=s.cfg.model.version, model_sha256=s.ref.sha256,
                      registry=s.registry, staged_path=s.shadow.run_path, digest=staged.digest,
                      staged_rows=staged.total_rows, staged_files=len(staged.relative_files),
                      staged_bytes=sum(staged.sizes))  # the same input, rows, quarantine and pass
        state.write_report(s.cfg, champion.run_id, "score", rep)
        reports.append(rep)
    return reports
