"""Figures of the pipeline-modes benchmark, drawn from the per-seed table alone (so `--render-only`
redraws them from results/modes_per_seed.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.modes.names import CENTRAL, POOLED, SCORES, dp_mode
from ndae.evaluation.paired import t_interval


def figure_c_vs_epsilon(seeds: pd.DataFrame, epsilons: list[float], folds: int, path: Path) -> None:
    """Harrell's C of each NDAE score vs the DP runs' per-site ε (∞: the non-private federated run), with
    the centralised run and the CV Cox model on the true risk as horizontal references."""
    from matplotlib.figure import Figure

    from ndae.io import atomic_save_figure

    finite = sorted(epsilons)
    x_inf = max(finite) * 3 if finite else 1.0
    figure = Figure(figsize=(4.2 * len(SCORES), 4))
    axes = figure.subplots(1, len(SCORES), sharey=True)
    for axis, score in zip(np.atleast_1d(axes), SCORES):
        column = f"{score}_harrell_c"
        xs, ms, ss = [], [], []
        for x, mode in [*[(e, dp_mode(e)) for e in finite], (x_inf, POOLED)]:
            mean, sd, _, _ = t_interval(seeds.loc[seeds["mode"] == mode, column].to_numpy(float))
            xs.append(x), ms.append(mean), ss.append(0.0 if not np.isfinite(sd) else sd)
        axis.errorbar(xs[:-1], ms[:-1], yerr=ss[:-1], marker="o", capsize=4, color="tab:blue", label="federated, DP at ε")
        axis.errorbar(xs[-1:], ms[-1:], yerr=ss[-1:], marker="s", capsize=4, color="tab:purple",
                      linestyle="none", label="federated, no DP (ε = ∞)")
        for mode, colour, style, label in ((CENTRAL, "tab:green", "--", "centralised"),):
            mean, sd, _, _ = t_interval(seeds.loc[seeds["mode"] == mode, column].to_numpy(float))
            if np.isfinite(mean):
                axis.axhline(mean, color=colour, linestyle=style, label=label)
                if np.isfinite(sd):
                    axis.axhspan(mean - sd, mean + sd, color=colour, alpha=0.12)
        oracle, _, _, _ = t_interval(seeds.loc[seeds["mode"] == POOLED, "true_risk_harrell_c"].to_numpy(float))
        if np.isfinite(oracle):
            axis.axhline(oracle, color="tab:red", linestyle=":", label="oracle (Cox on true risk, CV)")
        axis.axhline(0.5, color="grey", linewidth=0.8, label="chance")
        axis.set_xscale("log")
        axis.set_xticks(xs)
        axis.set_xticklabels([f"{e:g}" for e in finite] + ["∞"])
        axis.minorticks_off()
        axis.set_xlabel("ε per site (target)")
        axis.set_title(f"NDAE {score}")
        axis.set_ylim(0.2, 0.9)
    np.atleast_1d(axes)[0].set_ylabel(f"Harrell's C, {folds}-fold CV (mean ± sd over cohort seeds)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    atomic_save_figure(path, figure)
