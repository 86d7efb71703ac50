"""The shipped demo data: unpacks offline, validates, sits on the MNI grid, keeps the labels."""

from __future__ import annotations

import numpy as np
import pytest

from ndae.data.cache import load_prepared, prepare_manifest
from ndae.data.dataset import load_slice_dataset
from ndae.data.demo import DEMO_ARCHIVE, demo_manifest_path
from ndae.data.manifest import read_manifest
from ndae.data.nifti import load_nifti
from ndae.data.template import output_grid


@pytest.fixture(scope="module")
def demo_manifest():
    return read_manifest(demo_manifest_path())


def test_archive_is_compact_and_licensed(demo_manifest):
    assert DEMO_ARCHIVE.stat().st_size <= 30 * 1024 * 1024
    readme = (demo_manifest_path().parent / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "IXI" in readme
    assert len(demo_manifest) == 121 and set(demo_manifest["group"]) == {"control"}
    assert demo_manifest["age"].between(18, 90).all()


def test_images_on_grid_with_needed_labels(demo_manifest):
    grid = output_grid()
    for row in demo_manifest.iloc[:5].itertuples():
        image = load_nifti(row.image)
        labels = np.asarray(load_nifti(row.mask, is_label=True).dataobj)
        assert grid.matches(image)
        data = image.get_fdata()
        assert data.min() == pytest.approx(-1.0) and data.max() <= 1.0 + 1e-6
        brain = labels > 0
        assert np.all(data[~brain] == pytest.approx(-1.0))
        # brain mask, precentral gyri, lateral ventricles, white matter, internal capsule
        for ids in ([182, 183], [150, 151], [51, 52], [81, 82, 83, 84, 85, 86, 87, 88], [93, 94]):
            assert np.isin(labels, ids).sum() > 20, ids


def test_prepare_on_demo_needs_no_registration(demo_manifest, tmp_path):
    subset = demo_manifest.iloc[:3]
    assert prepare_manifest(subset, tmp_path, progress=False) == {"prepared": 3, "cached": 0}
    prepared = load_prepared(tmp_path, subset["subject"].iloc[0])
    assert not prepared.registered and prepared.image.shape == output_grid().shape
    # The demo image round-trips through prepare: same brain, same [-1, 1] scale (up to re-normalisation).
    original = load_nifti(subset["image"].iloc[0]).get_fdata()
    inside = prepared.mask > 0
    assert np.corrcoef(original[inside], prepared.image[inside])[0, 1] > 0.99


def test_slice_dataset_from_demo(demo_manifest, tmp_path):
    dataset = load_slice_dataset(manifest=demo_manifest.iloc[:4], cache_dir=tmp_path, progress=False)
    assert dataset.images.shape == (4, 4, 96, 80) and dataset.masks.shape == (4, 1, 96, 80)
    assert dataset.images.min() >= -1.0 and dataset.images.max() <= 1.0
    assert list(dataset.subjects) == list(demo_manifest["subject"].iloc[:4])
