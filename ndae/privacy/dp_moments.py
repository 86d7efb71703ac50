"""Gaussian mechanism on the normative model's sufficient statistics.

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

Server side (post-processing, free under DP): `postprocess_noisy_stats` turns the summed noisy
statistics into a valid fit input; `moments_noise_warnings` names sites whose noise swamps their
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ndae.errors import NdaeError
from ndae.privacy.accountant import PrivacyEvent

# The per-record L2 bound of each statistic, as a function of (C_x, C_y). Keys follow
# ndae.normative sufficient_stats.to_arrays(); aliases cover the spellings in use.
_BOUNDS = {
    "n": lambda cx, cy: 1.0,
    "xtx": lambda cx, cy: cx * cx,
    "xty": lambda cx, cy: cx * cy,
    "sum_y": lambda cx, cy: cy,
    "sum_y2": lambda cx, cy: cy * cy,
    "yty": lambda cx, cy: cy * cy,  # full latent second moment, if a model keeps it
    "sum_x": lambda cx, cy: cx,
}
_ALIASES = {
    "count": "n", "XtX": "xtx", "XtY": "xty", "sum_Y": "sum_y", "sum_Y2": "sum_y2",
    "sum_y_squared": "sum_y2", "sum_yy": "sum_y2", "YtY": "yty", "sum_X": "sum_x",
}
SYMMETRIC = ("xtx", "yty")


def _canonical(key: str) -> str:
    name = _ALIASES.get(key, key)
    if name not in _BOUNDS:
        raise NdaeError(
            f"sufficient statistic {key!r} has no known sensitivity; expected one of "
            f"{', '.join(sorted(_BOUNDS))}"
        )
    return name


def clip_rows(values: np.ndarray, max_norm: float) -> tuple[np.ndarray, int]:
    """Scale every row to L2 norm ≤ max_norm; return the clipped rows and how many were scaled."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise NdaeError(f"expected a 2-d array (records × features), got shape {values.shape}")
    if max_norm <= 0:
        raise NdaeError(f"clip norm {max_norm} must be > 0")
    norms = np.linalg.norm(values, axis=1)
    scale = np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))
    return values * scale[:, None], int(np.sum(scale < 1.0))


