"""Baseline 6: a voxel-wise normative model of the prepared MNI-grid images, summarised by atlas.

What a hospital without segmentations can run (and what the NDAE paper compares against): each
voxel's intensity on the 2 mm MNI grid is modelled from the controls' age, sex and site with the
project's `NormativeModel` (age spline + sex, random site intercept), one model per voxel, fitted
from summed sufficient statistics (XᵀX, XᵀY, ΣY, ΣY² per voxel, per-site sums for the site
intercept). A site sends `VoxelwiseNormativeBaseline.statistics(...)` of its own controls; the
sum over sites gives exactly the pooled fit (tests/test_voxelwise_baseline.py). A subject's
features are the mean voxel z-score over each region of a population atlas (`load_atlas`), so no
per-subject label map is needed.

The atlas (`ndae/data/atlas/`, built once by scripts/build_atlas.py) is the voxel-wise majority
vote of the shipped IXI DLMUSE label maps, grouped into `ATLAS_REGIONS`, on the output grid those
label maps were moved to by the project's preprocessing (ANTs affine, `genericLabel`
interpolation). The voxels modelled are the atlas's brain voxels: fixed by the atlas, not by any
site's data, so every site sums the same voxels.

Cost: the per-voxel random-intercept EM runs per voxel and iteration, so all 235k brain voxels at
2 mm × 200 iterations take minutes (timings: docs/evaluation.md). By default every second voxel
along each axis is modelled (`stride=2`: 29k voxels, a regular 1-in-8 sample of every region) with
50 EM iterations, 32 times less work. A region's mean z over that sample estimates its mean over
all voxels; `stride=1` models every voxel.

High-pass variant (`highpass_sigma`, e.g. `HIGHPASS_SIGMA` = 4 voxels = 8 mm): the same atlas and
the same per-voxel normative model, fitted and scored on high-passed images: each image minus its
Gaussian blur computed within the brain (normalised convolution, blur(image·mask) / blur(mask),
mask = the atlas's brain voxels where the image is above its background of -1, so background does
not bleed into the cortex; `highpass`). It exists so that a gain of the NDAE over the raw
voxel-wise baseline that is only spatial filtering shows: smooth intensity fields (scanner bias,
global contrast, site offsets that survive normalisation) move every raw voxel z of a region
together, while the high-passed voxels keep the local contrast (cortex against its neighbourhood)
where focal atrophy shows. The high-pass of a subject uses that subject's image alone, so it
runs at each hospital and the per-site sufficient statistics still sum exactly to the pooled
fit. Its features are `z_highpass_voxel_<region>` (`HIGHPASS_FEATURE_PREFIX`). The blur is two
Gaussian filters over the box around the atlas's brain per image (its cost: docs/evaluation.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ndae.baselines.common import BaselineUnavailable, check_controls, check_rows, covariate_frame
from ndae.data.template import output_grid
from ndae.errors import NdaeError
from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel, OutOfRangeWarning
from ndae.normative.sufficient_stats import SufficientStats

ATLAS_PATH = Path(__file__).resolve().parents[1] / "data" / "atlas" / "ixi_dlmuse_regions.nii.gz"

# Atlas region id → (name, MUSE label ids). Disjoint; MUSE ids not listed (other than CSF, 1)
# form "other_brain". Ids follow the MUSE atlas (the DLMUSE label maps of the IXI data).
ATLAS_REGIONS: dict[int, tuple[str, tuple[int, ...]]] = {
    1: ("precentral", (150, 151, 182, 183)),  # precentral gyrus + its medial segment, R/L
    2: ("postcentral", (148, 149, 176, 177)),
    3: ("frontal", (104, 105, 118, 119, 120, 121, 124, 125, 136, 137, 140, 141, 142, 143, 146, 147,
                    152, 153, 162, 163, 164, 165, 178, 179, 190, 191, 192, 193, 204, 205)),  # cortex, without precentral
    4: ("temporal", (116, 117, 122, 123, 132, 133, 154, 155, 170, 171, 180, 181, 184, 185, 200, 201,
                     202, 203, 206, 207)),
    5: ("ventricles", (4, 11, 49, 50, 51, 52)),
    6: ("cerebellum", (38, 39, 40, 41, 71, 72, 73)),
    7: ("brainstem", (35,)),
    8: ("internal_capsule", (93, 94)),  # posterior limbs: the corticospinal tract runs through them
    9: ("white_matter", (81, 82, 83, 84, 85, 86, 87, 88, 91, 92, 95)),  # lobar WM, anterior limbs, corpus callosum
}
OTHER_BRAIN = 10
SULCAL_CSF = (1,)  # MUSE 1: CSF outside the ventricles, not brain tissue
REGION_NAMES: dict[int, str] = {**{k: name for k, (name, _) in ATLAS_REGIONS.items()}, OTHER_BRAIN: "other_brain"}
# Summaries: each named region, and the whole brain = all tissue (everything but the ventricles).
SUMMARIES: dict[str, tuple[int, ...]] = {
    **{name: (k,) for k, (name, _) in ATLAS_REGIONS.items()},
    "whole_brain": tuple(k for k in REGION_NAMES if k != 5),
}
FEATURE_PREFIX = "z_voxel_"
HIGHPASS_FEATURE_PREFIX = "z_highpass_voxel_"  # not starting with FEATURE_PREFIX: the raw columns stay apart
HIGHPASS_SIGMA = 4.0  # voxels of the 2 mm grid: 8 mm
BACKGROUND = -1.0  # the prepared images' value outside the brain (ndae.data.preprocess)


def muse_to_regions(labels: np.ndarray) -> np.ndarray:
    """One subject's MUSE label map → atlas region ids (0 = background or sulcal CSF)."""
    labels = np.asarray(labels)
    regions = np.where((labels > 0) & ~np.isin(labels, SULCAL_CSF), OTHER_BRAIN, 0).astype(np.int8)
    for region, (_, ids) in ATLAS_REGIONS.items():
        regions[np.isin(labels, ids)] = region
    return regions


