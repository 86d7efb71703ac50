"""Image-space NDAE features: where the DAE says a subject differs from their normative self,
summarised over the regions of the shipped population atlas (no per-subject labels needed).

Per subject (computed at the site, from its own images, the run's DAE and normative model): the
deviation map of `ndae.deviation.maps.deviation_map` (the reconstruction from the subject's own
z_sem and x_T minus the decode of the normative z_sem for their age, sex and site with the same
x_T), brought back to the prepared slices' 2 mm grid, and its mean over each atlas region that
the DAE's slices cut (`ndae.baselines.voxelwise` atlas, `load_atlas`). The caller standardises
these region means against the training controls with a normative model of their own (as for
z_sem), so a patient's feature is how unusual the DAE's deviation is in that region.

Cost: DDIM inversion plus two decodes, `steps` U-Net evaluations each, per subject. The round
trip's fidelity grows with the step count (benchmarks/results/roundtrip.md) and so does the cost,
which is why the step count is explicit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError

PREFIX = "image_dev_"
MIN_PIXELS = 20  # a region the slices barely touch gives a mean of a handful of noisy pixels


def atlas_on_slices(slice_z_mm) -> np.ndarray:
    """The atlas's region ids on the prepared axial slices, [C, H, W] in the slices' layout."""
    from ndae.baselines.voxelwise import load_atlas
    from ndae.data.preprocess import extract_axial_slices
    from ndae.data.template import output_grid

    atlas = load_atlas().astype(np.float32)
    return np.round(extract_axial_slices(atlas, output_grid(), slice_z_mm)).astype(np.int16)


def run_dae(run_dir: str | Path, device: str | None = None):
    """The EMA network and config of a run's trained DAE (`run_dir/dae/checkpoint.pt`)."""
    from ndae.model import load_checkpoint
    from ndae.model.run import resolve_device

    checkpoint = Path(run_dir) / "dae" / "checkpoint.pt"
    if not checkpoint.exists():
        raise NdaeError(f"{checkpoint}: no trained DAE in this run")
    state = load_checkpoint(checkpoint, resolve_device(device))
    return state.ema.model, state.config


def dae_slices_and_atlas(config, cache_dir: str | Path, subject: str, n_channels: int) -> tuple[list[int], np.ndarray]:
    """The prepared-slice channels the DAE sees and the atlas on them. Every prepared subject has
    the same slice positions (they are part of the cache's config), so one subject's give them."""
    from ndae.data.cache import load_prepared

    channels = list(config.model.slice_channels or range(n_channels))
    return channels, atlas_on_slices(load_prepared(cache_dir, str(subject)).slice_z_mm[channels])


def region_means(maps: np.ndarray, brain: np.ndarray, atlas_slices: np.ndarray, prefix: str = PREFIX) -> pd.DataFrame:
    """Mean of each subject's map over every atlas region (within the subject's brain) that has at
    least MIN_PIXELS pixels on the slices. `maps`, `brain`: [n, C, H, W]; `atlas_slices`: [C, H, W]."""
    from ndae.baselines.voxelwise import REGION_NAMES

    maps, brain = np.asarray(maps, np.float64), np.asarray(brain, bool)
    if maps.shape != brain.shape or maps.shape[1:] != atlas_slices.shape:
        raise NdaeError(f"image deviation features: maps {maps.shape}, brain masks {brain.shape} and atlas slices "
                        f"{atlas_slices.shape} do not match")
    columns = {}
    for region, name in REGION_NAMES.items():
        inside = atlas_slices == region
        if inside.sum() < MIN_PIXELS:
            continue
        weight = brain & inside[None]
        count = weight.reshape(len(maps), -1).sum(1)
        total = (maps * weight).reshape(len(maps), -1).sum(1)
        columns[f"{prefix}{name}"] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    if not columns:
        raise NdaeError("image deviation features: the DAE's slices cut no atlas region")
    return pd.DataFrame(columns)


def image_deviation_features(run_dir: str | Path, manifest: str | Path, cache_dir: str | Path, normative,
                             steps: int, device: str | None = None) -> pd.DataFrame:
    """`subject` + one column per atlas region: the mean image-space deviation of every subject of
    the manifest, from the run's DAE (`run_dir/dae/checkpoint.pt`) and its normative model of z_sem."""
    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.image_maps import normative_maps
    from ndae.normative.model import OutOfRangeWarning

    if int(steps) < 1:
        raise NdaeError(f"image deviation features: steps must be at least 1, got {steps}")
    model, config = run_dae(run_dir, device)
    data = load_slice_dataset(manifest, cache_dir, progress=False)
    channels, atlas = dae_slices_and_atlas(config, cache_dir, data.subjects[0], data.images.shape[1])
    with warnings.catch_warnings():  # out-of-range ages are reported by the latent scores already
        warnings.simplefilter("ignore", OutOfRangeWarning)
        maps = normative_maps(model, config, data, normative, int(steps))
    brain = data.images[:, channels] > -1.0
    table = region_means(maps, brain, atlas)
    table.insert(0, "subject", [str(s) for s in data.subjects])
    return table
