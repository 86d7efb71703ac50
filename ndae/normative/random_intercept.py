"""The fit behind `NormativeModel.fit_stats`: EM on the random-site-intercept model, from sums.

Per feature f, on the controls-standardised latent (mean and sd from ΣY, ΣY², n):
y = xᵀβ + u_site + ε,  ε ~ N(0, σ²),  u_site ~ N(0, τ²),  β ~ N(0, σ²/λ · I) (weak ridge λ).
β is the GLS estimate, which for a site with n_s controls needs only that site's n_s, Σx and Σy;
the site offset is the BLUP u_s = ρ_s · mean residual_s with ρ_s = n_s τ² / (σ² + n_s τ²). A
fixed number of EM steps (no tolerance-dependent stopping) keeps the federated and pooled fits
equal to float rounding. Fewer than two sites with controls: τ² = 0 (Bayesian ridge regression).
DP statistics: the known noise variances enter the residual sum of squares and the shrinkage.
See `ndae.normative.model` for the model as a whole and its predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ndae.errors import NdaeError
from ndae.normative.sufficient_stats import SufficientStats

VARIANCE_FLOOR = 1e-10  # on the standardised scale, where the controls' variance is 1


def fit_random_intercept(stats: SufficientStats, prior_precision: float, site_effects: bool,
                         n_iterations: int) -> dict[str, Any]:
    """The fitted quantities, keyed by the `NormativeModel` attribute each becomes."""
    d, p = stats.n_features, stats.n_columns
    N = stats.n
    if N - p < 1:
        raise NdaeError(
            f"the normative model needs more controls than design columns: "
            f"{N:g} controls, {p} columns ({stats.design.column_names})"
        )

    # standardise with the controls' mean and sd, all from the sums
    mean = stats.sum_y / N
    variance = (stats.sum_y2 - N * mean**2) / (N - 1)
    sd = np.sqrt(np.maximum(variance, VARIANCE_FLOOR * np.maximum(mean**2, 1.0)))
    sum_x = stats.xtx[:, 0]  # intercept column: Σx
    xtx = stats.xtx
    xty = (stats.xty - np.outer(sum_x, mean)) / sd  # (p, d)
    syy = (stats.sum_y2 - 2 * mean * stats.sum_y + N * mean**2) / sd**2  # (d,)

    use = stats.site_n > 0
    site_n = stats.site_n[use]
    site_x = stats.site_sum_x[use]
    site_y = (stats.site_sum_y[use] - site_n[:, None] * mean) / sd  # (S, d)
    n_sites = int(use.sum())
    penalty = prior_precision * np.eye(p)
    # DP statistics: the Gaussian noise on XᵀY inflates the explained sum of squares by
    # E[bᵀA⁻¹b] = σ²_noise·tr(A⁻¹) over the non-intercept coordinates (the centred
    # intercept row is exactly 0); add it back so the residual variance is not driven to 0.
    noise_xty = 0.0 if stats.dp_noise_variance is None else float(stats.dp_noise_variance[1])

    def solve(rho: np.ndarray):
        weight = rho / site_n[:, None]  # (S, d)
        A = xtx[None] + penalty - np.einsum("sf,sp,sq->fpq", weight, site_x, site_x)
        b = xty.T - np.einsum("sf,sp,sf->fp", weight, site_x, site_y)
        beta = np.linalg.solve(A, b[..., None])[..., 0]  # (d, p)
        residual_sum = site_y - site_x @ beta.T  # (S, d)
        offset = rho * residual_sum / site_n[:, None]
        rss = (
            syy
            - 2 * np.sum(beta * xty.T, 1)
            + np.einsum("fp,pq,fq->f", beta, xtx, beta)
            - 2 * np.sum(offset * residual_sum, 0)
            + np.sum(site_n[:, None] * offset**2, 0)
        )
        if noise_xty > 0:
            inverse = np.linalg.inv(A)[:, 1:, 1:]
            rss = rss + noise_xty / sd**2 * np.trace(inverse, axis1=1, axis2=2)
        return A, beta, residual_sum, offset, rss

    rho = np.zeros((n_sites, d))
    A, beta, residual_sum, offset, rss = solve(rho)
    sigma2 = np.maximum(rss / (N - p), VARIANCE_FLOOR)
    tau2 = np.zeros(d)
    # DP statistics: each site's Σy carries Gaussian noise (variance per coordinate: the
    # summed XᵀY noise variance over the sites that sent it), so a site's mean residual is
    # u_s + ε̄_s + noise_s; its variance κ_s = noise/n_s² (standardised) joins σ²/n_s in the
    # shrinkage ρ_s = τ² / (τ² + σ²/n_s + κ_s) and the offset's posterior variance.
    kappa = np.zeros((n_sites, d))
    if noise_xty > 0 and n_sites:
        kappa = noise_xty / max(len(stats.site_names), 1) / site_n[:, None] ** 2 / sd**2

    def shrinkage(sigma2, tau2):
        return tau2 / (tau2 + sigma2 / site_n[:, None] + kappa)

    if site_effects and n_sites >= 2:
        site_mean = residual_sum / site_n[:, None]
        tau2 = np.maximum(
            np.mean(site_mean**2 - sigma2 / site_n[:, None] - kappa, 0), 0.05 * sigma2
        )
        for _ in range(n_iterations):  # EM; fixed count (see module docstring)
            rho = shrinkage(sigma2, tau2)
            A, beta, residual_sum, offset, rss = solve(rho)
            offset_variance = rho * (sigma2 / site_n[:, None] + kappa)
            sigma2 = np.maximum(
                (rss + np.sum(site_n[:, None] * rho * sigma2 / site_n[:, None], 0)) / (N - p),
                VARIANCE_FLOOR,
            )
            tau2 = np.mean(offset**2 + offset_variance, 0)
        rho = shrinkage(sigma2, tau2)
        A, beta, residual_sum, offset, rss = solve(rho)
    offset_variance = rho * (sigma2 / site_n[:, None] + kappa)

    residual_covariance = None  # (d, d) standardised; for Mahalanobis scores
    if stats.yty is not None:
        yty = (
            stats.yty
            - np.outer(mean, stats.sum_y)
            - np.outer(stats.sum_y, mean)
            + N * np.outer(mean, mean)
        ) / np.outer(sd, sd)
        B = beta.T  # (p, d)
        cross = B.T @ xty
        R = yty - cross - cross.T + B.T @ xtx @ B
        site_cross = offset.T @ residual_sum
        R = R - site_cross - site_cross.T + (offset.T * site_n) @ offset
        residual_covariance = (R + R.T) / 2 / (N - p)
    return {
        "control_mean": mean,
        "control_sd": sd,
        "beta": beta,  # (d, p), standardised scale
        "beta_precision": A,  # (d, p, p); posterior covariance = σ² A⁻¹
        "noise_variance": sigma2,  # (d,), standardised scale
        "site_variance": tau2,
        "site_names": [name for name, keep in zip(stats.site_names, use) if keep],
        "site_n": site_n,
        "site_offset": offset,  # (S, d), standardised scale
        "site_offset_variance": offset_variance,  # Var(u_s | β)
        "site_shrinkage": rho,  # (S, d): ρ_s
        "site_mean_x": site_x / site_n[:, None],  # (S, p): the site's mean design row
        "n_controls": N,
        "covariate_min": stats.covariate_min.copy(),
        "covariate_max": stats.covariate_max.copy(),
        "covariate_clip": stats.covariate_clip,
        "latent_clip": stats.latent_clip,
        "residual_covariance": residual_covariance,
    }
