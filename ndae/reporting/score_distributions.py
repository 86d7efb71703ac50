"""The federated report's patients-vs-controls score distributions and held-out controls' z
calibration, from the counts summed over the sites (`ndae.federation.server.score_distributions`):
one figure, a reading computed from the numbers, and why what is absent is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndae.io import atomic_save_figure

__all__ = ["FIGURE", "score_distribution_figure", "score_distribution_lines", "tail_share"]

FIGURE = "figures/score_distributions.png"
# per score: its label, and whether a higher value is less typical (cosine: lower is)
SCORES = {"mahalanobis": ("Mahalanobis distance of z_sem from its normative expectation (SD units, log scale)", True),
          "cosine": ("1 − cosine similarity to the normative z_sem (log scale)", False)}
WITHHELD = ("in a private run these counts are row-level on a small site, so a site sends them only where its "
            "policy declares counts public (node config public-counts), as with the Kaplan–Meier counts")


def tail_share(control: np.ndarray, patient: np.ndarray, higher_is_atypical: bool) -> tuple[float, int] | None:
    """(share of patients beyond the controls' 95th-percentile bin, that bin's index) on the
    atypical side; None without controls or patients. Approximate to the bin."""
    control, patient = np.asarray(control, float), np.asarray(patient, float)
    if control.sum() <= 0 or patient.sum() <= 0:
        return None
    if not higher_is_atypical:  # the atypical tail is the low end: read the bins from the top
        share, index = tail_share(control[::-1], patient[::-1], True)
        return share, len(control) - 1 - index
    index = int(np.searchsorted(np.cumsum(control) / control.sum(), 0.95 - 1e-12))
    return float(patient[index + 1:].sum() / patient.sum()), index


def score_distribution_lines(run_dir: Path, result: dict | None) -> list[str]:
    lines = ["", "## Patients vs controls: score distributions and held-out calibration", ""]
    if not result:
        return lines + ["Not computed in this run."]
    sites, withheld = result.get("sites", []), result.get("withheld", [])
    if withheld:
        why = WITHHELD if result.get("private") else "they did not send them"
        lines.append(f"Withheld by site(s) {', '.join(withheld)}: {why}.")
    if result.get("malformed"):
        lines.append(f"Counts of site(s) {', '.join(result['malformed'])} were malformed and left out.")
    counts, edges = result["counts"], {s: np.asarray(e, float) for s, e in result["edges"].items()}
    n_controls = {s: float(np.sum(c)) for s, c in counts["control"].items()}
    if not sites or not any(n_controls.values()):
        return lines + ["No site sent score counts: no distribution is drawn."]
    held = (f"each control scored against a normative model fitted without its fold ({result['folds']} folds of every "
            "site's controls; the DAE was trained on all of them)" if result.get("controls_held_out")
            else "controls scored against the model fitted on them (in sample)")
    first = next(iter(counts["control"]))
    lines += [f"Histogram counts summed over {len(sites)} site(s) ({', '.join(sites)}): "
              f"{n_controls[first]:.0f} controls, {float(np.sum(counts['patient'][first])):.0f} patients; {held}. "
              "No score left a site, only counts per bin on edges the server fixed from the latent dimension; the "
              "first and last bins are open-ended.", ""]
    path = Path(run_dir) / FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(path, score_distribution_figure(counts, edges))
    lines += [f"![Patients vs controls: deviation score distributions]({FIGURE})", ""]
    for score, (label, higher) in SCORES.items():
        if score not in counts["control"]:
            continue
        reading = tail_share(counts["control"][score], counts["patient"][score], higher)
        if reading is None:
            continue
        share, index = reading
        if index == (len(edges[score]) - 2 if higher else 0):
            lines.append(f"- {score}: the controls' 95th percentile lies in the open-ended end bin: no patients' "
                         "share beyond it can be read from these bins.")
            continue
        bound = edges[score][index + 1] if higher else edges[score][index]
        side = f"above {bound:.3g}" if higher else f"below {bound:.4g}"
        lines.append(f"- {score}: about {100 * share:.0f} % of patients lie beyond the controls' 95th percentile "
                     f"({side}, approximate to the bin; 5 % if patients were like controls).")
    lines += _calibration_lines(result.get("calibration") or {})
    return lines


def _calibration_lines(calibration: dict) -> list[str]:
    lines = ["", "Held-out controls' z calibration (each latent dimension's z, all dimensions pooled):", ""]
    if "not_computed" in calibration:
        return lines + [f"Not computed: {calibration['not_computed']}."]
    lines += ["| band | share of held-out z | expected if calibrated |", "|---|---|---|"]
    for band, expected in (("1", 68.27), ("2", 95.45), ("3", 99.73)):
        lines.append(f"| abs z ≤ {band} | {100 * calibration[f'within_{band}']:.1f} % | {expected:.1f} % |")
    within = calibration["within_2"]
    verdict = ("close to calibrated" if abs(within - 0.9545) <= 0.05 else
               "too narrow: the model's predictive spread is too small for new controls" if within < 0.9545 else
               "too wide: the model's predictive spread is larger than new controls need")
    return lines + ["", f"{calibration['values']:.0f} z-values; within ±2 the held-out controls are {verdict}."]


def score_distribution_figure(counts: dict, edges: dict):
    """One panel per score: each group's share of subjects per bin, overlaid."""
    from matplotlib.figure import Figure

    scores = [s for s in SCORES if s in counts["control"]]
    figure = Figure(figsize=(6.0 * len(scores), 4))
    axes = np.atleast_1d(figure.subplots(1, len(scores)))
    for axis, score in zip(axes, scores):
        label, higher = SCORES[score]
        # cosine: drawn as 1 − cosine, increasing to the right like the distance (less typical)
        x = edges[score] if higher else (1.0 - edges[score])[::-1]
        for group, colour in (("control", "tab:blue"), ("patient", "tab:red")):
            c = np.asarray(counts[group][score], float)
            if c.sum() <= 0:
                continue
            share = 100 * (c if higher else c[::-1]) / c.sum()
            axis.stairs(share, x, label=f"{group}s (n = {c.sum():.0f})", color=colour, fill=True, alpha=0.35)
            axis.stairs(share, x, color=colour, lw=1.2)
        axis.set_xscale("log")  # both scores' edges are geometric
        axis.set_xlabel(label)
        axis.set_ylabel("share of the group per bin (%)")
        axis.set_title(f"{score}: patients vs controls", fontsize=10)
        axis.legend(fontsize=8, loc="best")
    return figure
