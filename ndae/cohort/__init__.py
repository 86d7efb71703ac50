"""The simulated multi-site ALS cohort: healthy anatomies + a disease, survival and site model
with known truth (docs/cohort.md)."""

from ndae.cohort.disease import DiseaseModel, PatientPhenotype, apply_disease
from ndae.cohort.generate import generate_cohort
from ndae.cohort.plan import CohortConfig
from ndae.cohort.source import read_healthy
from ndae.cohort.sites import Site
from ndae.cohort.store import CohortFolderError, CohortMismatchError, IncompleteCohortError, check_complete
from ndae.cohort.survival import (
    SurvivalModel,
    concordance_index,
    kaplan_meier_median,
    redraw_survival,
    simulate_patients,
)

__all__ = [
    "CohortConfig",
    "CohortFolderError",
    "CohortMismatchError",
    "DiseaseModel",
    "IncompleteCohortError",
    "PatientPhenotype",
    "Site",
    "SurvivalModel",
    "apply_disease",
    "check_complete",
    "concordance_index",
    "generate_cohort",
    "kaplan_meier_median",
    "read_healthy",
    "redraw_survival",
    "simulate_patients",
]