def sufficient_stats_from_records(X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    """Exact n, XᵀX, XᵀY, ΣY, ΣY² of one site's records (in float64)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape[0] != Y.shape[0]:
        raise NdaeError(f"covariates have {X.shape[0]} rows but latents have {Y.shape[0]}")
    return {
        "n": np.array(float(X.shape[0])),
        "xtx": X.T @ X,
        "xty": X.T @ Y,
        "sum_y": Y.sum(axis=0),
        "sum_y2": (Y * Y).sum(axis=0),
    }


def statistics_sensitivity(keys, covariate_clip: float, latent_clip: float) -> float:
    """L2 sensitivity (add/remove one record) of the concatenation of the statistics in `keys`."""
    names = {_canonical(key) for key in keys}
    return float(np.sqrt(sum(_BOUNDS[name](covariate_clip, latent_clip) ** 2 for name in names)))


def add_gaussian_noise(
    stats: Mapping[str, np.ndarray], sensitivity: float, noise_multiplier: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Add N(0, (noise_multiplier · sensitivity)²) to every coordinate; symmetric noise on XᵀX
    (and YᵀY). noise_multiplier = 0 returns exact copies."""
    if noise_multiplier < 0:
        raise NdaeError(f"noise_multiplier {noise_multiplier} must be >= 0")
    sigma = noise_multiplier * sensitivity
    noisy: dict[str, np.ndarray] = {}
    for key in sorted(stats):  # fixed order: the same seed gives the same noise
        value = np.array(stats[key], dtype=np.float64, copy=True)
        if sigma > 0:
            if _canonical(key) in SYMMETRIC:
                if value.ndim != 2 or value.shape[0] != value.shape[1]:
                    raise NdaeError(f"sufficient statistic {key!r} should be square, got {value.shape}")
                upper = np.triu(rng.normal(0.0, sigma, size=value.shape))
                value += upper + np.triu(upper, 1).T
            else:
                value += rng.normal(0.0, sigma, size=value.shape)
        noisy[key] = value
    return noisy


@dataclass
class NoisyStatistics:
    """A Gaussian release of sufficient statistics and what the ledger needs to know about it.
    Deliberately holds no count of clipped rows: the ledger (event details) goes to the server,
    and how many controls exceeded a clip is itself a statistic of the data, released without
    noise."""

    stats: dict[str, np.ndarray]
    sensitivity: float
    noise_multiplier: float
    sigma: float  # noise sd of the uniform split (m·Δ); per-block sds are in `block_sigma`
    records: int
    block_sigma: dict[str, float] | None = None

    def event(self, **details) -> PrivacyEvent:
        leaking = [key for key in details if "clipped" in key.lower()]
        if leaking:
            raise NdaeError(
                f"ledger details {leaking} look like counts of clipped rows: the ledger is sent to the "
                f"server, and such a count is a release without noise; leave it out"
            )
        return PrivacyEvent(
            "gaussian-moments", self.noise_multiplier, 1.0, 1, self.sensitivity, self.records, dict(details),
        )


def privatize_sufficient_stats(
    X: np.ndarray, Y: np.ndarray, *, covariate_clip: float, latent_clip: float,
    noise_multiplier: float, rng: np.random.Generator,
) -> NoisyStatistics:
    """The old release (n, XᵀX, XᵀY, ΣY, ΣY², whole rows clipped, uniform noise); kept for
    comparison (benchmarks/bench_dp_moments.py). Sites use `private_moments`."""
    X_clipped, _ = clip_rows(X, covariate_clip)
    Y_clipped, _ = clip_rows(Y, latent_clip)
    stats = sufficient_stats_from_records(X_clipped, Y_clipped)
    sensitivity = statistics_sensitivity(stats, covariate_clip, latent_clip)
    return NoisyStatistics(
        stats=add_gaussian_noise(stats, sensitivity, noise_multiplier, rng),
        sensitivity=sensitivity,
        noise_multiplier=float(noise_multiplier),
        sigma=float(noise_multiplier * sensitivity),
        records=int(X_clipped.shape[0]),
    )


def privatize_arrays(
    arrays: Mapping[str, np.ndarray], *, covariate_clip: float, latent_clip: float,
    noise_multiplier: float, records: int, rng: np.random.Generator,
    public: tuple[str, ...] = ("site_names", "design"),
) -> NoisyStatistics:
    """Noise a site's `SufficientStats.to_arrays()` payload, computed from rows ALREADY clipped
    to covariate_clip / latent_clip (use `clip_rows`). Keys in `public` pass through unchanged;
    any other non-statistic key (e.g. covariate_min/max, which are data-dependent) is refused by
    name rather than leaked: drop it or declare it public (fixed by the design, not the data)."""
    statistics = {key: value for key, value in arrays.items() if key not in public}
    unknown = [key for key in statistics if _ALIASES.get(key, key) not in _BOUNDS]
    if unknown:
        raise NdaeError(
            f"cannot release {', '.join(sorted(unknown))} under differential privacy: not a sufficient "
            f"statistic with a known sensitivity; drop them or list them in `public` if they do not "
            f"depend on the site's data"
        )
    sensitivity = statistics_sensitivity(statistics, covariate_clip, latent_clip)
    noisy = add_gaussian_noise(statistics, sensitivity, noise_multiplier, rng)
    noisy.update({key: arrays[key] for key in arrays if key in public})
    return NoisyStatistics(
        stats=noisy, sensitivity=sensitivity, noise_multiplier=float(noise_multiplier),
        sigma=float(noise_multiplier * sensitivity), records=int(records),
    )


# ---- the site's release: minimal statistics, split noise ----------------------------------------
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


def _symmetric_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    upper = np.triu(rng.normal(0.0, sigma, size=shape))
    return upper + np.triu(upper, 1).T


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
            value += (_symmetric_noise(value.shape, sigma[block], rng) if value.ndim == 2 and key != "xty"
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


# ---- server side: post-processing and warnings --------------------------------------------------
def _psd(matrix: np.ndarray, floor_fraction: float = 1e-6) -> np.ndarray:
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
      to 0: the old floor, 1e-6·n, collapsed predictive sds to ~2 %). Without noise variances
      (older payloads) the old rule: ΣY² ≥ (ΣY)²/n + 1e-6·n.
    - AdaSSP-style ridge on the covariate block of XᵀX (2σ√p, the noise's spectral norm).
    - YᵀY: the controls' covariance de-noised (`denoise_covariance`), then rescaled to the
      variances above (its correlations kept): positive definite, diagonal = the new ΣY².
    """
    from dataclasses import replace

    p, d = stats.n_columns, stats.n_features
    xtx = _psd(np.array(stats.xtx, dtype=np.float64))
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
            correlation = _psd(covariance / np.outer(scale, scale), 1e-3)
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
    Replacing the whole bulk by that level instead (measured) halved the patients' Mahalanobis
    rank correlation with the exact model: the bulk's directions still carry signal.
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
    n = float(stats["n"]) if "n" in stats else float(stats["xtx"][0, 0])
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
        n = float(np.asarray(arrays["n"])) if "n" in arrays else float(np.asarray(arrays["xtx"])[0, 0])
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
