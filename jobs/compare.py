"""The comparison gate: champion vs each challenger on the same rows of one run.

The champion's and a challenger's staged files were written by the same tasks with the same
rows in the same order (:mod:`batchscore.jobs.challengers`), so files are paired by name and
rows by position: no join, no shuffle. Two streamed passes over the output columns (see
:class:`batchscore.validation.compare.Accumulator`) give PSI and KL between the two score
distributions, the mean shift in champion std, Spearman's rank correlation and the top-k
overlap on a seeded sample of ``comparison.sample_size`` rows, and for label outputs the
agreement rate. Each metric has warn/block thresholds (``challengers[].comparison``); a
blocked challenger is not published, the champion still is. Writes ``comparison.json`` and
``comparison.png`` (both histograms, and a hexbin of the sample) in the challenger's run folder.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from batchscore import storage as st
from batchscore.config import Challenger, ModelConfig
from batchscore.errors import PublishRefusedError
from batchscore.jobs import _state as state
from batchscore.jobs.reports import ComparisonReport, ScoreReport
from batchscore.sinks import delta
from batchscore.validation.compare import Accumulator, Thresholds, judge
from batchscore.validation.gate import decision

__all__ = ["compare", "last_comparison"]

log = logging.getLogger(__name__)
LAST = "LAST_COMPARISON"  # in the challenger's report folder: the run id of its latest comparison


def column_pairs(champion: list[str], challenger: list[str]) -> list[tuple[str, str]]:
    """Champion vs challenger columns: by name when the names match, else by position when the
    counts match, else the first of each."""
    if set(challenger) <= set(champion):
        return [(c, c) for c in challenger]
    if len(champion) == len(challenger):
        return list(zip(champion, challenger, strict=True))
    return [(champion[0], challenger[0])]


def thresholds(c: Challenger) -> list[Thresholds]:
    r = c.comparison
    out = [Thresholds("psi", r.psi.warn, r.psi.block, True), Thresholds("kl", r.kl.warn, r.kl.block, True),
           Thresholds("mean_shift", r.mean_shift.warn, r.mean_shift.block, True),
           Thresholds("spearman", r.spearman.warn, r.spearman.block, False),
           Thresholds("top_k_overlap", r.top_k.warn, r.top_k.block, False)]
    if r.agreement is not None:
        out.append(Thresholds("agreement", r.agreement.warn, r.agreement.block, False))
    return out


def _paired(cfg: ModelConfig, side: ModelConfig, run_id: str) -> tuple[Any, Any, list[tuple[str, str]]]:
    store = cfg.store
    a = delta.stage(cfg.outputs.delta.path, run_id, store)
    b = delta.stage(side.outputs.delta.path, run_id, store)
    names_a = {u.rsplit("/", 1)[1]: u for u in a.uris()}
    names_b = {u.rsplit("/", 1)[1]: u for u in b.uris()}
    if names_a.keys() != names_b.keys():
        raise PublishRefusedError(f"run {run_id}: the champion's and challenger {side.name}'s staged files differ "
                                  "(not scored in the same pass); re-score the run")
    return a, b, [(names_a[n], names_b[n]) for n in sorted(names_a)]


def compare(cfg: ModelConfig, challenger: Challenger, *, run_id: str) -> ComparisonReport:
    """Compare ``challenger`` with the champion on run ``run_id``; write and return the report."""
    started = time.perf_counter()
    side = cfg.challenger(challenger.name)
    store = cfg.store
    a, b, files = _paired(cfg, side, run_id)
    for c, staged in ((cfg, a), (side, b)):  # the comparison is bound to the content it judged
        scored = state.read(c, run_id, ScoreReport)
        if scored is None or scored.digest != staged.digest:
            raise PublishRefusedError(
                f"{staged.run_path}: the staged files changed since scoring; re-score run {run_id}")
    pairs = column_pairs(list(cfg.outputs.columns), list(side.outputs.columns))
    r = challenger.comparison
    accs = {p: Accumulator(rows=a.total_rows, sample_size=r.sample_size, bins=r.bins, seed=7) for p in pairs}

    def chunks() -> Any:
        for ua, ub in files:
            ta = st.parquet_file(ua, store).read(columns=sorted({p[0] for p in pairs}))
            tb = st.parquet_file(ub, store).read(columns=sorted({p[1] for p in pairs}))
            yield ta, tb

    for ta, tb in chunks():
        for ca, cb in pairs:
            accs[(ca, cb)].add(ta[ca].to_numpy(), tb[cb].to_numpy())
    for acc in accs.values():
        acc.edges()
    for ta, tb in chunks():
        for ca, cb in pairs:
            accs[(ca, cb)].count(ta[ca].to_numpy(), tb[cb].to_numpy())
    results, out_pairs = [], []
    for (ca, cb), acc in accs.items():
        m = acc.metrics(top_share=r.top_k.share, tail_holdout=r.kl.tail_holdout)
        results += judge(m, thresholds(challenger), cb if ca == cb else f"{ca}~{cb}")
        out_pairs.append({"champion_column": ca, "challenger_column": cb, **m.as_dict()})
    passed, blocking, warnings = decision(results)
    png = _plot(cfg, side, run_id, accs, out_pairs, passed)
    report = ComparisonReport(
        passed=passed, model=cfg.name, challenger=challenger.name, run_id=run_id, champion_digest=a.digest,
        challenger_digest=b.digest, pairs=out_pairs, rules=[x.as_dict() for x in results],
        warnings=[x.describe() for x in warnings], blocking=[x.describe() for x in blocking], plot_png=png,
        seconds=round(time.perf_counter() - started, 2))
    state.write_report(side, run_id, "comparison", report)
    st.write_bytes(st.join(side.runtime.report_dir, side.name, LAST), run_id.encode(), store)
    verdict = "passed" if passed else "BLOCKED: " + "; ".join(report.blocking)
    log.info(f"compare {cfg.name} vs {challenger.name}: {verdict}"
             + (f" (warnings: {'; '.join(report.warnings)})" if report.warnings else ""))
    return report


def last_comparison(cfg: ModelConfig, name: str) -> ComparisonReport | None:
    """The challenger's latest comparison report, or None when it was never compared."""
    side = cfg.challenger(name)
    uri = st.join(side.runtime.report_dir, side.name, LAST)
    if not st.is_file(uri, side.store):
        return None
    return state.read(side, st.read_bytes(uri, side.store).decode().strip(), ComparisonReport)


