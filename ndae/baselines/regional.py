"""Baseline 2: a non-generative normative model of regional measures (PCNtoolkit-style).

Regional volumes and mean intensities come from each subject's MUSE label map on the prepared
2 mm MNI grid (volumes are therefore affinely normalised for head size). The project's
`NormativeModel` (age spline + sex, random site intercept) is fitted on the controls' measures;
a patient's features are the signed z-scores of their measures against it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ndae.baselines.common import BaselineUnavailable, check_controls, check_rows, covariate_frame
from ndae.normative.model import NormativeModel, OutOfRangeWarning

PRECENTRAL = (182, 183, 150, 151)  # precentral gyrus + its medial segment, R/L
LATERAL_VENTRICLES = (51, 52)
INTERNAL_CAPSULE = (93, 94)  # posterior limbs: the corticospinal tract runs through them
WHITE_MATTER = tuple(range(81, 89)) + (91, 92, 93, 94, 95)  # lobar WM, internal capsule, corpus callosum
CSF = (1, 4, 11, 49, 50, 51, 52)  # sulcal CSF and the ventricles: not brain tissue

REGIONS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    # name: (measure, labels); labels None = the whole brain (tissue inside the mask)
    "volume_precentral": ("volume", PRECENTRAL),
    "volume_lateral_ventricles": ("volume", LATERAL_VENTRICLES),
    "volume_whole_brain": ("volume", None),
    "volume_white_matter": ("volume", WHITE_MATTER),
    "volume_internal_capsule": ("volume", INTERNAL_CAPSULE),
    "intensity_precentral": ("intensity", PRECENTRAL),
    "intensity_internal_capsule": ("intensity", INTERNAL_CAPSULE),
    "intensity_white_matter": ("intensity", WHITE_MATTER),
}
# Without these labels the label map is not a MUSE parcellation (e.g. a binary brain mask).
REQUIRED_LABELS = PRECENTRAL[:2] + LATERAL_VENTRICLES + INTERNAL_CAPSULE


def regional_measures(labels: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None,
                      voxel_ml: float = 0.008) -> dict[str, float]:
    """Volumes (ml) and mean intensities of `REGIONS` for one subject (NaN for an absent region).

    `voxel_ml`: volume of one voxel in ml (2 mm isotropic = 0.008 ml).
    """
    labels = np.asarray(labels)
    image = np.asarray(image, dtype=np.float32)
    brain = (labels > 0) if mask is None else (np.asarray(mask) > 0)
    tissue = brain & ~np.isin(labels, CSF)
    out = {}
    for name, (measure, ids) in REGIONS.items():
        region = tissue if ids is None else np.isin(labels, ids)
        count = int(region.sum())
        if measure == "volume":
            out[name] = count * voxel_ml
        else:
            out[name] = float(image[region].mean()) if count else float("nan")
    return out


def measures_table(subjects, prepared_loader, voxel_ml: float | None = None) -> pd.DataFrame:
    """`regional_measures` for every subject; `prepared_loader(subject)` returns a
    PreparedSubject (`labels`, `image`, `mask`, `grid_affine`)."""
    rows = []
    for subject in subjects:
        prepared = prepared_loader(subject)
        size = voxel_ml
        if size is None:
            size = abs(float(np.linalg.det(np.asarray(prepared.grid_affine)[:3, :3]))) / 1000.0
        rows.append({"subject": str(subject), **regional_measures(prepared.labels, prepared.image, prepared.mask, size)})
    return pd.DataFrame(rows)


class RegionalNormativeBaseline:
    """`fit` on the controls' regional measures, `features` = z-scores for any subjects."""

    def __init__(self, min_controls: int = 8, **normative_options):
        self.min_controls = int(min_controls)
        self.normative_options = normative_options
        self.model_: NormativeModel | None = None

    def fit(self, covariates: pd.DataFrame, measures: pd.DataFrame) -> "RegionalNormativeBaseline":
        """`covariates`: the controls' subject, site, age, sex; `measures`: their `REGIONS`."""
        covariates = covariate_frame(covariates)
        check_rows("regional baseline", len(covariates), measures)
        check_controls("the regional normative baseline", np.ones(len(covariates), bool), self.min_controls)
        values = measures[list(REGIONS)].to_numpy(float)
        present = _labels_present(measures)
        if not present:
            raise BaselineUnavailable(
                "the regional normative baseline needs MUSE label maps (the manifest's `mask` column) with the "
                f"precentral, lateral-ventricle and internal-capsule labels {REQUIRED_LABELS}; the controls' "
                "label maps lack them"
            )
        finite = np.isfinite(values).all(0)
        varies = np.nanstd(values, axis=0) > 1e-9
        self.features_ = [name for name, ok in zip(REGIONS, finite & varies) if ok]
        if not self.features_:
            raise BaselineUnavailable("the regional normative baseline: no regional measure varies across controls")
        columns = [list(REGIONS).index(name) for name in self.features_]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            self.model_ = NormativeModel(**self.normative_options).fit(
                covariates, values[:, columns], feature_names=self.features_
            )
        return self

    def features(self, covariates: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
        """`subject` + one `z_<measure>` column per measure (NaN measures → z = 0: typical)."""
        if self.model_ is None:
            raise BaselineUnavailable("the regional normative baseline is not fitted")
        covariates = covariate_frame(covariates)
        check_rows("regional baseline", len(covariates), measures)
        values = measures[self.features_].to_numpy(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            mean, _ = self.model_.predict(covariates)
            z = self.model_.z_scores(covariates, np.where(np.isfinite(values), values, mean))
        table = pd.DataFrame(z, columns=[f"z_{name}" for name in self.features_])
        table.insert(0, "subject", covariates["subject"].to_numpy())
        return table


def _labels_present(measures: pd.DataFrame) -> bool:
    """Precentral, ventricle and capsule volumes non-zero for most controls."""
    needed = ["volume_precentral", "volume_lateral_ventricles", "volume_internal_capsule"]
    return bool((measures[needed].to_numpy(float) > 0).all(1).mean() >= 0.5)
