"""Regional normative deviations from the diffusion prior: the NDAE's image-space score.

For a subject's prepared image x (at the DAE's size) and a noise level t: noise it,
x_t = √ᾱ_t x + √(1−ᾱ_t) ε, and let the trained U-Net predict the clean image x̂₀(x_t, t | z) (the
Diff-AE rule: ε → x̂₀, clamped to [-1, 1]; `GaussianDiffusion.predict_x0`), conditioned on
- z = the **normative** z_sem for the subject's age, sex and site (the healthy latent the normative
  model expects for them): x̂₀ is the healthy brain the DAE would draw from this noised image, so
  x − x̂₀ is where the subject departs from it; and
- z = the subject's **own** z_sem (the DAE's reconstruction prior, for comparison).
The signed residual x − x̂₀ is averaged over a fixed grid of noise levels and noise draws, brought
back to the prepared slices' 2 mm grid and averaged over every atlas region the DAE's slices cut
(within the subject's brain): one number per region. The caller standardises these region means
with a normative model of the *controls'* residuals (age, sex, site; fitted from summable
sufficient statistics), so a patient's feature is how unusual their residual is in that region.

Why noise levels and not DDIM inversion: x̂₀ at a moderate t keeps the subject's coarse anatomy
(ᾱ_t of the signal survives) and replaces fine detail by what the prior expects; a cortex thinner
than the prior's shows as a signed residual. The levels (LEVELS: ᾱ ≈ 0.90, 0.52, 0.20, signal to
noise 8.6 to 0.24) are fixed a priori over the range where x̂₀ is still anchored to the subject,
not chosen on any cohort; every level and draw uses the same noise for every subject (common
random numbers), so subjects differ by their images, not by their noise.

The swap test (`z_sem_swap_effect`): how much x̂₀ moves when the subject's own z_sem is replaced by
another subject's, relative to the residual itself. Near zero, the decoder ignores z_sem and the
"normative" conditioning is empty: the residual is then a learned denoiser's, not a normative one
(as after a short `tiny` training: docs/dae.md); the report says so.

2-D DAEs only (the atlas is summarised on the prepared axial slices).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

LEVELS = (100, 250, 400)  # DDPM timesteps of the linear schedule, fixed a priori (module docstring)
DRAWS = 2  # noise draws per level
NORMATIVE, OWN = "normative", "own"
PREFIX = {NORMATIVE: "prior_", OWN: "prior_own_"}
NOISE_SEED = 20240  # not a privacy draw: Monte-Carlo noise of the score, the same at every site


@dataclass
class PriorResiduals:
    """Per-subject residual maps [n, C, H, W] (prepared-slice size) for each conditioning, and
    the swap test's numbers."""

    maps: dict[str, np.ndarray]
    swap: dict[str, float]
    levels: tuple[int, ...]
    draws: int


def derangement(n: int, seed: int = NOISE_SEED) -> np.ndarray:
    """A seeded permutation without fixed points (Sattolo's single cycle): the swap test's partners,
    drawn across the whole cohort rather than the manifest's neighbours (often the same site)."""
    order = np.arange(n)
    rng = np.random.default_rng(seed)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def _noise(shape: tuple[int, ...], level_index: int, draw: int):
    import torch

    generator = torch.Generator().manual_seed(NOISE_SEED + 1000 * level_index + draw)
    return torch.randn(shape, generator=generator)


