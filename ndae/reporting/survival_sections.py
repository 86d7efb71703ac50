"""The figure sections of `ndae survival`'s report.md: Kaplan–Meier by tertile of each score, and
the out-of-fold time-dependent AUC, Brier score and calibration."""

from __future__ import annotations


def survival_figure_lines(metrics: dict) -> list[str]:
    from ndae.survival.time_dependent import time_dependent_lines

    lines = []
    km = metrics.get("kaplan_meier") or {}
    if km:
        lines += ["## Kaplan–Meier by tertile of each deviation score", ""]
        for score, entry in km.items():
            p = entry.get("p_value")
            lines += [f"![Kaplan–Meier by tertile of {score} alone]({entry['figure']}) (log-rank p = "
                      + (f"{p:.2g}" if isinstance(p, (int, float)) else "–") + ")", ""]
    return lines + time_dependent_lines(metrics.get("time_dependent")) + [""]
