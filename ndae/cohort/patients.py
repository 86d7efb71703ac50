"""The patients' draws: severity, onset and phenotype, then the true risk and survival times."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.cohort.disease import DiseaseModel, draw_phenotype
from ndae.cohort.seeds import PATIENTS, SURVIVAL, stream
from ndae.cohort.sites import Site
from ndae.cohort.survival import SurvivalModel

PHENOTYPE_COLUMNS = ("severity", "onset", "onset_region", "onset_side", "asymmetry")


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def draw_patients(
    cohort: pd.DataFrame, sites: list[Site], seed: int, disease: DiseaseModel, survival: SurvivalModel
) -> pd.DataFrame:
    """Severity, onset and phenotype per patient; true risk and times from the survival model."""
    rng = stream(seed, PATIENTS)
    by_name = {site.name: site for site in sites}
    columns = {key: [] for key in PHENOTYPE_COLUMNS}
    for _, row in cohort.iterrows():
        if row["group"] != "als":
            for key in columns:
                columns[key].append(np.nan if key in ("severity", "asymmetry") else "")
            continue
        site = by_name[row["site"]]
        concentration = 5.0  # Beta(m·5, (1 − m)·5): sd ≈ 0.2
        severity = rng.beta(site.severity_mean * concentration, (1 - site.severity_mean) * concentration)
        # Bulbar onset is more frequent in women and with older age (see docs/cohort.md).
        logit = _logit(site.bulbar_fraction) + 0.5 * (row["sex"] == "F") + 0.03 * (row["age"] - 60)
        bulbar = rng.uniform() < 1 / (1 + np.exp(-logit))
        phenotype = draw_phenotype(rng, severity, bulbar, disease)
        for key in columns:
            columns[key].append(getattr(phenotype, key))
    for key, values in columns.items():
        cohort[key] = values
    patients = cohort["group"] == "als"
    risk = survival.linear_predictor(
        cohort.loc[patients, "severity"], cohort.loc[patients, "age"], cohort.loc[patients, "onset"] == "bulbar"
    )
    times = survival.simulate(risk, stream(seed, SURVIVAL))
    for column in times.columns:
        cohort[column] = np.nan
        cohort.loc[patients, column] = times[column].to_numpy()
    return cohort
