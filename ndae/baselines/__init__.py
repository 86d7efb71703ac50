"""Baselines for the NDAE deviation scores, each giving one row of features per patient for
the same cross-validated Cox comparison (`ndae.evaluation`):

1. `covariate_features`: clinical covariates only (age, sex, onset when known, site);
2. `RegionalNormativeBaseline`: regional volumes / mean intensities from the label maps →
   the project's `NormativeModel` fitted on controls → z-scores (PCNtoolkit-style);
3. `AutoencoderBaseline`: a small convolutional autoencoder on the same healthy slices →
   reconstruction error in the brain and the Mahalanobis deviation of its latent;
4. `LatentPCABaseline`: PCA of the standardised DAE `z_sem`, no normative model;
5. `BrainAgeBaseline`: ridge brain age from standardised `z_sem` (cross-fitted on controls),
   bias-corrected gap = predicted − true age;
6. `VoxelwiseNormativeBaseline`: a per-voxel normative model of the MNI-grid images (age, sex,
   site; from summable statistics) → mean z over the regions of a shipped population atlas.

Every `features(...)` returns a DataFrame with `subject` first and finite feature columns.
"""

from ndae.baselines.autoencoder import AutoencoderBaseline, ConvAutoencoder
from ndae.baselines.covariates import covariate_features
from ndae.baselines.latent import BrainAgeBaseline, LatentPCABaseline
from ndae.baselines.common import BaselineUnavailable
from ndae.baselines.regional import REGIONS, RegionalNormativeBaseline, regional_measures
from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline, load_atlas, voxelwise_features


__all__ = [
    "AutoencoderBaseline",
    "BaselineUnavailable",
    "BrainAgeBaseline",
    "ConvAutoencoder",
    "LatentPCABaseline",
    "REGIONS",
    "RegionalNormativeBaseline",
    "VoxelwiseNormativeBaseline",
    "covariate_features",
    "load_atlas",
    "regional_measures",
    "voxelwise_features",
]
