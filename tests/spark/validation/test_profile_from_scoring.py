"""The validation profile from the partials the scoring tasks computed while writing equals the one
pass over the staged scores; validate uses it only for the same plan and the same content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs.score import score
from batchscore.jobs.validate import planned, staged_frame, validate
from batchscore.sinks import delta
from batchscore.validation.profile import compute_profile, plan_key

pytestmark = [pytest.mark.spark]


def test_partials_from_the_scoring_tasks_make_the_same_profile(spark: Any, make_config: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_model_config(make_config(rows=20_000, layers=(8, 16, 2), validation={"drift": {"min_rows": 10}}))
    score(spark, cfg, run_id="p1", run_date="2026-12-01")
    made = state.read_report(cfg, "p1", "partials")
    staged = delta.stage(cfg.outputs.delta.path, "p1")
    plan = planned(cfg)
    assert made is not None and made["digest"] == staged.digest and made["plan"] == plan_key(plan.plans)
    assert len(made["parts"]) == len(staged.relative_files)  # one per file written

    from batchscore.jobs import validate as validate_job

    passes = []
    real = validate_job.compute_profile
    monkeypatch.setattr(validate_job, "compute_profile", lambda *a, **k: passes.append(1) or real(*a, **k))
    got = validate(spark, cfg, run_id="p1").profile.to_json()
    assert passes == []  # no pass over the staged scores
    want = compute_profile(staged_frame(spark, staged, cfg.store, list(cfg.outputs.columns)), plan.plans,
                           bins=20).to_json()
    assert got["rows"] == want["rows"] == 20_000
    for c in cfg.outputs.columns:
        g, w = got["columns"][c], want["columns"][c]
        for k in ("nulls", "nans", "posinf", "neginf", "min", "max"):
            assert g[k] == w[k], (c, k)
        assert g["mean"] == pytest.approx(w["mean"], rel=1e-12) and g["std"] == pytest.approx(w["std"], rel=1e-9)
        assert sum(g["hist"]["counts"]) == sum(w["hist"]["counts"]) == 20_000
        for q, v in w["quantiles"].items():  # sketches of other partitions: within their rank error
            assert abs(g["quantiles"][q] - v) <= 0.01 * (w["max"] - w["min"]), (c, q)

    # The files change after scoring: the digest no longer matches, validate refuses (it never merges stale partials).
    f = Path(staged.uris()[0])
    f.write_bytes(f.read_bytes())  # same bytes: same digest, still usable
    assert json.loads(Path(state.report_uri(cfg, "p1", "partials.json")).read_text())["digest"] == staged.digest
    made["plan"] = "another plan"
    state.write_report(cfg, "p1", "partials", made)
    validate(spark, cfg, run_id="p1")
    assert passes == [1]  # another plan (the reference moved): the one pass over the staged scores
