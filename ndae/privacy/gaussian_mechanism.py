"""The Gaussian mechanism on sufficient statistics, and the older whole-payload release.

Per-record L2 bounds of each statistic as functions of the clip norms (C_x, C_y), the sensitivity
of a set of them (`statistics_sensitivity`), row clipping (`clip_rows`), Gaussian noise with
symmetric blocks noised through their upper triangle (`add_gaussian_noise`, `symmetric_noise`),
and `NoisyStatistics`, a release with the ledger event that accounts it. The older release
(n, XᵀX, XᵀY, ΣY, ΣY², whole rows clipped, uniform noise: `privatize_sufficient_stats`,
`privatize_arrays`) is kept for comparison (benchmarks/bench_dp_moments.py); sites release the
minimal statistics with split noise (`ndae.privacy.dp_moments.private_moments`).
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


def symmetric_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """N(0, sigma²) on the upper triangle (diagonal included), mirrored: the noise of a symmetric
    block released through its upper triangle."""
    upper = np.triu(rng.normal(0.0, sigma, size=shape))
    return upper + np.triu(upper, 1).T


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
                value += symmetric_noise(value.shape, sigma, rng)
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
