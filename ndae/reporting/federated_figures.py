"""Figure sections of the federated run's `report.md`: the DAE's training loss per round and site,
the normative model's centile curves, and the survival model's time-dependent accuracy — each
drawn from what the server holds, and saying what it cannot draw without rows it never gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndae.io import atomic_save_figure

FIGURES = "figures"


def training_loss_lines(run_dir: Path, metrics: list[dict]) -> list[str]:
    """`figures/training_loss.png`: each site's and the aggregated training loss per round (the
    server's `metrics.jsonl`); private sites keep their loss, and the text says so."""
    from matplotlib.figure import Figure

    rounds = [m for m in metrics if m.get("phase") == "dae"]
    if not rounds:
        return []
    sites = sorted({s for m in rounds for s in (m.get("train_loss") or {})})
    mean = [(m["round"], m.get("train_loss_mean")) for m in rounds if m.get("train_loss_mean") is not None]
    if not sites and not mean:
        return ["", "Training-loss curve: not drawn, every site kept its training loss (private sites send weights "
                "and step counts only)."]
    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    for site in sites:
        points = [(m["round"], m["train_loss"][site]) for m in rounds if site in (m.get("train_loss") or {})]
        axis.plot(*zip(*points), marker="o", ms=3, lw=1, label=f"site {site}")
    if mean:
        axis.plot(*zip(*mean), color="black", lw=2, label="aggregated (weighted by examples)")
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    axis.set_xlabel("federated round")
    axis.set_ylabel("diffusion training loss (MSE of predicted noise)")
    axis.set_title("DAE training loss per round and site", fontsize=10)
    axis.legend(fontsize=8, loc="best")
    path = Path(run_dir) / FIGURES / "training_loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(path, figure)
    return ["", f"![DAE training loss per round and site]({FIGURES}/training_loss.png)"]


def normative_lines(run_dir: Path, summary: dict) -> list[str]:
    """Centile curves of the fitted normative model (`normative/`) against age. The subjects'
    z_sem never leave their sites, so no subject is drawn on them; the text says where they are."""
    from ndae.errors import NdaeError
    from ndae.normative import NormativeModel
    from ndae.normative.centile_figure import plot_centiles

    folder = Path(run_dir) / "normative"
    try:
        model = NormativeModel.load(folder)
    except (NdaeError, OSError, ValueError, KeyError) as error:
        return ["", f"Normative centile curves: not drawn ({str(error).splitlines()[0][:200]})."]
    path = Path(run_dir) / FIGURES / "normative_centiles.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    site = (summary.get("normative") or {}).get("sites", [None])[0]
    drawn = plot_centiles(model, path, site=site)
    return ["", f"![Normative centiles of {drawn['feature']} against age]({FIGURES}/normative_centiles.png)", "",
            f"Centile curves of {drawn['feature']}, the z_sem feature with the steepest normative age trend, at site "
            f"{site}. The subjects' z_sem stay at their sites, so no control or patient is drawn on the curves; the "
            "held-out controls' z calibration and the patients-vs-controls score distributions below come from "
            "counts the sites sent, never a subject's score."]


def survival_figure_lines(survival: dict) -> list[str]:
    """Time-dependent AUC, Brier score and calibration where the server held the rows (pooled
    mode); in federated mode the reason they are absent."""
    from ndae.survival.time_dependent import time_dependent_lines

    if survival.get("mode") == "pooled":
        return time_dependent_lines(survival.get("time_dependent"), "survival")
    return ["", "### Time-dependent AUC, Brier score and calibration", "",
            "Not computed in federated mode: they need each patient's predicted survival and follow-up at one place, "
            "and no patient row leaves a site here; the sites send sums only (the within-site C-index and the "
            "Kaplan–Meier counts above). Run with survival-mode \"pooled\" to get them."]
