"""The five baselines: one finite row per subject, computed from controls only, and each able to
see the effect it is built for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ndae.baselines import (
    AutoencoderBaseline, BaselineUnavailable, BrainAgeBaseline, LatentPCABaseline, RegionalNormativeBaseline,
    covariate_features, regional_measures,
)
from ndae.baselines.autoencoder import AutoencoderTraining
from ndae.baselines.regional import REGIONS
from ndae.testing.toy_cohort import toy_subject


def _covariates(n: int, rng: np.random.Generator, sites: int = 2) -> pd.DataFrame:
    return pd.DataFrame({
        "subject": [f"S{i:02d}" for i in range(n)],
        "site": [f"site{i % sites + 1}" for i in range(n)],
        "age": rng.uniform(30, 80, n).round(1),
        "sex": np.where(rng.random(n) < 0.5, "F", "M"),
    })


def test_covariate_features_code_sex_onset_and_site():
    rows = pd.DataFrame({"subject": ["a", "b", "c", "d", "e"], "age": [50, 60, 70, 55, 65],
                         "sex": ["M", "F", "F", "M", "M"], "site": ["s1", "s1", "s1", "s2", "s2"],
                         "onset": ["bulbar", "limb", "Bulbar", "limb", "limb"]})
    table, features = covariate_features(rows)
    assert list(table["subject"]) == list("abcde")
    assert table["sex_female"].tolist() == [0, 1, 1, 0, 0]
    assert table["onset_bulbar"].tolist() == [1, 0, 1, 0, 0]
    assert table["site_s2"].tolist() == [0, 0, 0, 1, 1] and "site_s1" not in table  # largest site: reference
    assert features == ["age", "sex_female", "onset_bulbar", "site_s2"]
    # no onset column → no onset feature; a site below min_site_size is pooled into the reference
    table, features = covariate_features(rows.drop(columns="onset"), min_site_size=3)
    assert features == ["age", "sex_female"]


def test_regional_measures_count_label_voxels():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[1:3, 1:3, 1:3] = 182  # 8 voxels precentral
    labels[5:7, 5:7, 5] = 51  # 4 voxels ventricle
    labels[8, 8, 8] = 81  # white matter
    labels[0, 9, 0] = 1  # sulcal CSF: in the mask, not tissue
    image = np.zeros(labels.shape, np.float32)
    image[labels == 182] = 0.5
    measures = regional_measures(labels, image, voxel_ml=0.008)
    assert set(measures) == set(REGIONS)
    assert measures["volume_precentral"] == pytest.approx(8 * 0.008)
    assert measures["volume_lateral_ventricles"] == pytest.approx(4 * 0.008)
    assert measures["volume_whole_brain"] == pytest.approx((8 + 1) * 0.008)  # without ventricles and CSF
    assert measures["intensity_precentral"] == pytest.approx(0.5)
    assert measures["volume_white_matter"] == pytest.approx(0.008)
    assert np.isnan(measures["intensity_internal_capsule"])  # absent region


@pytest.fixture(scope="module")
def toy_measures():
    """Regional measures of 12 toy controls and 3 patients of rising severity."""
    rng = np.random.default_rng(0)
    covariates = _covariates(15, rng)
    severity = np.r_[np.zeros(12), 0.3, 0.6, 1.0]
    rows = [regional_measures(*toy_subject(a, s, np.random.default_rng(i))[::-1])
            for i, (a, s) in enumerate(zip(covariates["age"], severity))]
    return covariates, pd.DataFrame(rows), severity


def test_regional_normative_baseline_gives_z_scores_that_see_atrophy(toy_measures):
    covariates, measures, severity = toy_measures
    controls = severity == 0
    baseline = RegionalNormativeBaseline().fit(covariates[controls], measures[controls].reset_index(drop=True))
    features = baseline.features(covariates, measures)
    assert list(features["subject"]) == list(covariates["subject"])
    assert features.shape[1] == 1 + len(baseline.features_) and np.isfinite(features.iloc[:, 1:].to_numpy()).all()
    ventricles = features["z_volume_lateral_ventricles"].to_numpy()
    assert np.abs(ventricles[controls]).max() < 3.5  # controls are typical ...
    assert ventricles[-1] > 4 and ventricles[-1] > ventricles[-3]  # ... the severe patient is not


def test_regional_baseline_is_unavailable_without_muse_labels(toy_measures):
    covariates, measures, _ = toy_measures
    binary = measures.copy()
    binary[["volume_precentral", "volume_lateral_ventricles", "volume_internal_capsule"]] = 0.0
    with pytest.raises(BaselineUnavailable, match="MUSE label maps"):
        RegionalNormativeBaseline().fit(covariates, binary)


def test_autoencoder_baseline_trains_and_scores_every_subject():
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    n, covariates = 12, _covariates(12, rng)
    yy, xx = np.mgrid[:48, :40]
    blob = (((yy - 24) / 18) ** 2 + ((xx - 20) / 15) ** 2 <= 1)
    images = np.where(blob, 0.3, -1.0)[None, None].repeat(n, 0).repeat(2, 1).astype(np.float32)
    images += np.where(blob, rng.normal(0, 0.05, images.shape), 0).astype(np.float32)
    masks = blob[None, None].repeat(n, 0).astype(np.uint8)
    odd = images.copy()
    odd[-1, :, 20:30, 15:25] = 1.0  # a bright lesion the healthy autoencoder has not seen
    baseline = AutoencoderBaseline(latent_dim=4, training=AutoencoderTraining(steps=60, batch_size=8),
                                   min_controls=8)
    baseline.fit(images[:-1], masks[:-1], covariates.iloc[:-1])
    assert np.mean(baseline.losses_[-10:]) < np.mean(baseline.losses_[:10])
    features = baseline.features(odd, masks, covariates)
    assert list(features["subject"]) == list(covariates["subject"])
    assert np.isfinite(features.iloc[:, 1:].to_numpy()).all()
    errors = features["ae_reconstruction_error"].to_numpy()
    assert errors[-1] > errors[:-1].max()


def test_latent_pca_is_fitted_on_controls_only():
    rng = np.random.default_rng(2)
    controls = rng.normal(5.0, 1.0, (20, 8)) * np.arange(1, 9)
    patients = rng.normal(5.0, 1.0, (6, 8)) * np.arange(1, 9) + 30.0
    baseline = LatentPCABaseline(n_components=3).fit(controls)
    features = baseline.features([f"s{i}" for i in range(26)], np.vstack([controls, patients]))
    assert features.columns.tolist() == ["subject", "pca_1", "pca_2", "pca_3"]
    scores = features.iloc[:, 1:].to_numpy()
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:20].mean(0), 0.0, atol=1e-9)  # centred on the controls
    assert np.abs(scores[20:]).max() > np.abs(scores[:20]).max()
    # few controls: no more components than controls − 1
    assert LatentPCABaseline(n_components=5).fit(controls[:4]).features(["a"], controls[:1]).shape[1] == 1 + 3


def test_brain_age_gap_is_cross_fitted_and_bias_corrected():
    rng = np.random.default_rng(3)
    n_controls, n_patients = 40, 5
    age = np.r_[rng.uniform(20, 80, n_controls), np.full(n_patients, 50.0)]
    looks_like = age.copy()
    looks_like[n_controls:] = 75.0  # patients' latents look 25 years older than they are
    direction = rng.normal(size=16)
    z = np.outer(looks_like, direction) / 10 + rng.normal(0, 0.3, (len(age), 16)) + 100.0
    groups = ["control"] * n_controls + ["als"] * n_patients
    baseline = BrainAgeBaseline(folds=5)
    features = baseline.fit_features([f"s{i}" for i in range(len(age))], z, age, groups)
    assert features.columns.tolist() == ["subject", "brain_age", "brain_age_gap"]
    assert np.isfinite(features[["brain_age", "brain_age_gap"]].to_numpy()).all()
    gap = features["brain_age_gap"].to_numpy()
    assert baseline.control_mae_ < 5 and baseline.control_r_ > 0.9
    assert abs(gap[:n_controls].mean()) < 1.0
    assert gap[n_controls:].min() > 15


def test_brain_age_needs_controls():
    with pytest.raises(BaselineUnavailable, match="controls"):
        BrainAgeBaseline().fit_features(["a", "b"], np.zeros((2, 3)), [50, 60], ["als", "als"])
