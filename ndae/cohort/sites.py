"""Hospitals: each site's scanner (how its images look) and case mix (whom it scans).

Scanner effects, in acquisition order: positional jitter (done in the resampling, see
render.py), contrast (gamma), resolution (Gaussian point-spread function, one site with thick
slices), receive-coil bias field (smooth multiplicative), gain (arbitrary scanner units), and
Rician noise (magnitude of complex Gaussian noise, Gudbjartsson & Patz 1995). Parameters are
spread over a wide range and shuffled across sites, so any K ≥ 2 gives clearly different
scanners: a model that ignores the site sees a site difference in brain intensity larger than
the disease's own intensity effect (measured and reported in cohort.json).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ndae.cohort.deformation import smooth

#  Values at the two ends of the range; each site gets one point of an evenly spaced,
#  shuffled grid between them, plus a little jitter.
SCANNER_RANGES = {
    "gain": (600.0, 1400.0),  # scanner units of the brain's 99th-percentile intensity
    "gamma": (0.75, 1.3),
    "bias_strength": (0.05, 0.25),  # ± log-amplitude of the bias field over the head
    "blur_fwhm_mm": (0.0, 3.0),
    "noise_sd": (0.01, 0.05),  # Rician σ relative to the 99th-percentile brain intensity
}


@dataclass(frozen=True)
class Site:
    name: str
    # Scanner.
    gain: float
    gamma: float
    bias_strength: float
    bias_coefficients: tuple[float, ...]  # quadratic polynomial in normalised coordinates
    blur_fwhm_mm: tuple[float, float, float]
    noise_sd: float
    jitter_rotation_deg: float = 2.0  # per-subject rigid offset, uniform in ± this per axis
    jitter_translation_mm: float = 2.0
    # Case mix.
    size: int = 0
    patients: int = 0
    bulbar_fraction: float = 0.3
    severity_mean: float = 0.5
    age_tilt: float = 0.0  # > 0: the site scans older people (log-weight per SD of age)

    def to_dict(self) -> dict:
        return asdict(self)


def draw_scanners(names: list[str], rng: np.random.Generator) -> list[dict]:
    """Scanner parameters for each site: stratified over SCANNER_RANGES so sites differ."""
    k = len(names)
    columns = {}
    for key, (low, high) in SCANNER_RANGES.items():
        grid = (np.arange(k) + rng.uniform(0.25, 0.75, size=k)) / k
        columns[key] = low + (high - low) * rng.permutation(grid)
    thick_slices = int(rng.integers(k)) if k >= 2 else -1
    scanners = []
    for i, name in enumerate(names):
        blur = float(columns["blur_fwhm_mm"][i])
        # One site acquires thick slices: much blurrier along the superior–inferior axis.
        fwhm = (blur, blur, blur + 3.0) if i == thick_slices else (blur, blur, blur)
        coefficients = rng.normal(size=9)
        scanners.append(
            {
                "name": name,
                "gain": float(columns["gain"][i]),
                "gamma": float(columns["gamma"][i]),
                "bias_strength": float(columns["bias_strength"][i]),
                "bias_coefficients": tuple(float(c) for c in coefficients / np.abs(coefficients).sum()),
                "blur_fwhm_mm": tuple(round(f, 4) for f in fwhm),
                "noise_sd": float(columns["noise_sd"][i]),
            }
        )
    return scanners


def bias_field(shape: tuple[int, int, int], coefficients, strength: float) -> np.ndarray:
    """exp(strength · p(x)), p a quadratic polynomial scaled to max |p| = 1 over the grid."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = (x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, x * z, y * z)
    poly = sum(float(c) * t for c, t in zip(coefficients, terms))
    poly = poly / max(float(np.abs(poly).max()), 1e-6)
    return np.exp(strength * poly).astype(np.float32)


def apply_scanner(
    magnitude: np.ndarray,
    support: np.ndarray | None,
    site: Site,
    voxel_size: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Acquire a magnitude image (brain ≈ [0, 1], 99th percentile 1) on this site's scanner.

    `support`: where the delivered image is non-zero (skull-stripped inputs stay stripped);
    None keeps the whole field of view, noise included.
    """
    image = np.power(np.clip(magnitude, 0, None), site.gamma, dtype=np.float32)
    if max(site.blur_fwhm_mm) > 0:
        image = smooth(image, np.asarray(site.blur_fwhm_mm) / 2.3548, voxel_size)
    # Each subject sits a little differently in the coil: perturb the site's field.
    coefficients = np.asarray(site.bias_coefficients) + rng.normal(0, 0.05, size=9)
    image *= bias_field(image.shape, coefficients, site.bias_strength)
    gain = site.gain * float(np.exp(rng.normal(0, 0.03)))  # per-session scaling drift
    image *= gain
    sigma = site.noise_sd * gain
    real = image + rng.normal(0, sigma, size=image.shape).astype(np.float32)
    imaginary = rng.normal(0, sigma, size=image.shape).astype(np.float32)
    image = np.sqrt(real * real + imaginary * imaginary)
    if support is not None:
        image *= support
    return image.astype(np.float32)
