"""Survival figures the field expects: Kaplan–Meier curves with censor marks and an at-risk table,
time-dependent AUC, Brier score over time and a calibration plot at a horizon.

Every figure is a bare matplotlib `Figure` (no pyplot state, Agg) saved atomically; titles say what
the curves are and what the groups were split on, axes carry units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ndae.io import atomic_save_figure

GROUP_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple")


def plot_kaplan_meier(curves: Sequence[tuple[str, object]], path: str | Path, title: str, split_on: str,
                      ci_show: bool = True) -> None:
    """KM curves (label, fitted lifelines KaplanMeierFitter) with '|' censor marks and the
    at-risk / censored / events table under the axis. `split_on` says in words what the groups
    were formed from; it goes in the title so the figure reads on its own."""
    from lifelines.plotting import add_at_risk_counts
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5.2))
    axis = figure.subplots()
    fitters = []
    for (label, fitter), colour in zip(curves, GROUP_COLOURS):
        fitter.plot_survival_function(ax=axis, color=colour, ci_show=ci_show, show_censors=True,
                                      censor_styles={"marker": "|", "ms": 7, "mew": 1.2}, label=label)
        fitters.append(fitter)
    axis.set_xlabel("time since scan (months)")
    axis.set_ylabel("survival probability")
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{title}\ngroups: {split_on}", fontsize=9)
    axis.legend(title="group (| = censored)", fontsize=8, title_fontsize=8, loc="upper right", framealpha=0.85)
    if fitters:
        # short row labels: the legend already names the groups in full
        add_at_risk_counts(*fitters, ax=axis, fig=figure, labels=[label.split(" (")[0] for label, _ in curves])
    atomic_save_figure(path, figure)


def plot_time_dependent_auc(times: np.ndarray, auc_by_model: dict[str, np.ndarray], mean_by_model: dict[str, float],
                            path: str | Path, subtitle: str) -> None:
    """Cumulative/dynamic AUC(t): can the risk tell who dies by t from who is still alive after t?"""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    for (name, auc), colour in zip(auc_by_model.items(), GROUP_COLOURS):
        axis.plot(times, auc, marker="o", color=colour, label=f"{name} (mean {mean_by_model[name]:.3f})")
    axis.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (0.5)")
    axis.set_xlabel("time t (months)")
    axis.set_ylabel("cumulative/dynamic AUC(t)")
    axis.set_ylim(0.3, 1.0)
    axis.set_title(f"Time-dependent AUC ({subtitle})", fontsize=10)
    axis.legend(fontsize=8, loc="best")
    atomic_save_figure(path, figure)


def plot_brier(times: np.ndarray, brier_by_model: dict[str, np.ndarray], integrated_by_model: dict[str, float],
               path: str | Path, subtitle: str) -> None:
    """Brier score over time (IPCW); the Kaplan–Meier curve, the same survival for everyone, is the
    reference a model has to beat."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    colours = iter(GROUP_COLOURS)  # the models keep their colours of the AUC figure
    for name, brier in brier_by_model.items():
        reference = name.startswith("Kaplan–Meier")
        axis.plot(times, brier, marker="" if reference else "o", ls="--" if reference else "-",
                  color="black" if reference else next(colours),
                  label=f"{name} (integrated {integrated_by_model[name]:.3f})")
    axis.axhline(0.25, color="grey", lw=0.8, ls=":", label="coin flip (0.25)")
    axis.set_xlabel("time t (months)")
    axis.set_ylabel("Brier score at t (lower is better)")
    axis.set_ylim(0, max(0.3, max((float(np.nanmax(b)) for b in brier_by_model.values()), default=0.3) * 1.1))
    axis.set_title(f"Brier score ({subtitle})", fontsize=10)
    # below the axis: Brier curves rise and fall anywhere in the plot
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    atomic_save_figure(path, figure)


def plot_calibration(bins: list[dict], horizon: float, path: str | Path, model: str, subtitle: str) -> None:
    """Predicted vs observed survival at `horizon`: one point per group of patients with similar
    predicted survival, observed = the group's Kaplan–Meier estimate with its 95 % CI."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    predicted = np.array([b["predicted"] for b in bins])
    observed = np.array([b["observed"] for b in bins])
    lower = np.array([b["observed_lower"] for b in bins])
    upper = np.array([b["observed_upper"] for b in bins])
    axis.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    axis.errorbar(predicted, observed, yerr=[np.clip(observed - lower, 0, None), np.clip(upper - observed, 0, None)],
                  fmt="o", color="tab:blue", capsize=3, label=f"{model}: groups by predicted survival\n"
                                                              "(observed: Kaplan–Meier, 95% CI)")
    for b in bins:
        axis.annotate(f"n={b['n']}", (b["predicted"], b["observed"]), textcoords="offset points", xytext=(5, -10),
                      fontsize=7)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel(f"predicted survival at {horizon:.0f} months")
    axis.set_ylabel(f"observed survival at {horizon:.0f} months")
    axis.set_title(f"Calibration at {horizon:.0f} months ({subtitle})", fontsize=10)
    axis.legend(fontsize=8, loc="upper left")
    atomic_save_figure(path, figure)
