"""The challengers' steps after the shared scoring pass, run by the champion's own steps.

``batchscore validate`` (after the champion passed) validates each challenger with its own rules
and compares it with the champion (:func:`judge`); ``batchscore publish`` (after the champion is
served) publishes each challenger whose validation and comparison of this run passed, in its own
namespace (:func:`publish_passing`). ``batchscore run`` and the Airflow DAG's separate tasks thus
do the same. A challenger that fails never fails the champion's step: the outcome is reported
(``challengers`` in ``validation.json``, ``publish.json`` and ``run.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import SparkSession

from batchscore.config import Challenger, ModelConfig
from batchscore.errors import ValidationRejectedError
from batchscore.jobs import _state as state
from batchscore.jobs.compare import compare
from batchscore.jobs.reports import ComparisonReport, ValidationReport

__all__ = ["judge", "publish_passing"]

log = logging.getLogger(__name__)


def _judge_one(spark: SparkSession, cfg: ModelConfig, c: Challenger,
               run_id: str) -> tuple[str, ComparisonReport | None]:
    from batchscore.jobs.validate import validate

    side = cfg.challenger(c.name)
    try:
        validate(spark, side, run_id=run_id)
    except ValidationRejectedError as exc:
        log.warning(f"validate {cfg.name}: challenger {c.name} rejected by its own rules; it will not be published")
        return f"validation rejected ({str(exc).split(': ', 1)[-1]})", None
    verdict = compare(cfg, c, run_id=run_id)
    if not verdict.passed:
        log.warning(f"validate {cfg.name}: challenger {c.name} blocked by the comparison; it will not be published")
        return "comparison blocked: " + "; ".join(verdict.blocking), verdict
    return "passed", verdict


@dataclass(frozen=True)
class Judged:
    """Every challenger's outcome (``passed`` or why not) and its comparison (None: not compared)."""

    outcomes: dict[str, str]
    comparisons: dict[str, ComparisonReport]


def judge(spark: SparkSession, cfg: ModelConfig, run_id: str) -> Judged:
    """Validate and compare every challenger of run ``run_id``."""
    outcomes, comparisons = {}, {}
    for c in cfg.challengers:
        outcomes[c.name], verdict = _judge_one(spark, cfg, c, run_id)
        if verdict is not None:
            comparisons[c.name] = verdict
    return Judged(outcomes, comparisons)


def add_plots(cfg: ModelConfig, champion_png: str, comparisons: dict[str, ComparisonReport]) -> None:
    """Append each comparison's plot (both histograms, the hexbin) below the champion's validation.png."""
    from batchscore import storage as st
    from batchscore.validation.report import stack_pngs

    store = cfg.store
    extra = [st.read_bytes(r.plot_png, store) for r in comparisons.values() if r.plot_png]
    if extra and st.is_file(champion_png, store):
        st.write_bytes(champion_png, stack_pngs(st.read_bytes(champion_png, store), extra), store)


def _passed(cfg: ModelConfig, c: Challenger, run_id: str) -> str | None:
    """None when the challenger's validation and comparison of ``run_id`` passed, else why not."""
    side = cfg.challenger(c.name)
    validated = state.read(side, run_id, ValidationReport)
    compared = state.read(side, run_id, ComparisonReport)
    if validated is None:
        return "not judged (run `batchscore validate` for this run)"
    if not validated.passed:
        return "validation rejected: " + "; ".join(validated.blocking)
    if compared is None:
        return "not compared (run `batchscore validate` for this run)"
    if not compared.passed or compared.challenger_digest != validated.digest:
        return "comparison blocked: " + "; ".join(compared.blocking or ["judged other content"])
    return None


def publish_passing(spark: SparkSession, cfg: ModelConfig, run_id: str, redis_url: str) -> dict[str, str]:
    """Publish every challenger of ``run_id`` that passed, each in its own namespace: name -> outcome."""
    from batchscore.jobs.publish import publish

    out = {}
    for c in cfg.challengers:
        why = _passed(cfg, c, run_id)
        if why is not None:
            out[c.name] = f"not published: {why}"
            continue
        rep = publish(spark, cfg.challenger(c.name), run_id=run_id, redis_url=redis_url)
        out[c.name] = f"published in shadow: Delta version {rep.delta_version}, Redis {rep.redis_version}"
    return out
