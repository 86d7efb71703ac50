"""The disease model, measured from the simulated image and label map of one real anatomy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ndae.cohort import anatomy as landmarks
from ndae.cohort.anatomy import load_anatomy
from ndae.cohort.deformation import jacobian_determinant
from ndae.cohort.disease import DiseaseModel, PatientPhenotype, apply_disease
from ndae.cohort.render import render, to_magnitude
from ndae.errors import InvalidImageError

SEVERITIES = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def anatomy(ixi_dir):
    demographics = pd.read_csv(ixi_dir / "demographics.csv").sort_values("age")
    subject = demographics.iloc[len(demographics) // 2]["subject"]  # a middle-aged adult
    source = load_anatomy(ixi_dir / "T1" / f"{subject}_T1.nii.gz", ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz")
    return to_magnitude(source)[0]


def measure(image, labels) -> dict:
    precentral = np.isin(labels, landmarks.PRECENTRAL)
    white = np.isin(labels, landmarks.LOBAR_WHITE_MATTER)
    capsule = np.isin(labels, (93, 94))
    return {
        "precentral_volume": int(precentral.sum()),
        "precentral_contrast": float(image[precentral].mean() / image[white].mean()),
        "ventricle_volume": int(np.isin(labels, landmarks.LATERAL_VENTRICLES).sum()),
        "capsule_contrast": float(image[capsule].mean() / image[white].mean()),
        "brain_volume": int((labels > 0).sum()),
    }


@pytest.fixture(scope="module")
def dose_response(anatomy):
    rng = np.random.default_rng(0)
    out = {}
    for severity in SEVERITIES:
        phenotype = PatientPhenotype(severity, "limb", "upper_limb", "left", 0.2) if severity else None
        image, labels, min_jacobian, _ = render(anatomy, phenotype, DiseaseModel(), None, rng)
        out[severity] = dict(measure(image, labels), min_jacobian=min_jacobian)
    return out


def test_control_is_unchanged(anatomy, dose_response):
    assert dose_response[0.0] == dict(measure(anatomy.image, anatomy.labels), min_jacobian=1.0)


def test_precentral_volume_and_intensity_drop_with_severity(dose_response):
    volume = [dose_response[s]["precentral_volume"] for s in SEVERITIES]
    contrast = [dose_response[s]["precentral_contrast"] for s in SEVERITIES]
    assert volume[0] > volume[1] > volume[2]
    assert volume[2] < 0.93 * volume[0]
    assert contrast[0] > contrast[1] > contrast[2]
    assert contrast[2] < 0.9 * contrast[0]


def test_ventricles_grow_and_brain_shrinks_with_severity(dose_response):
    ventricles = [dose_response[s]["ventricle_volume"] for s in SEVERITIES]
    brain = [dose_response[s]["brain_volume"] for s in SEVERITIES]
    assert ventricles[0] < ventricles[1] < ventricles[2]
    assert ventricles[2] > 1.3 * ventricles[0]
    assert brain[2] < brain[0]


def test_corticospinal_tract_signal_drops_with_severity(dose_response):
    contrast = [dose_response[s]["capsule_contrast"] for s in SEVERITIES]
    assert contrast[0] > contrast[1] > contrast[2]
    assert contrast[2] < 0.97 * contrast[0]


def test_deformation_does_not_fold(dose_response):
    assert 0 < dose_response[1.0]["min_jacobian"] < dose_response[0.5]["min_jacobian"] < 1


def _drop_by_height(anatomy, phenotype):
    """Mean intensity drop in the lower and upper thirds of the precentral gyri (no warp)."""
    image, _ = apply_disease(anatomy, phenotype)
    index, position = landmarks.somatotopic_position(anatomy)
    drop = (anatomy.image - image)[tuple(index.T)]
    return drop[position < 1 / 3].mean(), drop[position > 2 / 3].mean()


def test_somatotopy_follows_onset(anatomy):
    bulbar_low, bulbar_high = _drop_by_height(anatomy, PatientPhenotype(0.5, "bulbar", "bulbar", "left", 0.2))
    leg_low, leg_high = _drop_by_height(anatomy, PatientPhenotype(0.5, "limb", "lower_limb", "left", 0.2))
    assert bulbar_low > 1.5 * bulbar_high  # bulbar onset: inferolateral precentral
    assert leg_high > 1.5 * leg_low  # limb onset: superomedial precentral


def test_onset_side_is_more_affected(anatomy):
    image, _ = apply_disease(anatomy, PatientPhenotype(0.8, "limb", "upper_limb", "right", 0.3))
    drop = anatomy.image - image
    right = drop[anatomy.mask(landmarks.PRECENTRAL_RIGHT)].mean()
    left = drop[anatomy.mask(landmarks.PRECENTRAL_LEFT)].mean()
    assert right > 1.15 * left > 0


def test_displacement_is_smooth_and_zero_far_from_effects(anatomy):
    _, displacement = apply_disease(anatomy, PatientPhenotype(1.0, "bulbar", "bulbar", "left", 0.2))
    assert np.isfinite(displacement).all()
    assert jacobian_determinant(displacement, anatomy.voxel_size).min() > 0
    # Neighbouring voxels move by far less than a voxel relative to each other (no tearing).
    step = np.abs(np.diff(displacement, axis=1)).max()
    assert step < anatomy.voxel_size.min()


def test_label_map_without_motor_labels_is_refused(ixi_dir, tmp_path):
    import nibabel as nib

    subject = pd.read_csv(ixi_dir / "demographics.csv")["subject"].iloc[0]
    labels = nib.load(ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz")
    data = np.asarray(labels.dataobj).copy()
    data[np.isin(data, landmarks.PRECENTRAL_LEFT)] = 0
    broken = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(data, labels.affine), broken)
    with pytest.raises(InvalidImageError, match=r"labels\.nii\.gz.*183"):
        load_anatomy(ixi_dir / "T1" / f"{subject}_T1.nii.gz", broken)
