"""The site's Gaussian release of the normative model's sufficient statistics.

What a site releases (`private_moments`): the MINIMAL statistics of its controls, XᵀX (p × p),
XᵀY (p × d) and YᵀY (d × d; or only its diagonal ΣY², `cross_products=False`), for design rows x
(intercept, age basis, sex) and latents y = z_sem. Column 0 of the design is the intercept, so
n = XᵀX[0, 0] and ΣY = XᵀY[0], and ΣY² = diag(YᵀY): the server derives them
(`SufficientStats.from_arrays`); releasing them again (as before) only raised the sensitivity.

Clipping: every latent row to ‖y‖ ≤ C_y (`clip_rows`); every design row to ‖x‖ ≤ C_x keeping
the intercept at 1 (`ndae.normative.design.clip_design_rows`: only the covariates are scaled, so a
clipped control still counts as one record). The normative model fitted from the release carries
C_x and C_y and clips everyone it scores the same way.

Sensitivity (add/remove one record, L2 over the released coordinates): one record adds
(x xᵀ, x yᵀ, y yᵀ), with ‖x xᵀ‖_F = ‖x‖², ‖x yᵀ‖_F = ‖x‖‖y‖, ‖y yᵀ‖_F = ‖y‖² (and
‖y∘y‖₂ ≤ ‖y‖² for the diagonal), so per block Δ_xtx = C_x², Δ_xty = C_x C_y, Δ_yty = C_y² and

    Δ = sqrt(C_x⁴ + C_x² C_y² + C_y⁴)          (`moments_sensitivity`)

(the old set n, XᵀX, XᵀY, ΣY, ΣY², YᵀY had Δ² = 1 + C_x⁴ + C_x²C_y² + C_y² + 2 C_y⁴). The bound is
attained by a record with x and y on one axis each. Symmetric blocks are released through their
upper triangle (diagonal included, norm ≤ the Frobenius bound) and the noise mirrored.

Noise split: block k gets N(0, σ_k²) per coordinate with σ_k = m Δ_k / √f_k, Σ f_k = 1, m the
noise multiplier. Dividing block k by σ_k gives unit noise on a statistic of sensitivity
√(Σ_k Δ_k²/σ_k²) = 1/m: the release is exactly one Gaussian mechanism with noise multiplier m
and is accounted as `PrivacyEvent("gaussian-moments", m, 1.0, 1, Δ, n)` (Δ is the ledger's
`clip`, for reading only: the accountant uses m). f_k ∝ Δ_k² is the uniform noise σ_k = m Δ of
the old release; `DEFAULT_SPLIT` is what `benchmarks/bench_dp_moments.py` measured best.

The Gaussian mechanism itself (row clipping, symmetric noise, the release record) is
`ndae.privacy.gaussian_mechanism`. Server side (post-processing, free under DP:
`postprocess_noisy_stats`, `moments_noise_warnings`) is `ndae.privacy.moments_postprocessing`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ndae.errors import NdaeError
from ndae.privacy.gaussian_mechanism import NoisyStatistics, clip_rows, symmetric_noise

BLOCKS = ("xtx", "xty", "yty")  # the minimal release; "yty" may be its diagonal "sum_y2"
# Share f_k of the release's privacy (Σ f_k = 1) per block, as measured best by
# benchmarks/bench_dp_moments.py (RESULTS.md, "DP normative moments: utility").
DEFAULT_SPLIT = {"xtx": 0.1, "xty": 0.6, "yty": 0.3}


def block_sensitivities(covariate_clip: float, latent_clip: float) -> dict[str, float]:
    """Per-record L2 bound of each minimal block: C_x², C_x C_y, C_y²."""
    cx, cy = float(covariate_clip), float(latent_clip)
    if not (cx > 0 and cy > 0):
        raise NdaeError(f"clip norms must be > 0, got covariate {cx}, latent {cy}")
    return {"xtx": cx * cx, "xty": cx * cy, "yty": cy * cy}


def moments_sensitivity(covariate_clip: float, latent_clip: float) -> float:
    """L2 sensitivity Δ = √(C_x⁴ + C_x²C_y² + C_y⁴) of the minimal release (`private_moments`):
    the `clip` of its ledger event; a site budgets with it before computing anything."""
    return float(np.sqrt(sum(v * v for v in block_sensitivities(covariate_clip, latent_clip).values())))


def _normalised_split(split: Mapping[str, float] | None, covariate_clip: float, latent_clip: float) -> dict[str, float]:
    if split is None:
        split = DEFAULT_SPLIT
    if split == "uniform":  # the old release's noise: σ_k = m Δ for every block
        bounds = block_sensitivities(covariate_clip, latent_clip)
        split = {k: v * v for k, v in bounds.items()}
    if set(split) != set(BLOCKS) or any(not (float(v) > 0) for v in split.values()):
        raise NdaeError(f"noise split must give a positive share to each of {BLOCKS}, got {dict(split)}")
    total = float(sum(split.values()))
    return {k: float(split[k]) / total for k in BLOCKS}


def moments_noise_sd(covariate_clip: float, latent_clip: float, noise_multiplier: float,
                     split: Mapping[str, float] | str | None = None) -> dict[str, float]:
    """Noise sd per coordinate of each block: σ_k = m Δ_k / √f_k (public: from the run config)."""
    bounds = block_sensitivities(covariate_clip, latent_clip)
    shares = _normalised_split(split, covariate_clip, latent_clip)
    return {k: float(noise_multiplier) * bounds[k] / np.sqrt(shares[k]) for k in BLOCKS}


def private_moments(
    X: np.ndarray, Y: np.ndarray, *, covariate_clip: float, latent_clip: float, noise_multiplier: float,
    rng: np.random.Generator, public: Mapping[str, np.ndarray],
    split: Mapping[str, float] | str | None = None, cross_products: bool = True,
) -> NoisyStatistics:
    """The site's release of its controls' normative statistics under the Gaussian mechanism.

    X: the design rows as built (`DesignSpec.build`, intercept first), Y: raw z_sem. Rows are
    clipped here (design rows keeping the intercept, see the module docstring), the minimal
    statistics computed and noised from `rng` (the site's CSPRNG-seeded Generator). `public`:
    the payload's data-independent fields (`design`, `site_names`, `covariate_min/max` = the
    design's declared age range); the clip norms and the noise variance per block are added to it.
    Returned `stats` is what the server sums (`SufficientStats.from_arrays` accepts it):
    `xtx`, `xty`, `yty` (or `sum_y2` when `cross_products=False`), `covariate_clip`,
    `latent_clip`, `dp_noise_variance` + `public`. noise_multiplier = 0 releases exact statistics
    (no DP; for tests)."""
    from ndae.normative.design import clip_design_rows

    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise NdaeError(f"design {X.shape} and latents {Y.shape} must be 2-d with the same rows")
    if X.shape[0] and not np.allclose(X[:, 0], 1.0):
        raise NdaeError("the design's first column must be the intercept (all ones): n and ΣY are read off it")
    if noise_multiplier < 0:
        raise NdaeError(f"noise_multiplier {noise_multiplier} must be >= 0")
    reserved = [k for k in public if k in (*BLOCKS, "sum_y2", "n", "sum_y", "covariate_clip", "latent_clip",
                                           "dp_noise_variance", "site_n", "site_sum_x", "site_sum_y")]
    if reserved:
        raise NdaeError(f"public fields {reserved} are statistics of the data: they cannot pass unnoised")
    _check_public_range(public)
    # Clipping bounds a finite row only (NaN survives any scaling, and one NaN makes the whole sum
    # NaN): a record with a non-finite value contributes a zero row, which is within every bound.
    X = np.where(np.isfinite(X).all(axis=1, keepdims=True), X, np.eye(1, X.shape[1]))
    Y = np.where(np.isfinite(Y).all(axis=1, keepdims=True), Y, 0.0)
    Xc = clip_design_rows(X, covariate_clip)
    Yc, _ = clip_rows(Y, latent_clip)  # the count stays here: it is not released
    sigma = moments_noise_sd(covariate_clip, latent_clip, noise_multiplier, split)
    exact = {"xtx": Xc.T @ Xc, "xty": Xc.T @ Yc}
    latent_key = "yty" if cross_products else "sum_y2"
    exact[latent_key] = Yc.T @ Yc if cross_products else (Yc * Yc).sum(0)
    noisy = {}
    for key in ("xtx", "xty", latent_key):  # fixed order: the same seed gives the same noise
        block = "yty" if key == "sum_y2" else key
        value = exact[key].copy()
        if noise_multiplier > 0:
            value += (symmetric_noise(value.shape, sigma[block], rng) if value.ndim == 2 and key != "xty"
                      else rng.normal(0.0, sigma[block], size=value.shape))
        noisy[key] = value
    noisy.update({key: np.asarray(value) for key, value in public.items()})
    noisy["covariate_clip"] = np.asarray(float(covariate_clip))
    noisy["latent_clip"] = np.asarray(float(latent_clip))
    noisy["dp_noise_variance"] = np.array([sigma[k] ** 2 for k in BLOCKS]) * (noise_multiplier > 0)
    sensitivity = moments_sensitivity(covariate_clip, latent_clip)
    return NoisyStatistics(stats=noisy, sensitivity=sensitivity, noise_multiplier=float(noise_multiplier),
                           sigma=float(noise_multiplier * sensitivity), records=int(X.shape[0]),
                           block_sigma=sigma if noise_multiplier > 0 else {k: 0.0 for k in BLOCKS})


def _check_public_range(public: Mapping[str, np.ndarray]) -> None:
    """covariate_min/max are data-dependent unless they are the design's declared age range."""
    if not any(k in public for k in ("covariate_min", "covariate_max")):
        return
    if "design" not in public:
        raise NdaeError("public covariate_min/max need the design beside them (they must be its declared age range)")
    import json

    declared = json.loads(str(np.asarray(public["design"])))["age_range"]
    for key, value in (("covariate_min", declared[0]), ("covariate_max", declared[1])):
        if key in public and not np.allclose(np.asarray(public[key], dtype=np.float64), value):
            raise NdaeError(f"public {key} {np.asarray(public[key]).tolist()} is not the design's declared "
                            f"age range {declared}: the observed range is data and cannot be released unnoised")
