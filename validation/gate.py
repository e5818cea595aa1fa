"""Judge a profile against the rules with Great Expectations 1.x (ephemeral context, in code).

The expensive part, the profile, is one Spark aggregation (:mod:`batchscore.validation.profile`). Here GX
asserts every rule over a one-row metrics table derived from it (one metric column per check,
``severity`` critical for ``block``, warning for ``warn``), and runs its KL-divergence expectation
over each drifted column's binned sample (:func:`batchscore.validation._drift.kl_sample`): no Spark job is
started, which keeps the gate cheap whatever the batch size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from batchscore.validation import _drift as D
from batchscore.validation.profile import Histogram, Profile, qkey
from batchscore.validation.rules import LevelName, RuleResult, Rules


@dataclass(frozen=True)
class Check:
    rule: str
    column: str | None
    level: LevelName
    observed: float | None
    min: float | None = None
    max: float | None = None
    expect: str | None = None  # the expectation in words, instead of the bounds
    detail: str | None = None  # the observation in words (:attr:`RuleResult.detail`)

    @property
    def expected(self) -> str:
        if self.expect is not None:
            return self.expect
        if self.min is not None and self.max is not None:
            return f"between {_fmt(self.min)} and {_fmt(self.max)}"
        return f">= {_fmt(self.min)}" if self.max is None else f"<= {_fmt(self.max)}"


def _fmt(v: float | None) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def absolute_checks(profile: Profile, rules: Rules) -> list[Check]:
    rows, cols = profile.rows, profile.columns
    rc = rules.row_count
    out = [
        Check(
            "row_count",
            None,
            rc.level,
            float(rows),
            float(math.floor(rc.expected * (1 - rc.tolerance))),
            float(math.ceil(rc.expected * (1 + rc.tolerance))),
        )
    ]
    nr = rules.null_rate
    out += [
        Check("null_rate", c, nr.level, (cols[c].nulls + cols[c].nans) / rows if rows else 0.0, 0.0, nr.max)
        for c in nr.columns
    ]
    out += finite_checks(profile, rules)
    if (qr := rules.quarantine) is not None:
        share = qr.quarantined / qr.rows if qr.rows else 0.0
        out.append(Check("quarantine_rate", None, qr.level, share, 0.0, qr.max,
                         detail=f"{qr.quarantined:,} of {qr.rows:,} input rows quarantined ({share:.2%})"))
    if (rg := rules.range) is not None:
        for c in rg.columns:
            if rg.min is not None:
                out.append(Check("range_min", c, rg.level, cols[c].min, rg.min, None))
            if rg.max is not None:
                out.append(Check("range_max", c, rg.level, cols[c].max, None, rg.max))
    for name, band in (("mean", rules.mean), ("std", rules.std)):
        if band is not None and (band.min is not None or band.max is not None):
            out += [Check(name, c, band.level, getattr(cols[c], name), band.min, band.max) for c in band.columns]
    if (qb := rules.quantiles) is not None:
        for c in qb.columns:
            out += [
                Check(f"quantile_{qkey(q)}", c, qb.level, cols[c].quantile(q), lo, hi)
                for q, lo, hi in qb.bands
            ]
    if (cs := rules.class_share) is not None:
        for c in cs.columns:
            n = cols[c].finite_rows(rows)
            out += [
                Check(f"class_share_{qkey(v)}", c, cs.level, cols[c].classes[qkey(v)] / n if n else None, lo, hi)
                for v, lo, hi in cs.shares
            ]
    return out


def finite_checks(profile: Profile, rules: Rules) -> list[Check]:
    """One ``finite`` check per output column: the number of ±inf scores, which must be 0.

    The profile's statistics leave ±inf out (so they stay finite and JSON), which would let such
    scores through every other rule: this one blocks them. Profiles without the counts have none.
    """
    rows, cols, fin = profile.rows, profile.columns, rules.finite
    out = []
    for c in fin.columns if fin.columns is not None else tuple(cols):
        pos, neg = cols[c].posinf, cols[c].neginf
        n = pos + neg
        share = f" ({n / rows:.2%}: {pos:,} +inf, {neg:,} -inf)" if n and rows else ""
        out.append(
            Check("finite", c, fin.level, n, 0, 0, expect="0", detail=f"{n:,} of {rows:,} scores are ±inf{share}")
        )
    return out


def relative_checks(
    profile: Profile, rules: Rules, ref: Profile | None
) -> tuple[list[Check], list[RuleResult]]:
    """Checks against the reference (mean/std moves, PSI); skipped entries say why not judged."""
    checks: list[Check] = []
    skipped: list[RuleResult] = []
    cols = profile.columns
    for name, band, fn in (("mean_shift", rules.mean, D.mean_shift), ("std_change", rules.std, D.std_change)):
        if band is None or band.max_move is None:
            continue
        for c in band.columns:
            rc = ref.column(c) if ref is not None else None
            if rc is None:
                skipped.append(_skip(name, c, band.level, f"<= {band.max_move}", "no reference"))
            else:
                checks.append(Check(name, c, band.level, fn(cols[c], rc), None, band.max_move))
    dr = rules.drift
    for c in dr.columns if dr else ():
        assert dr is not None
        why = drift_skip_reason(profile, ref, c, dr.min_rows)
        for level, t in (("warn", dr.psi_warn), ("block", dr.psi_block)):
            if t is None:
                continue
            if why:
                skipped.append(_skip("psi", c, level, f"<= {t}", why))  # type: ignore[arg-type]
            else:
                observed = D.psi(_hist(ref, c).counts, _hist(profile, c).counts)
                checks.append(Check("psi", c, level, observed, None, t))  # type: ignore[arg-type]
    return checks, skipped


def _hist(profile: Profile | None, c: str) -> Histogram:
    """``c``'s histogram, where :func:`drift_skip_reason` said there is one."""
    assert profile is not None and (col := profile.column(c)) is not None and col.hist is not None
    return col.hist


