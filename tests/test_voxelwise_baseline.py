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


def test_per_site_sums_give_the_pooled_fit():
    rng = np.random.default_rng(0)
    atlas = _small_atlas()
    controls = _subjects(60, rng)
    images = _images(controls, rng, atlas)
    pooled = VoxelwiseNormativeBaseline(atlas=atlas, stride=1).fit(controls, images)
    federated = VoxelwiseNormativeBaseline(atlas=atlas, stride=1)
    stats = [federated.statistics(controls[controls.site == s], images[(controls.site == s).to_numpy()])
             for s in ("a", "b", "c")]
    federated.fit_stats(sum(stats[1:], stats[0]))
    a, b = pooled.features(controls, images), federated.features(controls, images)
    np.testing.assert_allclose(a.drop(columns="subject").to_numpy(), b.drop(columns="subject").to_numpy(), atol=1e-8)
    # a fit that ignored site would leave the site offsets in the controls' z
    z = a.set_index("subject")["z_voxel_precentral"]
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
