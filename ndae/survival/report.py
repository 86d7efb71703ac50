"""`ndae survival`'s report.md: its verdict first, each clause chosen by the numbers in metrics.json.

Does the Cox model rank patients better than chance (the optimism-corrected C and its interval on
left-out patients against 0.5), and do the deviation scores add to the clinical covariates (the
cross-validated C of `clinical+deviation` against `clinical`, fold by fold on the same folds)?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndae.io import atomic_write_text

__all__ = ["added_clause", "ranking_clause", "survival_verdict", "write_survival_report"]


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)


def ranking_clause(c: dict) -> str:
    """The validated C against chance (0.5), read from the interval on left-out patients."""
    if not _finite(c.get("corrected"), c.get("lower"), c.get("upper")):
        return "How well the model ranks patients: no validated C could be computed."
    interval = (f"optimism-corrected C {c['corrected']:.3f} (95 % interval on left-out patients "
                f"{c['lower']:.3f}–{c['upper']:.3f})")
    if c["lower"] > 0.5:
        return f"The Cox model ranks patients better than chance: {interval}."
    if c["upper"] < 0.5:
        return f"The Cox model ranks patients worse than chance: {interval}."
    return f"The Cox model's ranking is not distinguishable from chance: {interval}, the interval includes 0.5."


def added_clause(cross_validation: dict | None) -> str:
    """Do the deviation scores add to the clinical covariates? Paired fold by fold (same folds)."""
    cv = cross_validation or {}
    if "skipped" in cv:
        return f"What the deviation scores add to the clinical covariates: not cross-validated ({cv['skipped']})."
    rows = cv.get("per_fold") or []
    by_model: dict[str, dict] = {}
    for row in rows:
        by_model.setdefault(row.get("model"), {})[row.get("fold")] = row.get("harrell_c")
    clinical, full = by_model.get("clinical"), by_model.get("clinical+deviation")
    if not clinical or not full:
        return ("What the deviation scores add to the clinical covariates: not measured (no clinical covariate "
                "varies, so there is no covariates-only model).")
    differences = [full[f] - clinical[f] for f in sorted(clinical) if f in full and _finite(full[f], clinical[f])]
    if not differences:
        return "What the deviation scores add to the clinical covariates: no fold gave both C-indices."
    k, mean = len(differences), float(np.mean(differences))
    higher = sum(d > 0 for d in differences)
    numbers = f"mean difference in cross-validated Harrell's C {mean:+.3f} over {k} folds"
    if higher == k:
        return f"The deviation scores add to the clinical covariates in every fold: {numbers}."
    if higher == 0:
        return (f"The deviation scores add nothing to the clinical covariates: the C is lower with them in every "
                f"fold ({numbers}).")
    return (f"What the deviation scores add to the clinical covariates is not distinguishable from nothing: C higher "
            f"with them in {higher} of {k} folds ({numbers}).")


def survival_verdict(metrics: dict) -> list[str]:
    return [f"**Verdict.** {ranking_clause(metrics.get('harrell_c') or {})}",
            f"- {added_clause(metrics.get('cross_validation'))}"]


def write_survival_report(out_dir: str | Path, metrics: dict) -> Path:
    """report.md: the verdict, then what was fitted (the figures' sections follow it)."""
    c = metrics.get("harrell_c") or {}
    lines = ["# Survival analysis", "", *survival_verdict(metrics), "",
             f"Cox model on {metrics.get('n')} patients ({metrics.get('events')} events) with "
             f"{', '.join(metrics.get('covariates') or [])}"
             + (f", stratified by {', '.join(metrics['strata'])}" if metrics.get("strata") else "")
             + f" (`cox.json`, `hazard_ratios.csv`, `metrics.json`). C in-sample {c.get('apparent', float('nan')):.3f}, "
             f"validated by {c.get('n_boot')} bootstrap refits.", ""]
    summary = (metrics.get("cross_validation") or {}).get("summary") or {}
    if summary:
        lines += ["| model (cross-validated) | Harrell's C | Uno's C |", "|---|---|---|"]
        lines += [f"| {model} | {row.get('harrell_c', '–')} | {row.get('uno_c', '–')} |" for model, row in summary.items()]
        lines.append("")
    from ndae.reporting.survival_sections import survival_figure_lines

    lines += survival_figure_lines(metrics)
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    from ndae.reporting.html import write_report_html

    write_report_html(path)
    return path
