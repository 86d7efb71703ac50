"""PCNtoolkit-style figures of a normative model: centile curves of one z_sem feature against age
(per sex) with controls and patients on them, and the z-scores of held-out controls against the
standard normal they should follow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.io import atomic_save_figure

CENTILES = (0.025, 0.25, 0.5, 0.75, 0.975)
_Z = {0.025: -1.959964, 0.25: -0.674490, 0.5: 0.0, 0.75: 0.674490, 0.975: 1.959964}


def _grid(model, ages: np.ndarray, sex: str, site: str | None) -> pd.DataFrame:
    frame = pd.DataFrame({"age": ages, "sex": sex})
    if site is not None:
        frame["site"] = site
    return frame


def most_age_dependent_feature(model, site: str | None = None) -> int:
    """The z_sem feature whose normative mean moves most over the model's age range, in units of
    its predictive sd: the one whose centile curves show the model's age trend best."""
    low, high = model.design.age_range
    ages = np.linspace(low, high, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, variance = model.predict(_grid(model, ages, "F", site))
    spread = (mean.max(axis=0) - mean.min(axis=0)) / np.sqrt(variance.mean(axis=0))
    return int(np.argmax(spread))


def plot_centiles(model, path: str | Path, feature: int | None = None, site: str | None = None,
                  points: pd.DataFrame | None = None, age_range: tuple[float, float] | None = None) -> dict:
    """Centile curves (2.5, 25, 50, 75, 97.5 %) of `feature` against age for women and men at
    `site` (None: a site the model has not seen, with the site variance), and `points` (columns
    age, sex, group, value) on top. Returns what was drawn."""
    from matplotlib.figure import Figure

    feature = most_age_dependent_feature(model, site) if feature is None else int(feature)
    name = (model.feature_names or [f"z_sem_{feature}"])[feature]
    low, high = age_range or model.design.age_range
    ages = np.linspace(low, high, 120)
    figure = Figure(figsize=(8, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, (sex, word) in zip(axes, (("F", "women"), ("M", "men"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the grid spans the whole declared range on purpose
            mean, variance = model.predict(_grid(model, ages, sex, site))
        m, s = mean[:, feature], np.sqrt(variance[:, feature])
        axis.fill_between(ages, m + _Z[0.025] * s, m + _Z[0.975] * s, color="tab:blue", alpha=0.12,
                          label="2.5–97.5 % centiles")
        axis.fill_between(ages, m + _Z[0.25] * s, m + _Z[0.75] * s, color="tab:blue", alpha=0.25,
                          label="25–75 % centiles")
        axis.plot(ages, m, color="tab:blue", lw=1.5, label="median (50 %)")
        if points is not None and len(points):
            sex_of = points["sex"].astype(str).str.upper().str[0]
            for group, colour, marker in (("control", "0.3", "o"), ("als", "tab:red", "^")):
                mine = points[(sex_of == sex) & (points["group"].astype(str).str.lower() == group)]
                axis.scatter(mine["age"], mine["value"], s=14, color=colour, marker=marker, alpha=0.8,
                             label=f"{'controls' if group == 'control' else 'patients (ALS)'} (n={len(mine)})")
        axis.set_xlabel("age (years)")
        axis.set_title(word, fontsize=9)
        axis.legend(fontsize=7, loc="best")
    axes[0].set_ylabel(f"{name} (latent units)")
    where = f"site {site}" if site is not None else "a new site"
    figure.suptitle(f"Normative model of {name} against age ({where})", fontsize=10)
    atomic_save_figure(path, figure)
    return {"feature": name, "site": site, "points": 0 if points is None else int(len(points))}


def plot_z_calibration(z_by_group: dict[str, np.ndarray], path: str | Path, title: str) -> None:
    """Histogram of deviation z per group (e.g. held-out controls, patients) with the N(0, 1)
    density a calibrated model gives healthy subjects."""
    from matplotlib.figure import Figure
    from scipy.stats import norm

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    values = np.concatenate([np.ravel(v) for v in z_by_group.values()]) if z_by_group else np.zeros(1)
    edges = np.linspace(max(-6.0, np.nanmin(values)), min(6.0, np.nanmax(values)) + 1e-9, 41)
    for (group, z), colour in zip(z_by_group.items(), ("0.4", "tab:red", "tab:green")):
        count = f"{z.shape[0]} subjects × {z.shape[1]} features" if np.ndim(z) == 2 else f"n={np.size(z)}"
        z = np.ravel(z)
        axis.hist(np.clip(z, edges[0], edges[-1]), bins=edges, density=True, alpha=0.45, color=colour,
                  label=f"{group} ({count}; mean {np.nanmean(z):.2f}, sd {np.nanstd(z):.2f})")
    grid = np.linspace(edges[0], edges[-1], 200)
    axis.plot(grid, norm.pdf(grid), color="black", lw=1.2, label="N(0, 1): calibrated controls")
    axis.set_xlabel("deviation z (units of the normative sd)")
    axis.set_ylabel("density")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)  # below: no bar hidden
    atomic_save_figure(path, figure)


def plot_score_distributions(scores: dict[str, np.ndarray], score: str, path: str | Path, title: str) -> None:
    """Patients' against controls' deviation score (one histogram each)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    values = np.concatenate([np.ravel(v) for v in scores.values()])
    edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=30)
    for (group, v), colour in zip(scores.items(), ("0.4", "tab:red", "tab:green")):
        v = np.ravel(v)
        axis.hist(v, bins=edges, density=True, alpha=0.45, color=colour,
                  label=f"{group} (n={v.size}, median {np.nanmedian(v):.6g})")
    axis.set_xlabel(f"{score} (deviation score)")
    axis.set_ylabel("density")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="best")
    atomic_save_figure(path, figure)
