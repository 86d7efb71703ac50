"""Prepared subjects as arrays ready for the DAE: `load_slice_dataset`.

Any manifest in the project's format works: subjects are prepared on first use into a cache
(`ndae.data.cache`; by default the manifest's own, where `ndae prepare` wrote), then their
axial slices are stacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.data.cache import default_cache_dir, load_prepared, prepare_manifest
from ndae.data.manifest import read_manifest
from ndae.data.preprocess import PrepareConfig


@dataclass
class SliceDataset:
    images: np.ndarray  # [n, C, H, W] float32 in [-1, 1], background -1
    masks: np.ndarray  # [n, 1, H, W] uint8 brain mask (union over the C slices)
    ages: np.ndarray
    sexes: np.ndarray  # "M" / "F"
    subjects: np.ndarray
    sites: np.ndarray
    groups: np.ndarray
    manifest: pd.DataFrame  # the validated manifest rows, in the same order

    def __len__(self) -> int:
        return len(self.subjects)

    def subset(self, selector) -> "SliceDataset":
        """Rows where `selector` (boolean mask or indices) holds, e.g. `ds.subset(ds.groups == "control")`."""
        index = np.arange(len(self))[selector]
        return SliceDataset(
            self.images[index], self.masks[index], self.ages[index], self.sexes[index],
            self.subjects[index], self.sites[index], self.groups[index],
            self.manifest.iloc[index].reset_index(drop=True),
        )


def load_slice_dataset(
    manifest_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    config: PrepareConfig = PrepareConfig(),
    *,
    manifest: pd.DataFrame | None = None,
    progress: bool = True,
) -> SliceDataset:
    """Prepare (or reuse) every subject of a manifest and stack their slices."""
    if manifest is None:
        if manifest_path is None:
            raise ValueError("give a manifest path or a manifest DataFrame")
        manifest = read_manifest(manifest_path)
    if cache_dir is None:
        if manifest_path is None:
            raise ValueError("give cache_dir when passing a manifest DataFrame")
        cache_dir = default_cache_dir(manifest_path)
    manifest = manifest.reset_index(drop=True)
    prepare_manifest(manifest, cache_dir, config, progress=progress)
    images, masks = [], []
    for subject in manifest["subject"]:
        prepared = load_prepared(cache_dir, subject)
        images.append(prepared.slices)
        masks.append((prepared.slices > -1.0).any(axis=0, keepdims=True))
    return SliceDataset(
        images=np.stack(images).astype(np.float32),
        masks=np.stack(masks).astype(np.uint8),
        ages=manifest["age"].to_numpy(float),
        sexes=manifest["sex"].to_numpy(str),
        subjects=manifest["subject"].to_numpy(str),
        sites=manifest["site"].to_numpy(str),
        groups=manifest["group"].to_numpy(str),
        manifest=manifest,
    )