def drift_skip_reason(profile: Profile, ref: Profile | None, c: str, min_rows: int) -> str | None:
    if ref is None:
        return "no reference"
    rc = ref.column(c)
    if rc is None or rc.hist is None:
        return "the reference has no histogram for this column"
    n_ref, n = rc.finite_rows(ref.rows), profile.columns[c].finite_rows(profile.rows)
    if min(n_ref, n) < min_rows:
        return f"fewer than min_rows={min_rows} values (candidate {n}, reference {n_ref})"
    if profile.columns[c].kl is None:
        return "the candidate was not counted over the reference's bins"
    return None


def _skip(rule: str, column: str, level: LevelName, expected: str, why: str) -> RuleResult:
    return RuleResult(rule, column, level, True, None, expected, skipped=why)


def evaluate(profile: Profile, rules: Rules, reference: Profile | None = None) -> list[RuleResult]:
    """Every rule's result, one per (rule, output column, level); skipped drift rules say why."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    rel, skipped = relative_checks(profile, rules, reference)
    checks = absolute_checks(profile, rules) + rel
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # One asset and one batch definition serve every frame (the frame is a batch parameter): each
    # asset or definition added re-serializes the context's whole config.
    asset = ctx.data_sources.add_pandas("batchscore").add_dataframe_asset("profile")
    whole = asset.add_batch_definition_whole_dataframe("run")

    def run(
        asset: str, frame: Any, expectations: list[Any], result_format: Literal["BOOLEAN_ONLY", "SUMMARY"] = "SUMMARY"
    ) -> list[Any]:
        batch = whole.get_batch(batch_parameters={"dataframe": frame})
        res = batch.validate(
            gx.ExpectationSuite(name=f"batchscore_{asset}", expectations=expectations), result_format=result_format
        )
        for r in res.results:
            info = r.exception_info or {}
            infos = [info] if "raised_exception" in info else list(info.values())
            for i in infos:
                if isinstance(i, dict) and i.get("raised_exception"):
                    raise RuntimeError(f"validation check on {asset} errored: {i.get('exception_message')}")
        return list(res.results)

    results: list[RuleResult] = []
    frame = pd.DataFrame({f"m{i}": [_nan(k.observed)] for i, k in enumerate(checks)})
    exps = [
        gxe.ExpectColumnValuesToBeBetween(column=f"m{i}", min_value=k.min, max_value=k.max, severity=_severity(k.level))  # type: ignore[arg-type]
        for i, k in enumerate(checks)
    ]
    judged = run("metrics", frame, exps, "BOOLEAN_ONLY") if checks else []
    by_column = {r.expectation_config.kwargs["column"]: r for r in judged}
    for i, k in enumerate(checks):
        r = by_column[f"m{i}"]
        # A missing metric (every score NaN: no min, no PSI) is a failure, never a pass.
        ok = k.observed is not None and not math.isnan(k.observed) and bool(r.success)
        results.append(RuleResult(k.rule, k.column, k.level, ok, _plain(k.observed), k.expected, detail=k.detail))
    results += _kl_results(profile, rules, reference, run, gxe)
    return results + skipped


def _kl_results(
    profile: Profile, rules: Rules, ref: Profile | None, run: Any, gxe: Any
) -> list[RuleResult]:
    import pandas as pd

    dr, out = rules.drift, []
    for i, c in enumerate(dr.columns if dr else ()):
        assert dr is not None
        levels = [(lv, t) for lv, t in (("warn", dr.kl_warn), ("block", dr.kl_block)) if t is not None]
        why = drift_skip_reason(profile, ref, c, dr.min_rows)
        if why:
            out += [_skip("kl", c, lv, f"<= {t}", why) for lv, t in levels]  # type: ignore[arg-type]
            continue
        cand, rc = profile.columns[c], ref.column(c) if ref is not None else None
        assert rc is not None and cand.kl is not None
        part = D.kl_partition(rc, cand.kl.edges)
        h = dr.tail_holdout
        exps = [
            gxe.ExpectColumnKLDivergenceToBeLessThan(
                column="x",
                partition_object=part,
                threshold=t,
                tail_weight_holdout=h,
                internal_weight_holdout=h if D.has_zero_bins(part) else 0.0,
                severity=_severity(lv),
            )
            for lv, t in levels
        ]
        if not exps:
            continue
        frame = pd.DataFrame({"x": D.kl_sample(cand)})
        by_threshold = {float(r.expectation_config.kwargs["threshold"]): r for r in run(f"kl_{i}", frame, exps)}
        for lv, t in levels:
            r = by_threshold[float(t)]
            obs = (r.result or {}).get("observed_value")
            obs = None if obs is None or not math.isfinite(float(obs)) else round(float(obs), 6)
            out.append(RuleResult("kl", c, lv, obs is not None and bool(r.success), obs, f"<= {t}"))  # type: ignore[arg-type]
    return out


def _severity(level: str) -> str:
    return "critical" if level == "block" else "warning"


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _plain(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/NaN
    return float(f"{v:.7g}") if isinstance(v, float) else v


def decision(results: list[RuleResult]) -> tuple[bool, list[RuleResult], list[RuleResult]]:
    """(passed, blocking failures, warnings): any ``block`` failure rejects the candidate."""
    blocks = [r for r in results if not r.passed and r.level == "block"]
    warns = [r for r in results if not r.passed and r.level == "warn"]
    return (not blocks, blocks, warns)


@dataclass(frozen=True)
class Judgement:
    """The gate's verdict on one profile: pure data, no I/O (presented by the validate step)."""

    results: tuple[RuleResult, ...]
    blocking: tuple[RuleResult, ...]
    warnings: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return not self.blocking

    @property
    def psi(self) -> dict[str, float | None]:
        """PSI per drifted column (for the histogram titles)."""
        return {r.column: r.observed for r in self.results if r.rule == "psi" and not r.skipped and r.column}


def judge(profile: Profile, rules: Rules, reference: Profile | None = None) -> Judgement:
    """Every rule judged against ``profile`` (and ``reference`` for the drift rules); the verdict."""
    results = evaluate(profile, rules, reference)
    _, blocks, warns = decision(results)
    return Judgement(tuple(results), tuple(blocks), tuple(warns))