def majority_vote(region_maps: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per voxel, the region (0 = outside the brain included) most subjects put there; ties go to
    the lower id. Returns (atlas, number of maps)."""
    counts, total = None, 0
    for regions in region_maps:
        regions = np.asarray(regions)
        if counts is None:
            counts = np.zeros((OTHER_BRAIN + 1, *regions.shape), np.int32)
        elif regions.shape != counts.shape[1:]:
            raise NdaeError(f"majority vote: a label map of shape {regions.shape}, expected {counts.shape[1:]}")
        for region in range(OTHER_BRAIN + 1):
            counts[region] += regions == region
        total += 1
    if counts is None:
        raise NdaeError("majority vote: no label maps given")
    return counts.argmax(0).astype(np.int8), total


def load_atlas(path: str | Path | None = None) -> np.ndarray:
    """The region atlas (int8, output-grid shape), checked to lie on the project's MNI grid."""
    import nibabel as nib

    path = Path(path) if path is not None else ATLAS_PATH
    if not path.exists():
        raise BaselineUnavailable(f"the voxel-wise baseline's atlas {path} is missing (build it: scripts/build_atlas.py)")
    image = nib.load(str(path))
    if not output_grid().matches(image):
        raise NdaeError(f"{path}: the atlas is not on the project's {output_grid().shape} 2 mm MNI grid")
    atlas = np.asarray(image.dataobj).astype(np.int8)
    unknown = sorted(set(np.unique(atlas).tolist()) - {0, *REGION_NAMES})
    if unknown:
        raise NdaeError(f"{path}: unknown atlas region ids {unknown}")
    return atlas


ImageSource = np.ndarray | Callable[[str], np.ndarray]


def highpass(image: np.ndarray, brain: np.ndarray, sigma: float) -> np.ndarray:
    """`image` minus its Gaussian blur (sd `sigma` voxels) computed within the brain: the blur is
    the normalised convolution blur(image·mask) / blur(mask), mask = `brain` where the image is
    above the background (-1), so nothing outside the mask (background, skull, voxels beyond the
    atlas) enters it. Outside the grid counts as outside the mask, so cropping both arrays to a box
    around the mask gives the same values inside it. Where no mask voxel is within reach of the
    kernel the blur is the image itself (high-pass 0). One subject's image only."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, np.float32)
    mask = (np.asarray(brain, bool) & (image > BACKGROUND + 1e-4)).astype(np.float32)
    numerator = gaussian_filter(image * mask, float(sigma), mode="constant", cval=0.0)
    denominator = gaussian_filter(mask, float(sigma), mode="constant", cval=0.0)
    blur = np.divide(numerator, denominator, out=image.copy(), where=denominator > 1e-6)
    return image - blur


# Voxels whose variance among the controls is below this fraction of the median voxel's are
# left out of the region means (see `fit_stats`).
MIN_RELATIVE_VARIANCE = 1e-3


class VoxelwiseNormativeBaseline:
    """`statistics` / `fit` on the controls' images, `features` = mean voxel z per atlas region.

    `images` is either an array (subjects × grid) in the rows' order or `loader(subject) -> image`
    on the output grid (e.g. `lambda s: load_prepared(cache, s).image`); images are read in
    chunks of `chunk` subjects so memory stays at chunk × voxels. `highpass_sigma` (voxels; None:
    the raw images): fitted and scored on each image's within-brain high-pass (`highpass`) instead."""

    def __init__(self, atlas: np.ndarray | None = None, design: DesignSpec | None = None,
                 min_controls: int = 8, chunk: int = 16, stride: int = 2, n_iterations: int = 50,
                 highpass_sigma: float | None = None, **normative_options):
        self.atlas = load_atlas() if atlas is None else np.asarray(atlas).astype(np.int8)
        if self.atlas.shape != output_grid().shape:
            raise NdaeError(f"voxel-wise baseline: atlas shape {self.atlas.shape}, expected {output_grid().shape}")
        if int(stride) < 1:
            raise NdaeError(f"voxel-wise baseline: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        sampled = np.zeros(self.atlas.shape, bool)
        sampled[::self.stride, ::self.stride, ::self.stride] = True
        # what is modelled: fixed by the atlas and the stride, the same at every site
        self.voxels = np.flatnonzero((self.atlas > 0).reshape(-1) & sampled.reshape(-1))
        self.voxel_region = self.atlas.reshape(-1)[self.voxels]
        if highpass_sigma is not None and not (np.isfinite(highpass_sigma) and float(highpass_sigma) > 0):
            raise NdaeError(f"voxel-wise baseline: highpass_sigma must be > 0 voxels (or None), got {highpass_sigma}")
        self.highpass_sigma = None if highpass_sigma is None else float(highpass_sigma)
        self.feature_prefix = FEATURE_PREFIX if self.highpass_sigma is None else HIGHPASS_FEATURE_PREFIX
        if self.highpass_sigma is not None and len(self.voxels):
            # the high-pass is computed on the box around the atlas's brain (exact: see `highpass`)
            corners = np.argwhere(self.atlas > 0)
            self._box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(corners.min(0), corners.max(0)))
            self._box_brain = self.atlas[self._box] > 0
            coordinates = np.unravel_index(self.voxels, self.atlas.shape)
            self._box_voxels = np.ravel_multi_index(
                tuple(c - s.start for c, s in zip(coordinates, self._box)), self._box_brain.shape)
        self.design = design or DesignSpec()
        self.min_controls = int(min_controls)
        self.chunk = max(1, int(chunk))
        self.normative_options = {"n_iterations": int(n_iterations), **normative_options}
        self.model_: NormativeModel | None = None
        present = [name for name, ids in SUMMARIES.items() if np.isin(self.voxel_region, ids).any()]
        self.summaries = {name: SUMMARIES[name] for name in present}

    # -- summable statistics -----------------------------------------------------------------------
    def statistics(self, covariates: pd.DataFrame, images: ImageSource) -> SufficientStats:
        """Sufficient statistics of these controls' voxels (a site's message); summable with `+`.
        Per-voxel cross products are not kept (only ΣY², their diagonal)."""
        covariates = covariate_frame(covariates)
        total = None
        for start, rows in self._chunks(covariates, images):
            stats = SufficientStats.from_data(covariates.iloc[start:start + len(rows)], rows, self.design,
                                              cross_products=False)
            total = stats if total is None else total + stats
        if total is None:  # no controls: an empty statistic still sums
            total = SufficientStats.from_data(covariates, np.zeros((0, len(self.voxels))), self.design, cross_products=False)
        return total

    def fit_stats(self, stats: SufficientStats) -> "VoxelwiseNormativeBaseline":
        if stats.n_features != len(self.voxels):
            raise NdaeError(f"voxel-wise statistics have {stats.n_features} voxels; this atlas models {len(self.voxels)}")
        if stats.n < self.min_controls:
            raise BaselineUnavailable(f"the voxel-wise normative baseline needs at least {self.min_controls} controls, got {stats.n:g}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            self.model_ = NormativeModel.from_stats(stats, **self.normative_options)
        # A voxel that (almost) never varies among the controls (background at the atlas' edge, a
        # brain that does not fill the population atlas) has a near-zero normative sd: any change
        # there gives an enormous z that swamps its region's mean. Such voxels carry no normative
        # information; they are left out of the region means (decided from the summed statistics
        # alone, so every site would leave out the same voxels).
        mean = np.asarray(stats.sum_y, float) / stats.n
        variance = np.maximum(np.asarray(stats.sum_y2, float) / stats.n - mean**2, 0.0)
        self.informative_ = variance > MIN_RELATIVE_VARIANCE * max(float(np.median(variance)), 1e-12)
        return self

    def fit(self, covariates: pd.DataFrame, images: ImageSource) -> "VoxelwiseNormativeBaseline":
        """Fit on the controls given (pooled: the same as summing per-site `statistics`)."""
        covariates = covariate_frame(covariates)
        check_controls("the voxel-wise normative baseline", np.ones(len(covariates), bool), self.min_controls)
        return self.fit_stats(self.statistics(covariates, images))

    # -- scoring ----------------------------------------------------------------------------------
    def z_maps(self, covariates: pd.DataFrame, images: ImageSource) -> Iterable[tuple[int, np.ndarray]]:
        """(first row, z of the chunk's subjects × modelled voxels), chunk by chunk."""
        if self.model_ is None:
            raise BaselineUnavailable("the voxel-wise normative baseline is not fitted")
        covariates = covariate_frame(covariates)
        for start, rows in self._chunks(covariates, images):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OutOfRangeWarning)
                yield start, self.model_.z_scores(covariates.iloc[start:start + len(rows)], rows)

    def features(self, covariates: pd.DataFrame, images: ImageSource) -> pd.DataFrame:
        """`subject` + one `z_voxel_<region>` column per atlas summary: the mean voxel z there
        (`z_highpass_voxel_<region>` for the high-pass variant)."""
        covariates = covariate_frame(covariates)
        informative = self.informative_ if self.model_ is not None else np.ones(len(self.voxels), bool)
        members = {}
        for name, ids in self.summaries.items():  # the same columns whatever the data
            region = np.isin(self.voxel_region, ids)
            members[name] = region & informative if (region & informative).any() else region
        values = np.zeros((len(covariates), len(members)))
        for start, z in self.z_maps(covariates, images):
            for column, mask in enumerate(members.values()):
                values[start:start + len(z), column] = z[:, mask].mean(1)
        table = pd.DataFrame(values, columns=[self.feature_prefix + name for name in members])
        table.insert(0, "subject", covariates["subject"].to_numpy())
        return table

    # -- helpers ----------------------------------------------------------------------------------
    def _chunks(self, covariates: pd.DataFrame, images: ImageSource):
        n = len(covariates)
        if not callable(images):
            images = np.asarray(images)
            check_rows("voxel-wise baseline", n, images)
        grid = output_grid().shape
        for start in range(0, n, self.chunk):
            stop = min(n, start + self.chunk)
            rows = []
            for row in range(start, stop):
                image = images(str(covariates.at[row, "subject"])) if callable(images) else images[row]
                image = np.asarray(image, dtype=np.float32)
                if image.shape != grid:
                    raise NdaeError(f"voxel-wise baseline: the image of {covariates.at[row, 'subject']} has shape "
                                    f"{image.shape}, expected the output grid {grid}")
                rows.append(self._voxel_values(image))
            block = np.stack(rows).astype(np.float64)
            if not np.all(np.isfinite(block)):
                bad = covariates["subject"].iloc[start:stop][~np.isfinite(block).all(1)].tolist()
                raise NdaeError(f"voxel-wise baseline: non-finite voxels in the images of {bad}")
            yield start, block

    def _voxel_values(self, image: np.ndarray) -> np.ndarray:
        """The modelled voxels of one subject's image (high-passed for the high-pass variant)."""
        if self.highpass_sigma is None or not len(self.voxels):
            return image.reshape(-1)[self.voxels]
        return highpass(image[self._box], self._box_brain, self.highpass_sigma).reshape(-1)[self._box_voxels]


def voxelwise_features(controls: pd.DataFrame, control_images: ImageSource, subjects: pd.DataFrame,
                       subject_images: ImageSource, **options) -> pd.DataFrame:
    """Fit on `controls`, score `subjects` (both: subject, site, age, sex rows)."""
    return VoxelwiseNormativeBaseline(**options).fit(controls, control_images).features(subjects, subject_images)


__all__: Sequence[str] = (
    "ATLAS_PATH", "ATLAS_REGIONS", "HIGHPASS_FEATURE_PREFIX", "HIGHPASS_SIGMA", "SUMMARIES",
    "VoxelwiseNormativeBaseline", "highpass", "load_atlas", "majority_vote", "muse_to_regions", "voxelwise_features",
)
