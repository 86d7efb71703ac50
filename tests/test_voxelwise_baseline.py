"""The voxel-wise normative baseline and its shipped atlas (ndae.baselines.voxelwise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ndae.baselines.voxelwise import (
    ATLAS_REGIONS,
    SUMMARIES,
    VoxelwiseNormativeBaseline,
    highpass,
    load_atlas,
    majority_vote,
    muse_to_regions,
)
from ndae.data.template import output_grid
from ndae.errors import NdaeError

GRID = output_grid().shape


def _small_atlas():
    """Precentral (1) and white matter (9) blocks, a few hundred voxels: fast fits."""
    atlas = np.zeros(GRID, np.int8)
    atlas[30:36, 40:46, 50:56] = 1
    atlas[40:46, 40:46, 30:36] = 9
    return atlas


def _subjects(n, rng, sites=("a", "b", "c")):
    return pd.DataFrame({
        "subject": [f"s{i:03d}" for i in range(n)],
        "site": rng.choice(sites, n),
        "age": rng.uniform(25, 80, n),
        "sex": rng.choice(["M", "F"], n),
    })


def _images(covariates, rng, atlas, severity=None):
    """Intensity falls with age, differs by site; severity lowers precentral (region 1) only."""
    offsets = {"a": 0.0, "b": 0.3, "c": -0.2}
    base = (0.5 - 0.01 * (covariates["age"].to_numpy() - 50) + covariates["site"].map(offsets).to_numpy())
    images = np.zeros((len(covariates), *GRID), np.float32)
    brain = atlas > 0
    images[:, brain] = base[:, None] + 0.1 * rng.normal(size=(len(covariates), int(brain.sum())))
    if severity is not None:
        images[:, atlas == 1] -= 0.3 * np.asarray(severity)[:, None]
    return images


@pytest.mark.parametrize("highpass_sigma", [None, 4.0])
def test_per_site_sums_give_the_pooled_fit(highpass_sigma):
    # the high-pass uses each subject's own image only, so its statistics sum exactly too
    rng = np.random.default_rng(0)
    atlas = _small_atlas()
    controls = _subjects(60, rng)
    images = _images(controls, rng, atlas)
    pooled = VoxelwiseNormativeBaseline(atlas=atlas, stride=1, highpass_sigma=highpass_sigma).fit(controls, images)
    federated = VoxelwiseNormativeBaseline(atlas=atlas, stride=1, highpass_sigma=highpass_sigma)
    stats = [federated.statistics(controls[controls.site == s], images[(controls.site == s).to_numpy()])
             for s in ("a", "b", "c")]
    federated.fit_stats(sum(stats[1:], stats[0]))
    a, b = pooled.features(controls, images), federated.features(controls, images)
    np.testing.assert_allclose(a.drop(columns="subject").to_numpy(), b.drop(columns="subject").to_numpy(), atol=1e-8)
    # a fit that ignored site would leave the site offsets in the controls' z
    prefix = "z_voxel_" if highpass_sigma is None else "z_highpass_voxel_"
    assert list(a.columns) == ["subject", *[prefix + name for name in ("precentral", "white_matter", "whole_brain")]]
    z = a.set_index("subject")[prefix + "precentral"]
    assert z.groupby(controls.set_index("subject")["site"]).mean().abs().max() < 0.05


def test_planted_precentral_effect_is_found_where_it_was_planted():
    rng = np.random.default_rng(1)
    atlas = _small_atlas()
    controls, patients = _subjects(60, rng), _subjects(40, rng)
    patients["subject"] = [f"p{i:03d}" for i in range(40)]
    severity = rng.uniform(0, 1, 40)
    model = VoxelwiseNormativeBaseline(atlas=atlas, stride=1).fit(controls, _images(controls, rng, atlas))
    # read through a loader, in chunks, as from the prepared cache
    stack = dict(zip(patients["subject"], _images(patients, rng, atlas, severity)))
    features = model.features(patients, lambda subject: stack[subject])
    assert list(features.columns) == ["subject", "z_voxel_precentral", "z_voxel_white_matter", "z_voxel_whole_brain"]
    assert spearmanr(features["z_voxel_precentral"], severity).statistic < -0.9
    assert abs(spearmanr(features["z_voxel_white_matter"], severity).statistic) < 0.4
    assert features["z_voxel_precentral"].mean() < -1.0


def test_bad_images_are_named():
    rng = np.random.default_rng(2)
    atlas = _small_atlas()
    controls = _subjects(12, rng)
    with pytest.raises(NdaeError, match="s000 has shape"):
        VoxelwiseNormativeBaseline(atlas=atlas).fit(controls, lambda subject: np.zeros((10, 10, 10)))
    with pytest.raises(NdaeError, match="rows given"):
        VoxelwiseNormativeBaseline(atlas=atlas).fit(controls, np.zeros((3, *GRID)))


def test_majority_vote_and_muse_grouping():
    labels = np.array([[182, 51, 1, 0, 35, 999]])
    assert muse_to_regions(labels).tolist() == [[1, 5, 0, 0, 7, 10]]
    maps = [np.array([1, 1, 0]), np.array([1, 2, 2]), np.array([3, 2, 0])]
    atlas, count = majority_vote(maps)
    assert count == 3 and atlas.tolist() == [1, 2, 0]


def test_shipped_atlas_is_on_the_grid_and_anatomically_placed():
    atlas = load_atlas()
    assert atlas.shape == GRID
    counts = {name: int(np.isin(atlas, ids).sum()) for name, ids in SUMMARIES.items()}
    assert all(count > 500 for name, count in counts.items() if name != "internal_capsule"), counts
    assert counts["internal_capsule"] > 100
    # 2 mm voxels; MNI152 space is larger than the average native brain: ~1.5-2.1 litres of tissue
    assert 1500 < counts["whole_brain"] * 0.008 < 2100
    affine = output_grid().affine
    centre = {k: affine[:3, :3] @ np.argwhere(atlas == k).mean(0) + affine[:3, 3] for k in ATLAS_REGIONS}
    assert centre[1][2] > 30 and centre[6][2] < -20  # precentral high (MNI z), cerebellum low
    assert centre[1][1] > centre[2][1]  # precentral anterior to postcentral
    assert centre[3][1] > centre[1][1]  # frontal anterior to precentral
    assert abs(centre[7][0]) < 5  # brainstem on the midline


def test_voxels_constant_among_the_controls_do_not_swamp_their_region():
    # A brain smaller than the atlas: part of the white-matter block is background (0) in every
    # control. A patient whose brain reaches there must not get a z of ~1e6 for the whole region.
    rng = np.random.default_rng(3)
    atlas = _small_atlas()
    controls = _subjects(40, rng)
    images = _images(controls, rng, atlas)
    images[:, 40:43, 40:46, 30:36] = 0.0  # never varies among the controls
    model = VoxelwiseNormativeBaseline(atlas=atlas, stride=1, n_iterations=20).fit(controls, images)
    patient = _subjects(1, rng)
    patient_image = _images(patient, rng, atlas)  # fills the whole block
    z = model.features(patient, patient_image).set_index("subject").iloc[0]
    assert np.isfinite(z.to_numpy(float)).all()
    assert np.abs(z.to_numpy(float)).max() < 20, z
    assert model.informative_.sum() < len(model.voxels)  # the constant voxels were recognised


def _cortex_atlas():
    """A 20-voxel white-matter cube (9) with a 4-voxel precentral cube (1) inside it: a region
    with brain around it, as in a real brain."""
    atlas = np.zeros(GRID, np.int8)
    atlas[30:50, 40:60, 30:50] = 9
    atlas[38:42, 48:52, 38:42] = 1
    return atlas


def test_the_highpass_removes_a_smooth_intensity_field_and_keeps_a_focal_effect():
    rng = np.random.default_rng(4)
    atlas = _cortex_atlas()
    controls, patients = _subjects(40, rng), _subjects(30, rng)
    patients["subject"] = [f"p{i:03d}" for i in range(30)]
    control_images = _images(controls, rng, atlas)
    severity = rng.uniform(0, 1, 30)
    patient_images = _images(patients, rng, atlas, severity)
    # a smooth field (scanner bias): an offset and a gentle gradient over the whole grid
    x, y, _ = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in GRID), indexing="ij")
    field = (0.3 + 0.005 * (x - 40) + 0.003 * (y - 50)).astype(np.float32)
    biased = patient_images + field[None]
    shift = {}
    for sigma in (None, 4.0):
        model = VoxelwiseNormativeBaseline(atlas=atlas, stride=1, n_iterations=20, highpass_sigma=sigma).fit(
            controls, control_images)
        clean, moved = (model.features(patients, im).set_index("subject") for im in (patient_images, biased))
        shift[sigma] = (moved - clean).abs().mean()
        precentral = clean[model.feature_prefix + "precentral"]
        # the focal effect (precentral lower than the white matter around it) is found by both
        assert spearmanr(precentral, severity).statistic < -0.8, sigma
        assert precentral.mean() < -1.0, sigma
    raw, high = shift[None], shift[4.0]
    assert raw["z_voxel_precentral"] > 1.5 and raw["z_voxel_white_matter"] > 1.5, raw
    assert high["z_highpass_voxel_precentral"] < 0.1 and high["z_highpass_voxel_white_matter"] < 0.3, high


def test_the_highpass_blur_uses_brain_voxels_only():
    rng = np.random.default_rng(5)
    atlas = _cortex_atlas()
    brain = atlas > 0
    image = np.full(GRID, -1.0, np.float32)
    image[brain] = 0.4  # a constant brain: its within-brain blur is the constant, its high-pass 0
    image[30:50, 40:60, 30:33] = -1.0  # this subject's brain is smaller than the atlas: background inside it
    inside = brain & (image > -1)
    assert np.abs(highpass(image, brain, 4.0)[inside]).max() < 1e-5
    # anything outside the atlas (skull, noise, another image's brain) changes nothing inside it
    other = image.copy()
    other[~brain] = rng.uniform(-1, 1, int((~brain).sum()))
    np.testing.assert_array_equal(highpass(other, brain, 4.0)[brain], highpass(image, brain, 4.0)[brain])
    # a plain blur would have pulled the brain's edge towards the background
    from scipy.ndimage import gaussian_filter

    assert np.abs((image - gaussian_filter(image, 4.0))[inside]).max() > 0.1
    # the baseline's high-pass (on the box around the atlas's brain) is the whole grid's, at its voxels
    covariates = _subjects(2, rng)
    model = VoxelwiseNormativeBaseline(atlas=atlas, stride=2, highpass_sigma=4.0)
    images = np.stack([image, other])
    stats = model.statistics(covariates, images)
    expected = sum(highpass(im, brain, 4.0).reshape(-1)[model.voxels].astype(np.float64) for im in images)
    np.testing.assert_allclose(stats.sum_y, expected, atol=1e-5)
    with pytest.raises(NdaeError, match="highpass_sigma"):
        VoxelwiseNormativeBaseline(atlas=atlas, highpass_sigma=0.0)
