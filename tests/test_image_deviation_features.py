"""ndae/deviation/image_features.py: region means of an image-space deviation map over the shipped
atlas on the DAE's slices."""

import numpy as np
import pytest

from ndae.baselines.voxelwise import REGION_NAMES
from ndae.data.preprocess import DEFAULT_SLICE_Z_MM
from ndae.deviation.image_features import MIN_PIXELS, PREFIX, atlas_on_slices, region_means
from ndae.errors import NdaeError


def test_the_atlas_on_the_default_slices_has_the_regions_where_they_belong():
    atlas = atlas_on_slices(DEFAULT_SLICE_Z_MM)
    names = {v: k for k, v in REGION_NAMES.items()}
    count = lambda z, region: int((atlas[DEFAULT_SLICE_Z_MM.index(z)] == names[region]).sum())
    assert count(56.0, "precentral") > 100  # the hand knob slice cuts the precentral gyri
    assert count(20.0, "ventricles") > 50 and count(56.0, "ventricles") == 0
    assert count(8.0, "internal_capsule") > 20


def test_region_means_are_the_means_of_the_map_over_each_region_inside_the_brain():
    rng = np.random.default_rng(0)
    atlas = np.zeros((2, 12, 10), np.int16)
    atlas[0, :6] = 1                      # 60 pixels of region 1
    atlas[1, :, :5] = 5                   # 60 pixels of region 5
    atlas[1, 0, 9] = 8                    # one pixel: too few to summarise
    maps = rng.normal(size=(3, 2, 12, 10))
    brain = rng.random((3, 2, 12, 10)) > 0.3
    table = region_means(maps, brain, atlas)
    assert list(table.columns) == [f"{PREFIX}{REGION_NAMES[1]}", f"{PREFIX}{REGION_NAMES[5]}"]
    for i in range(3):
        for region, column in ((1, table.columns[0]), (5, table.columns[1])):
            inside = (atlas == region)[None] & brain[i:i + 1]
            assert table[column].iloc[i] == pytest.approx(maps[i:i + 1][inside].mean())
    assert MIN_PIXELS > 1


def test_mismatched_shapes_and_no_region_are_refused():
    atlas = np.ones((2, 12, 10), np.int16)
    with pytest.raises(NdaeError, match="do not match"):
        region_means(np.zeros((3, 2, 12, 10)), np.ones((3, 2, 12, 9), bool), atlas)
    with pytest.raises(NdaeError, match="cut no atlas region"):
        region_means(np.zeros((1, 2, 12, 10)), np.ones((1, 2, 12, 10), bool), np.zeros_like(atlas))