def _plot(cfg: ModelConfig, side: ModelConfig, run_id: str, accs: dict[tuple[str, str], Accumulator],
          pairs: list[dict[str, Any]], passed: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(accs)
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.6 * n), squeeze=False)
    for row, ((ca, cb), acc), info in zip(axes, accs.items(), pairs, strict=True):
        x, y = acc.sample()
        lo, hi = (float(min(x.min(), y.min())), float(max(x.max(), y.max()))) if len(x) else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        row[0].hist(x, bins=bins, density=True, alpha=0.45, label=f"champion {ca}")
        row[0].hist(y, bins=bins, density=True, histtype="step", linewidth=2, label=f"challenger {cb}")
        psi, sp = info["psi"], info["spearman"]
        row[0].set_title(f"PSI {psi:.4f}" if psi is not None else "PSI n/a")
        row[0].legend(fontsize=8)
        if len(x):
            row[1].hexbin(x, y, gridsize=40, mincnt=1, bins="log")
        row[1].set_xlabel(f"champion {ca}")
        row[1].set_ylabel(f"challenger {cb}")
        row[1].set_title(f"Spearman {sp:.4f} (sample of {len(x):,})" if sp is not None else "Spearman n/a")
    fig.suptitle(f"{cfg.name} vs challenger {side.name.split('@', 1)[1]}, run {run_id}: "
                 f"{'passed' if passed else 'BLOCKED'}")
    fig.tight_layout()
    with tempfile.TemporaryDirectory(prefix="batchscore-compare-") as tmp:
        local = Path(tmp) / "comparison.png"
        fig.savefig(local, dpi=80)
        plt.close(fig)
        return state.write_file(side, run_id, "comparison.png", str(local))
