"""The image pipeline on real IXI scans: orientation, mask, intensities, grid, cache re-use."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ndae.cli import main
from ndae.data.cache import load_prepared, prepare_manifest
from ndae.data.manifest import read_manifest
from ndae.data.preprocess import PrepareConfig
from ndae.data.template import mni_template, output_grid

SUBJECTS = ["IXI012-HH-1211", "IXI202-HH-1526"]


@pytest.fixture(scope="module")
def ixi_manifest(ixi_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ixi")
    demographics = pd.read_csv(ixi_dir / "demographics.csv").set_index("subject")
    rows = [
        {"subject": s, "site": "HH", "image": str(ixi_dir / "T1" / f"{s}_T1.nii.gz"), "age": demographics.at[s, "age"],
         "sex": demographics.at[s, "sex"], "group": "control", "mask": str(ixi_dir / "labels" / f"{s}_T1_DLMUSE.nii.gz")}
        for s in SUBJECTS
    ]
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def preparation(ixi_manifest, tmp_path_factory):
    """The cache every test reads, made as a run killed in the middle of subject 2 and run again
    (each subject is registered once): (folder, counts of the first run, counts of the re-run)."""
    out = tmp_path_factory.mktemp("prepared")
    manifest = read_manifest(ixi_manifest)
    first = prepare_manifest(manifest.iloc[:1], out, progress=False)
    # the kill in the middle of subject 2: a stray temp file, no JSON
    (out / f".{SUBJECTS[1]}.npz.abc.tmp").write_bytes(b"partial")
    return out, first, prepare_manifest(manifest, out, progress=False)


@pytest.fixture(scope="module")
def prepared_dir(preparation):
    return preparation[0]


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_grid_intensity_and_slices(prepared_dir):
    grid = output_grid()
    assert all(size % 16 == 0 for size in grid.shape)
    for subject in SUBJECTS:
        prepared = load_prepared(prepared_dir, subject)
        assert prepared.image.shape == grid.shape and prepared.registered
        inside = prepared.image[prepared.mask > 0]
        assert inside.min() >= -1.0 and inside.max() <= 1.0
        assert np.all(prepared.image[prepared.mask == 0] == -1.0)
        # Percentile normalisation: the brain spreads over the range, not squashed at one end.
        assert -0.6 < np.median(inside) < 0.8 and inside.std() > 0.25
        assert prepared.slices.shape == (4, 96, 80)


def test_registered_mask_overlaps_mni_brain(prepared_dir):
    from nilearn.image import resample_img

    grid = output_grid()
    _, template_mask = mni_template()
    mni_mask = resample_img(template_mask, target_affine=grid.affine, target_shape=grid.shape,
                            interpolation="nearest", force_resample=True, copy_header=True).get_fdata() > 0
    for subject in SUBJECTS:
        prepared = load_prepared(prepared_dir, subject)
        assert _dice(prepared.mask > 0, mni_mask) > 0.85


def test_landmarks_land_where_mni_says(prepared_dir):
    """After registration the lateral ventricles sit either side of the midline at MNI x ≈ ±15 mm."""
    grid = output_grid()
    for subject in SUBJECTS:
        labels = load_prepared(prepared_dir, subject).labels
        for label, sign in ((51, +1), (52, -1)):  # 51 = right, 52 = left lateral ventricle
            centroid_voxel = np.argwhere(labels == label).mean(axis=0)
            centroid_mm = grid.affine[:3, :3] @ centroid_voxel + grid.affine[:3, 3]
            assert 5 < sign * centroid_mm[0] < 30, (subject, label, centroid_mm)
            assert -40 < centroid_mm[1] < 20 and 0 < centroid_mm[2] < 35


def test_transform_maps_back_to_native(prepared_dir, ixi_dir):
    from ndae.data.nifti import load_nifti

    subject = SUBJECTS[0]
    prepared = load_prepared(prepared_dir, subject)
    native_labels = load_nifti(ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz", is_label=True)
    back = prepared.registration().to_native(prepared.mask, output_grid(), native_labels, is_label=True) > 0
    assert _dice(back, np.asarray(native_labels.dataobj) > 0) > 0.9


def _copy_subject(prepared_dir, subject, folder):
    import shutil

    for suffix in (".npz", ".json"):
        shutil.copy2(prepared_dir / f"{subject}{suffix}", folder / f"{subject}{suffix}")


def test_cache_is_reused_and_invalidated(prepared_dir, ixi_manifest, tmp_path):
    manifest = read_manifest(ixi_manifest)
    before = (prepared_dir / f"{SUBJECTS[0]}.npz").stat().st_mtime_ns
    assert prepare_manifest(manifest, prepared_dir, progress=False) == {"prepared": 0, "cached": 2}
    assert (prepared_dir / f"{SUBJECTS[0]}.npz").stat().st_mtime_ns == before
    record = json.loads((prepared_dir / f"{SUBJECTS[0]}.json").read_text())
    assert len(record["image_sha256"]) == 64
    # A different config is a different result: the cache must not be reused for it. (In a copy:
    # the shared folder keeps the default config's cache for the other tests.)
    _copy_subject(prepared_dir, SUBJECTS[0], tmp_path)
    other = PrepareConfig(slice_z_mm=(20.0,))
    assert prepare_manifest(manifest.iloc[:1], tmp_path, other, progress=False) == {"prepared": 1, "cached": 0}
    assert load_prepared(tmp_path, SUBJECTS[0]).slices.shape == (1, 96, 80)


def test_resume_after_partial_run(preparation):
    """A killed run leaves finished subjects intact; the re-run only does the rest."""
    _, first, counts = preparation
    assert first == {"prepared": 1, "cached": 0}
    assert counts == {"prepared": 1, "cached": 1}


def test_prepare_cli_writes_figure(ixi_manifest, tmp_path, capsys):
    out = tmp_path / "prep"
    manifest = read_manifest(ixi_manifest).iloc[:1]
    one = tmp_path / "one.csv"
    manifest.to_csv(one, index=False)
    assert main(["prepare", "--manifest", str(one), "--out", str(out), "--figure"]) == 0
    assert (out / f"{SUBJECTS[0]}.png").stat().st_size > 10_000
    assert "prepared 1 subject(s)" in capsys.readouterr().out
