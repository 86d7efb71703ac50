"""Server side of the DP normative moments: post-processing and noise warnings (free under DP).

`postprocess_noisy_stats` turns the summed noisy statistics of the sites' releases
(`ndae.privacy.dp_moments.private_moments`) into a valid input for `NormativeModel.from_stats`,
using only the release and its public noise variances; `moments_noise_warnings` names sites whose
noise swamps their statistics, from the predicted correlation of their noisy controls' mean with
the exact one (`predicted_mean_correlation`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ndae.errors import NdaeError


def floor_eigenvalues(matrix: np.ndarray, floor_fraction: float = 1e-6) -> np.ndarray:
    """Symmetrise and floor the eigenvalues at floor_fraction × the largest (post-processing)."""
    matrix = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(matrix)
    floor = floor_fraction * max(float(values.max()), 1e-6)
    if values.min() >= floor:
        return matrix
    return (vectors * np.maximum(values, floor)) @ vectors.T


def postprocess_noisy_stats(stats, *, shrink_variances: bool = True):
    """Summed noisy statistics → a valid input for `NormativeModel.from_stats` (post-processing
    of a DP release: free, uses only the release and its public noise variances).

    - XᵀX symmetric positive definite (eigenvalues floored); n = XᵀX[0, 0] at least p + 2;
      per-site counts at least 1.
    - The controls' per-feature variances v_f = (ΣY² − (ΣY)²/n)/(n − 1): with the release's
      noise variance known (`dp_noise_variance`), shrunk toward their mean over features by the
      empirical-Bayes weight w_f = s²/(s² + noise_f) (s²: their spread beyond the noise), and
      floored at the noise sd of that mean (a variance the release cannot tell from 0 is not set
      to 0: the old floor, 1e-6·n, collapsed the predictive sds; docs/privacy.md). Without noise variances
      (older payloads) the old rule: ΣY² ≥ (ΣY)²/n + 1e-6·n.
    - AdaSSP-style ridge on the covariate block of XᵀX (2σ√p, the noise's spectral norm).
    - YᵀY: the controls' covariance de-noised (`denoise_covariance`), then rescaled to the
      variances above (its correlations kept): positive definite, diagonal = the new ΣY².
    """
    from dataclasses import replace

    p, d = stats.n_columns, stats.n_features
    xtx = floor_eigenvalues(np.array(stats.xtx, dtype=np.float64))
    n = max(float(xtx[0, 0]), float(stats.n) if stats.dp_noise_variance is None else -np.inf, p + 2.0)
    xtx[0, 0] = max(xtx[0, 0], n)  # a larger diagonal keeps it positive definite
    if stats.dp_noise_variance is not None and float(stats.dp_noise_variance[0]) > 0:
        # AdaSSP-style ridge (Wang 2018): the noise on XᵀX has spectral norm ≈ 2σ√p; adding that to
        # the covariate block keeps the noisy Gram from being near-singular in some direction,
        # which otherwise sends the age/sex coefficients far off. Not on [0, 0]: n stays the count.
        ridge = 2.0 * float(np.sqrt(stats.dp_noise_variance[0])) * np.sqrt(p)
        xtx[1:, 1:] += ridge * np.eye(p - 1)
    site_n = np.maximum(stats.site_n, 1.0)
    sum_y = stats.sum_y
    mean = sum_y / n
    centred = stats.sum_y2 - sum_y**2 / n
    if shrink_variances and stats.dp_noise_variance is not None and d > 1:
        var_xtx, var_xty, var_yty = (float(v) for v in stats.dp_noise_variance)
        variance = centred / (n - 1)
        noise = (var_yty + 4 * mean**2 * var_xty + mean**4 * var_xtx) / (n - 1) ** 2
        center = float(np.mean(variance))
        floor = float(np.sqrt(np.mean(noise) / d))
        spread = max(float(np.var(variance)) - float(np.mean(noise)), 0.0)
        weight = spread / (spread + noise) if spread > 0 else np.zeros(d)
        center = max(center, floor)
        variance = np.maximum(center + weight * (variance - center), floor)
        sum_y2 = sum_y**2 / n + (n - 1) * variance
    else:
        sum_y2 = np.maximum(stats.sum_y2, sum_y**2 / n + 1e-6 * n)
    yty = None
    if stats.yty is not None:
        covariance = (stats.yty + stats.yty.T) / 2 - np.outer(sum_y, sum_y) / n
        if stats.dp_noise_variance is not None and float(stats.dp_noise_variance[2]) > 0:
            covariance = denoise_covariance(covariance, float(np.sqrt(stats.dp_noise_variance[2])),
                                            float(np.sum(sum_y2 - sum_y**2 / n)))
            target = np.sqrt(sum_y2 - sum_y**2 / n)  # the variances above; correlations from here
            scale = 1 / np.sqrt(np.diag(covariance))
            covariance = covariance * np.outer(scale * target, scale * target)
        else:
            scale = np.sqrt(np.maximum(np.diag(covariance), 1e-300))
            correlation = floor_eigenvalues(covariance / np.outer(scale, scale), 1e-3)
            inverse = 1 / np.sqrt(np.diag(correlation))
            target = np.sqrt(sum_y2 - sum_y**2 / n)
            covariance = correlation * np.outer(inverse * target, inverse * target)
        yty = covariance + np.outer(sum_y, sum_y) / n
    return replace(stats, n=n, xtx=xtx, sum_y2=sum_y2, site_n=site_n, yty=yty)


def denoise_covariance(covariance: np.ndarray, noise_sd: float, trace: float) -> np.ndarray:
    """A (d × d) scatter matrix released with symmetric Gaussian noise of sd `noise_sd` per entry
    (the 'Analyze Gauss' release). The noise's eigenvalues fill ±2·noise_sd·√d; an eigenvalue
    above that edge is a spike θ observed at λ = θ + noise_sd²·d/θ and is de-biased; the others
    are kept as observed but floored at a tenth of the bulk's mean level ((trace − spikes) /
    directions left; `trace`: the total variance, ΣY² − (ΣY)²/n after its own post-processing).
    Replacing the whole bulk by that level instead lost much of the patients' Mahalanobis rank
    correlation with the exact model (docs/privacy.md): the bulk's directions still carry signal.
    Positive definite by construction."""
    d = covariance.shape[0]
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    edge = 2.0 * noise_sd * np.sqrt(d)
    keep = values > edge
    spikes = (values[keep] + np.sqrt(np.maximum(values[keep] ** 2 - 4 * noise_sd**2 * d, 0.0))) / 2
    rest = d - int(keep.sum())
    floor = max(float(trace), float(np.sum(spikes)), 1e-300) * 1e-3 / d
    level = max((float(trace) - float(np.sum(spikes))) / rest, floor) if rest else floor
    out = np.maximum(values, 0.1 * level)
    out[keep] = np.maximum(spikes, 0.1 * level)
    return (vectors * out) @ vectors.T


def _noisy_count(arrays: Mapping[str, np.ndarray]) -> float:
    """n of a release: its `n`, else XᵀX[0, 0] (the intercept column's sum)."""
    return float(np.asarray(arrays["n"])) if "n" in arrays else float(np.asarray(arrays["xtx"])[0, 0])


def predicted_mean_correlation(arrays: Mapping[str, np.ndarray], noise_sd: float | None = None) -> float:
    """Expected correlation (across features) of the noisy controls' mean ΣY/n with the exact
    one, from a release alone: sd of the exact means over features / sd of the noisy ones, the
    exact spread estimated as the noisy spread minus the noise (σ_xty/n)². noise_sd: the noise
    sd of XᵀY's coordinates (default: from the release's `dp_noise_variance`)."""
    stats = {key: np.asarray(value, dtype=np.float64) for key, value in arrays.items()
             if key in ("xtx", "xty", "n", "sum_y", "dp_noise_variance")}
    if noise_sd is None:
        if "dp_noise_variance" not in stats:
            raise NdaeError("no noise sd given and the statistics carry no dp_noise_variance")
        noise_sd = float(np.sqrt(stats["dp_noise_variance"].reshape(3)[1]))
    n = _noisy_count(stats)
    sum_y = stats["sum_y"] if "sum_y" in stats else stats["xty"][0]
    if n <= 1:
        return 0.0
    total = float(np.var(sum_y / n))
    if total <= 0:
        return 0.0
    signal = max(total - (float(noise_sd) / n) ** 2, 0.0)
    return float(np.sqrt(signal / total))


# The smallest predicted correlation of a site's mean before the report warns: below it the
# benchmark measured the fitted model's deviation ranks far from the exact ones (RESULTS.md).
WARNING_CORRELATION = 0.5


def moments_noise_warnings(per_site_stats: Mapping[str, Mapping[str, np.ndarray]],
                           noise_sd: float | Mapping[str, float] | None = None,
                           threshold: float = WARNING_CORRELATION) -> list[str]:
    """One line per site whose DP noise swamps its statistics (for the server's report): the
    predicted correlation of its noisy controls' mean with the exact one is below `threshold`,
    or its noisy count n = XᵀX[0, 0] is not even positive. `per_site_stats`: site → the arrays
    it sent; `noise_sd`: XᵀY's noise sd (one number, or per site; default: each release's own
    `dp_noise_variance`)."""
    lines = []
    for site in sorted(per_site_stats):
        arrays = per_site_stats[site]
        sd = noise_sd.get(site) if isinstance(noise_sd, Mapping) else noise_sd
        n = _noisy_count(arrays)
        if n <= 0:
            lines.append(f"site {site!r}: its noisy control count is {n:.1f}: the DP noise swamps its "
                         f"normative statistics (more controls or a larger epsilon needed)")
            continue
        rho = predicted_mean_correlation(arrays, sd)
        if rho < threshold:
            lines.append(f"site {site!r}: predicted correlation {rho:.2f} (< {threshold:g}) of its DP controls' "
                         f"mean with the exact one (noisy n ≈ {n:.0f}): the moments' noise swamps its "
                         f"statistics; its controls add little but noise to the normative model")
    return lines
