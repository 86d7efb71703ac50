"""Survival analysis of deviation scores: pooled and federated Cox, metrics, Kaplan–Meier.

The names below load on first use (PEP 562): a site answering a federated Cox query imports
`ndae.survival.federated_cox` in a fresh process for every message, and must not pay for
lifelines, scikit-survival and scipy.stats that the other submodules need.
"""

import importlib

_WHERE = {
    "CoxModel": "cox", "hazard_ratio_table": "cox",
    "FederatedCoxFitter": "federated_cox", "site_covariate_moments": "federated_cox",
    "site_partial_likelihood_terms": "federated_cox",
    "KaplanMeierResult": "kaplan_meier", "kaplan_meier_by_tertile": "kaplan_meier",
    "CrossValidationResult": "metrics", "cross_validate_cox": "metrics", "harrell_c_index": "metrics",
    "integrated_brier": "metrics", "time_dependent_auc": "metrics", "uno_c_index": "metrics",
    "oracle_c_index": "oracle",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
