"""The modes and scores the benchmark compares, spelled once."""

from __future__ import annotations

SCORES = ("cosine", "mahalanobis", "mean_abs_z")
FEATURES = (*SCORES, "true_risk")  # every CV'd feature: the NDAE scores and the oracle's true risk
CENTRAL, POOLED, FEDCOX = "centralised", "federated, pooled Cox", "federated, federated Cox"
ORACLE = "oracle (true risk)"


def dp_mode(epsilon: float) -> str:
    return f"DP ε={epsilon:g}"


def all_modes(epsilons) -> list[str]:
    """Every mode in table order."""
    return [CENTRAL, POOLED, FEDCOX, *[dp_mode(e) for e in epsilons]]
