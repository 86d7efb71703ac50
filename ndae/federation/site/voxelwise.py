"""Runs AT THE SITE: the voxel-wise normative baseline (`ndae.baselines.voxelwise`) in a federated run.

What a hospital without a DAE could run, computed beside the NDAE scores so the report can say
whether the DAE adds anything over it: the site sends its controls' per-voxel sufficient
statistics (exact sums: the server's fit is the pooled fit), and later scores its own patients
against the fitted model it receives: the mean voxel z per atlas region become more columns of
the site's survival table, which never leaves the site in a federated survival run.

Per-voxel moments are not differentially private, so a private run never asks for them and a
private site refuses if asked (`ndae.federation.site.handlers`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ndae.federation.site.data import SiteData
from ndae.federation.site.statistics import covariates

__all__ = ["patient_voxelwise_features", "voxelwise_statistics"]


def _images(site: SiteData):
    """subject -> the prepared 3-D volume on the output grid, from the site's own cache."""
    from ndae.data.cache import load_prepared

    return lambda subject: load_prepared(site.prepared_dir, subject).image


def voxelwise_statistics(site: SiteData, stride: int) -> dict[str, np.ndarray]:
    """The site's controls' summable per-voxel statistics (no cross products between voxels)."""
    from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline

    rows = site.controls
    return VoxelwiseNormativeBaseline(stride=stride).statistics(
        covariates(site, rows).reset_index(drop=True), _images(site)).to_arrays()


def patient_voxelwise_features(site: SiteData, baseline) -> pd.DataFrame:
    """`subject` + `z_voxel_<region>` of the site's patients against the fitted baseline."""
    rows = site.patients
    frame = covariates(site, rows).reset_index(drop=True)
    if not len(frame):
        return pd.DataFrame({"subject": pd.Series(dtype=str)})
    return baseline.features(frame, _images(site))
