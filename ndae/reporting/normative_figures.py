"""The normative model's figures where every subject's z_sem is at hand (`ndae evaluate`): centile
curves against age with the controls and patients on them, the held-out controls' z calibration,
and the patients' against the held-out controls' deviation scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CENTILES_FIGURE = "normative_centiles.png"
Z_FIGURE = "normative_z_calibration.png"
SCORES_FIGURE = "deviation_scores_by_group.png"


def normative_figures(out: Path, normative, covariates: pd.DataFrame, groups: pd.Series, z_sem: np.ndarray,
                      latent_z: np.ndarray, scores: pd.DataFrame, training: np.ndarray, held_out: np.ndarray,
                      score: str = "cosine") -> dict:
    """Write the three figures into `out`; returns their file names and what each shows.
    `training` / `held_out`: masks of the controls the model was fitted on / kept out of every fit."""
    from ndae.normative.centile_figure import most_age_dependent_feature, plot_centiles, plot_score_distributions, \
        plot_z_calibration

    out = Path(out)
    patients = (groups.astype(str).str.lower() == "als").to_numpy()
    feature = most_age_dependent_feature(normative)
    points = covariates[["age", "sex"]].assign(group=np.where(patients, "als", "control"), value=z_sem[:, feature])
    # held-out controls drawn as controls: the curves are fitted on the training controls only
    shown = points[patients | training | held_out]
    ages = covariates["age"].astype(float)
    plot_centiles(normative, out / CENTILES_FIGURE, feature=feature, site=None, points=shown,
                  age_range=(float(ages.min()) - 2, float(ages.max()) + 2))
    result = {"centiles": {"figure": CENTILES_FIGURE, "feature": (normative.feature_names or [])[feature]
                           if normative.feature_names else f"z_sem_{feature}"}}
    z_groups = {"training controls (in the fit)": latent_z[training]}
    if held_out.any():
        z_groups["held-out controls (in no fit)"] = latent_z[held_out]
    z_groups["patients"] = latent_z[patients]
    plot_z_calibration(z_groups, out / Z_FIGURE, "Deviation z of every z_sem feature against N(0, 1)")
    result["z_calibration"] = {"figure": Z_FIGURE, "groups": list(z_groups)}
    values = scores.set_index("subject")[score].reindex(covariates["subject"].astype(str)).to_numpy(float)
    reference = held_out if held_out.any() else training
    label = "held-out controls" if held_out.any() else "training controls (in the fit: optimistic)"
    plot_score_distributions({label: values[reference], "patients": values[patients]}, score,
                             out / SCORES_FIGURE, f"NDAE {score} score: patients against {label}")
    result["score_distributions"] = {"figure": SCORES_FIGURE, "score": score, "reference": label}
    return result


def normative_figure_lines(figures: dict | None) -> list[str]:
    """The report's section for `normative_figures`' result."""
    if not figures:
        return []
    return ["## Normative model: centiles, calibration, patients against controls", "",
            f"Centile curves (2.5, 25, 50, 75, 97.5 %) of {figures['centiles']['feature']}, the z_sem feature with the "
            "steepest normative age trend, for a new site; grey: controls, red: patients.", "",
            f"![Normative centiles against age]({figures['centiles']['figure']})", "",
            "Deviation z of every z_sem feature: a calibrated model gives controls it never saw N(0, 1).", "",
            f"![z calibration]({figures['z_calibration']['figure']})", "",
            f"![Patients against controls]({figures['score_distributions']['figure']})", ""]
