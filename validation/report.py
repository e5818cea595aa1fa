"""Human-facing output of the gate: the rule table and a PNG of candidate vs reference histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchscore.validation.profile import ColumnProfile, Profile
from batchscore.validation.rules import RuleResult

MAX_PLOTTED_COLUMNS = 12
PANEL_INCHES = 3.2  # the height of one column's panel


def format_table(results: list[RuleResult]) -> str:
    """One line per rule: name, column, level, ok/WARN/FAIL/skip, observed and expected."""
    head = f"{'rule':<18} {'column':<12} {'level':<6} {'result':<6} {'observed':<14} expected"
    lines = [head, "-" * len(head)]
    for r in results:
        mark = "skip" if r.skipped else "ok" if r.passed else ("FAIL" if r.level == "block" else "WARN")
        obs = "-" if r.observed is None else (f"{r.observed:.6g}" if isinstance(r.observed, float) else str(r.observed))
        exp = r.expected + (f"  ({r.skipped})" if r.skipped else "")
        lines.append(f"{r.rule:<18} {str(r.column or '-'):<12} {r.level:<6} {mark:<6} {obs:<14} {exp}")
    return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _display_edges(cuts: Sequence[float], *cols: ColumnProfile | None) -> list[float]:
    lows = [c.min for c in cols if c is not None and c.min is not None and _finite(c.min)]
    highs = [c.max for c in cols if c is not None and c.max is not None and _finite(c.max)]
    pad = max(abs(cuts[-1] - cuts[0]) / max(len(cuts), 1), abs(cuts[0]) * 1e-3, 1e-3)
    lo = min(lows) if lows and min(lows) < cuts[0] else cuts[0] - pad
    hi = max(highs) if highs and max(highs) > cuts[-1] else cuts[-1] + pad
    return [lo, *cuts, hi]


def _density(counts: Sequence[int], edges: list[float]) -> list[float]:
    total = sum(counts) or 1
    return [n / total / (b - a) for n, a, b in zip(counts, edges[:-1], edges[1:], strict=True)]


def _margins(n: int) -> dict[str, float]:
    """Subplot parameters for ``n`` stacked panels: room, in inches, for the figure's title, each
    panel's title, tick labels and x label, and the y labels."""
    height = PANEL_INCHES * n
    top, bottom, gap = 0.75, 0.55, 0.95  # suptitle + first title; x label + ticks; both between panels
    panel = (height - top - bottom - gap * (n - 1)) / n
    return {"left": 0.9 / 8, "right": 1 - 0.2 / 8, "top": 1 - top / height, "bottom": bottom / height,
            "hspace": gap / panel}


def plot_histograms(path: Path, profile: Profile, reference: Profile | None,
                    psi: dict[str, float | None], *, title: str, thresholds: str) -> Path:
    """Write ``path``: per output column, the reference (filled) and candidate (line) densities over
    the frozen bins, with the PSI in each panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a column is drawn over finite cuts only (a profile's are; this keeps odd ones from crashing the plot)
    cols = [c for c, s in profile.columns.items()
            if s.hist is not None and s.hist.cuts and all(map(_finite, s.hist.cuts))][:MAX_PLOTTED_COLUMNS]
    n = max(len(cols), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, PANEL_INCHES * n), squeeze=False)
    fig.subplots_adjust(**_margins(n))  # fixed margins: tight_layout would draw the whole figure once more
    for ax, c in zip(axes[:, 0], cols, strict=False):
        cand = profile.columns[c]
        ref = reference.column(c) if reference is not None else None
        assert cand.hist is not None
        cuts = cand.hist.cuts
        edges = _display_edges(cuts, cand, ref)
        if ref is not None and ref.hist is not None and ref.hist.cuts == cuts:
            ax.stairs(_density(ref.hist.counts, edges), edges, fill=True, alpha=0.35, color="tab:blue",
                      label=f"reference ({sum(ref.hist.counts):,} rows)")
        ax.stairs(_density(cand.hist.counts, edges), edges, color="tab:red", linewidth=2,
                  label=f"candidate ({sum(cand.hist.counts):,} rows)")
        p = psi.get(c)
        ax.set_title(
            f"{c}: PSI {p:.4f} ({thresholds})" if p is not None else f"{c}: PSI n/a (no reference: first run or reset)"
        )
        ax.set_xlabel(c)
        ax.set_ylabel("density")
        ax.legend(loc="upper right", fontsize=8)
    if not cols:
        axes[0, 0].text(0.5, 0.5, "no finite scores to plot", ha="center", va="center")
    fig.suptitle(title, y=1 - 0.12 / (PANEL_INCHES * n))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def stack_pngs(base: bytes, extra: list[bytes]) -> bytes:
    """``base`` with the ``extra`` PNG images appended below it (white padding to the widest)."""
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in [base, *extra]]
    width = max(i.width for i in images)
    out = Image.new("RGB", (width, sum(i.height for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
