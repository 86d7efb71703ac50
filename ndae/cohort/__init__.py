"""The simulated multi-site ALS cohort: healthy anatomies + a disease, survival and site model
with known truth (docs/cohort.md)."""

from ndae.cohort.disease import DiseaseModel, PatientPhenotype, apply_disease
from ndae.cohort.generate import generate_cohort
from ndae.cohort.plan import CohortConfig
from ndae.cohort.source import read_healthy
from ndae.cohort.sites import Site
from ndae.cohort.survival import SurvivalModel, concordance_index, kaplan_meier_median, simulate_patients

__all__ = [
    "CohortConfig",
    "DiseaseModel",
    "PatientPhenotype",
    "Site",
    "SurvivalModel",
    "apply_disease",
    "concordance_index",
    "generate_cohort",
    "kaplan_meier_median",
    "read_healthy",
    "simulate_patients",
]