def prior_residual_maps(model, config, images: np.ndarray, z_normative: np.ndarray, ages: np.ndarray | None = None,
                        levels=LEVELS, draws: int = DRAWS, batch_size: int = 32,
                        out_size: tuple[int, int] | None = None) -> PriorResiduals:
    """x − x̂₀(x_t, t | z) averaged over `levels` × `draws`, for z = the normative z_sem (rows of
    `z_normative`) and z = the subject's own z_sem; `images` in the prepared-slice format.
    Maps are returned at `out_size` (default: the images' own H, W), bilinear."""
    import torch
    import torch.nn.functional as F

    from ndae.model import encode, prepare_images
    from ndae.model.dae import model_device, unwrap

    core = unwrap(model).eval()
    if core.config.model.spatial_dims != 2:
        raise NdaeError("prior residuals: only 2-D DAEs (axial slices) are supported")
    levels = tuple(int(t) for t in levels)
    if not levels or any(not 0 <= t < core.diffusion.timesteps for t in levels) or int(draws) < 1:
        raise NdaeError(f"prior residuals: levels {levels} must lie in [0, {core.diffusion.timesteps - 1}] "
                        f"and draws ({draws}) be at least 1")
    device = model_device(core)
    x = prepare_images(images, core.config)
    n = x.shape[0]
    z_normative = torch.as_tensor(np.asarray(z_normative, np.float32))
    if z_normative.shape != (n, core.config.model.z_sem_dim):
        raise NdaeError(f"prior residuals: normative z_sem of shape {tuple(z_normative.shape)}, expected "
                        f"({n}, {core.config.model.z_sem_dim})")
    age_tensor = None
    if core.config.model.age_conditioned:
        if ages is None:
            raise NdaeError("prior residuals: this DAE is age-conditioned, and no ages were given")
        age_tensor = torch.as_tensor(np.asarray(ages, np.float32)).reshape(n)
    with torch.no_grad():
        z_own = encode(core, x)
    swap_partner = derangement(n)  # every subject gets another one's z_sem (n ≥ 2)
    sums = {NORMATIVE: torch.zeros_like(x), OWN: torch.zeros_like(x)}
    swap_moves, residual_sizes = [], []
    clip = core.config.diffusion.clip_denoised
    with torch.no_grad():
        for level_index, t in enumerate(levels):
            for draw in range(int(draws)):
                noise_one = _noise(tuple(x.shape[1:]), level_index, draw)
                for start in range(0, n, batch_size):
                    rows = slice(start, min(start + batch_size, n))
                    xb = x[rows].to(device)
                    noise = noise_one.to(device).expand_as(xb)
                    tt = torch.full((xb.shape[0],), t, dtype=torch.long, device=device)
                    x_t = core.diffusion.q_sample(xb, tt, noise)
                    ab = None if age_tensor is None else age_tensor[rows].to(device)

                    def x0(z):
                        return core.diffusion.predict_x0(core.epsilon_fn(z.to(device), ab), x_t, t, clip).cpu()

                    own = x0(z_own[rows])
                    sums[OWN][rows] += x[rows] - own
                    sums[NORMATIVE][rows] += x[rows] - x0(z_normative[rows])
                    if n >= 2:
                        swapped = x0(z_own[swap_partner[rows]])
                        brain = x[rows] > -1.0
                        move = ((swapped - own) * brain).flatten(1).norm(dim=1)
                        size = ((x[rows] - own) * brain).flatten(1).norm(dim=1)
                        swap_moves.append(move)
                        residual_sizes.append(size)
    count = len(levels) * int(draws)
    size = tuple(out_size or np.asarray(images).shape[-2:])
    maps = {k: F.interpolate(v / count, size=size, mode="bilinear", align_corners=False).numpy()
            for k, v in sums.items()}
    swap = {}
    if swap_moves:
        moves, sizes = torch.cat(swap_moves), torch.cat(residual_sizes)
        inside = (x > -1.0).numpy()  # over brain pixels (the model's size), not the background's near-zeros
        normative_map, own_map = (sums[k].numpy()[inside] for k in (NORMATIVE, OWN))
        swap = {"relative_change": float((moves / sizes.clamp_min(1e-8)).mean()),
                "normative_vs_own_map_correlation": float(np.corrcoef(normative_map, own_map)[0, 1])}
    return PriorResiduals(maps=maps, swap=swap, levels=levels, draws=int(draws))


def region_columns(table: pd.DataFrame, kind: str) -> list[str]:
    """The columns of one conditioning (NORMATIVE's prefix `prior_` also begins OWN's `prior_own_`)."""
    other = [PREFIX[k] for k in PREFIX if k != kind and PREFIX[k].startswith(PREFIX[kind])]
    return [c for c in table.columns if c.startswith(PREFIX[kind]) and not any(c.startswith(o) for o in other)]


def prior_residual_regions(residuals: PriorResiduals, brain: np.ndarray, atlas_slices: np.ndarray) -> pd.DataFrame:
    """Region means of both conditionings' maps: columns `prior_<region>` (normative z_sem) and
    `prior_own_<region>` (own z_sem)."""
    from ndae.deviation.image_features import region_means

    frames = [region_means(residuals.maps[k], brain, atlas_slices, prefix=PREFIX[k]) for k in (NORMATIVE, OWN)]
    return pd.concat(frames, axis=1)


def prior_residual_features(run_dir: str | Path, manifest: str | Path, cache_dir: str | Path, normative,
                            levels=LEVELS, draws: int = DRAWS, device: str | None = None,
                            subjects=None) -> tuple[pd.DataFrame, dict]:
    """`subject` + the region means of every subject of the manifest (or of `subjects`), from the
    run's DAE (`run_dir/dae/checkpoint.pt`) and its normative model of z_sem; and the swap test."""
    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.image_features import dae_slices_and_atlas, run_dae
    from ndae.normative.model import OutOfRangeWarning

    model, config = run_dae(run_dir, device)
    data = load_slice_dataset(manifest, cache_dir, progress=False)
    if subjects is not None:
        wanted = set(map(str, subjects))
        data = data.subset(np.array([str(s) in wanted for s in data.subjects]))
    channels, atlas = dae_slices_and_atlas(config, cache_dir, data.subjects[0], data.images.shape[1])
    covariates = data.manifest[["subject", "site", "age", "sex", "group"]].reset_index(drop=True)
    with warnings.catch_warnings():  # out-of-range ages are reported by the latent scores already
        warnings.simplefilter("ignore", OutOfRangeWarning)
        z_normative = normative.predict(covariates)[0]
    ages = np.asarray(data.ages, np.float32) if config.model.age_conditioned else None
    residuals = prior_residual_maps(model, config, data.images, z_normative, ages, levels, draws,
                                    out_size=data.images.shape[2:])
    brain = data.images[:, channels] > -1.0
    table = prior_residual_regions(residuals, brain, atlas)
    table.insert(0, "subject", [str(s) for s in data.subjects])
    return table, {"levels": list(residuals.levels), "draws": residuals.draws, **residuals.swap}
