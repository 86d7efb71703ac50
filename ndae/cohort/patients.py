"""The patients' draws: severity, onset and phenotype, then the true risk and survival times."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.cohort.disease import DiseaseModel, draw_phenotype
from ndae.cohort.seeds import PATIENTS, copy_stream, survival_stream
from ndae.cohort.sites import Site
from ndae.cohort.survival import SurvivalModel

PHENOTYPE_COLUMNS = ("severity", "onset", "onset_region", "onset_side", "asymmetry")
SURVIVAL_COLUMNS = ("risk", "event_time", "censor_time", "time", "event")  # SurvivalModel.simulate's


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _draw_phenotypes(rows: pd.DataFrame, by_name: dict, rng: np.random.Generator, disease: DiseaseModel) -> list:
    phenotypes = []
    for _, row in rows.iterrows():
        site = by_name[row["site"]]
        concentration = 5.0  # Beta(m·5, (1 − m)·5): sd ≈ 0.2
        severity = rng.beta(site.severity_mean * concentration, (1 - site.severity_mean) * concentration)
        # Bulbar onset is more frequent in women and with older age (see docs/cohort.md).
        logit = _logit(site.bulbar_fraction) + 0.5 * (row["sex"] == "F") + 0.03 * (row["age"] - 60)
        bulbar = rng.uniform() < 1 / (1 + np.exp(-logit))
        phenotypes.append(draw_phenotype(rng, severity, bulbar, disease))
    return phenotypes


def draw_patients(
    cohort: pd.DataFrame, sites: list[Site], seed: int, disease: DiseaseModel, survival: SurvivalModel
) -> pd.DataFrame:
    """Severity, onset and phenotype per patient; true risk and times from the survival model.

    Each copy of the patient anatomies (`copy` column, see `plan.expand_patients`) draws from
    its own streams, patients in source order: copy 1 is the one-patient-per-anatomy cohort.
    """
    by_name = {site.name: site for site in sites}
    columns = {key: [np.nan if key in ("severity", "asymmetry") else ""] * len(cohort) for key in PHENOTYPE_COLUMNS}
    is_patient = (cohort["group"] == "als").to_numpy()
    copy = cohort["copy"].to_numpy()
    survival_columns = {}
    for c in np.unique(copy[is_patient]):
        here = np.flatnonzero(is_patient & (copy == c))
        phenotypes = _draw_phenotypes(cohort.iloc[here], by_name, copy_stream(seed, PATIENTS, copy=int(c)), disease)
        for position, phenotype in zip(here, phenotypes):
            for key in columns:
                columns[key][position] = getattr(phenotype, key)
        rows = cohort.iloc[here]
        severity = [columns["severity"][i] for i in here]
        bulbar = [columns["onset"][i] == "bulbar" for i in here]
        risk = survival.linear_predictor(severity, rows["age"], bulbar)
        times = survival.simulate(risk, survival_stream(seed, int(c)))
        for column in times.columns:
            survival_columns.setdefault(column, np.full(len(cohort), np.nan))[here] = times[column].to_numpy()
    for key, values in columns.items():
        cohort[key] = values
    for column in SURVIVAL_COLUMNS:
        cohort[column] = survival_columns.get(column, np.full(len(cohort), np.nan))
    return cohort
