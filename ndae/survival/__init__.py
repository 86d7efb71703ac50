"""Survival analysis of deviation scores: pooled and federated Cox, metrics, Kaplan–Meier."""

from ndae.survival.cox import CoxModel, hazard_ratio_table
from ndae.survival.federated_cox import (
    FederatedCoxFitter,
    site_covariate_moments,
    site_partial_likelihood_terms,
)
from ndae.survival.kaplan_meier import KaplanMeierResult, kaplan_meier_by_tertile
from ndae.survival.metrics import (
    CrossValidationResult,
    cross_validate_cox,
    harrell_c_index,
    integrated_brier,
    time_dependent_auc,
    uno_c_index,
)
from ndae.survival.oracle import oracle_c_index

__all__ = [
    "CoxModel",
    "CrossValidationResult",
    "FederatedCoxFitter",
    "KaplanMeierResult",
    "cross_validate_cox",
    "harrell_c_index",
    "hazard_ratio_table",
    "integrated_brier",
    "kaplan_meier_by_tertile",
    "oracle_c_index",
    "site_covariate_moments",
    "site_partial_likelihood_terms",
    "time_dependent_auc",
    "uno_c_index",
]
