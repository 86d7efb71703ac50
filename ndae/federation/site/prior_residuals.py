"""Runs AT THE SITE: the regional normative deviations from the diffusion prior in a federated run
(`ndae.deviation.prior_residuals`, the NDAE's image-space score).

1. After the normative model of z_sem is broadcast, the site computes the signed residual
   x − x̂₀(x_t | z) of its controls with the global DAE, for z = the normative z_sem of their
   covariates and their own z_sem, averaged per atlas region (`prior_<region>`,
   `prior_own_<region>`). Only the summable sufficient statistics of these region means leave
   (`prior_residual_statistics`; in a private run clipped and noised, `private_releases`), so the
   server fits the residuals' normative model exactly as a pooled fit would.
2. With that model (broadcast in the deviations query) the site computes the same region means of
   its patients and z-scores them (`z_prior_<region>`, `z_prior_own_<region>`): more deviation
   scores of the patients' table, which leaves the site only where pooled rows are allowed.

The raw per-subject residuals never leave the site. The swap test (how far x̂₀ moves when z_sem is
swapped) is a mean over the site's subjects: sent only in non-private runs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ndae.federation.site.data import SiteData
from ndae.federation.site.statistics import covariates

__all__ = ["PriorRegionMeans", "prior_region_means", "prior_region_columns", "prior_residual_statistics",
           "patient_prior_features", "RAW_PREFIX", "Z_PREFIX"]

RAW_PREFIX = "prior_"  # prior_<region> and prior_own_<region>: region means, never sent
Z_PREFIX = "z_"  # the patients' features: z_prior_<region>, z_prior_own_<region>


class PriorRegionMeans:
    """Region means of the selected subjects (`table`: subject + prior_* + prior_own_* columns,
    in the atlas's region order) and the swap test over them (mean relative change, subjects)."""

    def __init__(self, table: pd.DataFrame, swap_relative_change: float | None, subjects: int):
        self.table, self.swap_relative_change, self.subjects = table, swap_relative_change, subjects

    @property
    def columns(self) -> list[str]:
        return [c for c in self.table.columns if c != "subject"]

    @property
    def values(self) -> np.ndarray:
        return self.table[self.columns].to_numpy(np.float64)


def prior_region_means(site: SiteData, weights, dae_config: dict, normative, rows: np.ndarray,
                       device: str = "auto") -> PriorRegionMeans:
    """The selected subjects' residual region means with the global EMA weights, conditioned on
    the normative z_sem of `normative` (the broadcast model of z_sem) and on their own z_sem."""
    from ndae.deviation.prior_residuals import prior_residual_maps, prior_residual_regions
    from ndae.federation.records import record_to_dae
    from ndae.federation.site.training import build_dae
    from ndae.model.run import resolve_device
    from ndae.normative.model import OutOfRangeWarning

    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    config = model.config
    images = site.data.images
    channels, atlas = _channels_and_atlas(site, config)
    frame = covariates(site, rows).reset_index(drop=True)
    if not len(frame):
        return _empty_means(images, channels, atlas)
    with warnings.catch_warnings():  # out-of-range ages are reported by the latent scores already
        warnings.simplefilter("ignore", OutOfRangeWarning)
        z_normative = normative.predict(frame)[0]
    selected = images[rows]
    ages = np.asarray(site.data.ages, np.float32)[rows] if config.model.age_conditioned else None
    residuals = prior_residual_maps(ema.model, config, selected, z_normative, ages, out_size=selected.shape[2:])
    table = prior_residual_regions(residuals, selected[:, channels] > -1.0, atlas)
    # Each subject's row must be a bounded function of that subject alone: clipping bounds a row's
    # norm but not a NaN or an infinity, and one non-finite row makes the whole (noised) sum
    # non-finite. The server chooses the DAE and the normative model (a z_sem of 1e38 for one sex
    # turns that sex's residuals into NaN in float32), so non-finite values would answer "is any
    # such subject here?" outside the accounted release. They count as 0, whatever the others are.
    table = table.where(np.isfinite(table.to_numpy(np.float64)), 0.0)
    table.insert(0, "subject", frame["subject"].to_numpy())
    return PriorRegionMeans(table, residuals.swap.get("relative_change"), len(frame))


def _channels_and_atlas(site: SiteData, config):
    from ndae.deviation.image_features import dae_slices_and_atlas

    # The atlas regions the slices cut follow from the slice positions (the preset's), not from data.
    return dae_slices_and_atlas(config, site.prepared_dir, site.data.subjects[0], site.data.images.shape[1])


def _empty_means(images: np.ndarray, channels: list[int], atlas: np.ndarray) -> PriorRegionMeans:
    from ndae.deviation.prior_residuals import prior_residual_regions

    # region_means cannot reshape zero rows: the columns of one blank row, then no row
    blank = images[:1, channels]
    empty = prior_residual_regions(_no_residuals(blank), np.zeros(blank.shape, bool), atlas).iloc[:0]
    empty.insert(0, "subject", pd.Series(dtype=str))
    return PriorRegionMeans(empty, None, 0)


def prior_region_columns(site: SiteData, dae_config: dict) -> list[str]:
    """The region columns (`prior_<region>`, `prior_own_<region>`) this site computes for a DAE
    config: the atlas regions its slices cut, known before any subject is read."""
    from ndae.model import DAEConfig

    channels, atlas = _channels_and_atlas(site, DAEConfig.from_dict(dae_config))
    return _empty_means(site.data.images, channels, atlas).columns


def _no_residuals(shape_like: np.ndarray):
    """An empty PriorResiduals (a site without subjects in this group): region columns, no rows."""
    from ndae.deviation.prior_residuals import LEVELS, NORMATIVE, OWN, PriorResiduals

    empty = np.zeros(shape_like.shape, np.float32)
    return PriorResiduals(maps={NORMATIVE: empty, OWN: empty}, swap={}, levels=LEVELS, draws=0)


def prior_residual_statistics(site: SiteData, means: PriorRegionMeans, design: dict) -> dict[str, np.ndarray]:
    """The controls' summable sufficient statistics of their region means (`means` of the
    controls); no row leaves the site. Exact sums: a non-private run."""
    from ndae.normative import DesignSpec, SufficientStats

    frame = covariates(site, site.controls).reset_index(drop=True)
    stats = SufficientStats.from_data(frame, means.values, DesignSpec.from_dict(design), site_column="site")
    return stats.to_arrays()


def patient_prior_features(site: SiteData, means: PriorRegionMeans, residual_model) -> pd.DataFrame:
    """`subject` + the patients' region means z-scored against the residuals' normative model
    (`z_prior_<region>`, `z_prior_own_<region>`); `means` are the patients'."""
    from ndae.errors import NdaeError
    from ndae.normative.model import OutOfRangeWarning

    names = list(residual_model.feature_names or [])
    if names != means.columns:
        raise NdaeError(f"prior residual model message: its regions {names} are not this site's {means.columns}")
    frame = covariates(site, site.patients).reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        z = residual_model.z_scores(frame, means.values) if len(frame) else np.zeros((0, len(names)))
    z = np.where(np.isfinite(z), z, 0.0)  # as the region means: one patient's value never turns a sum non-finite
    features = pd.DataFrame(z, columns=[Z_PREFIX + name for name in names])
    features.insert(0, "subject", means.table["subject"].to_numpy())
    return features
