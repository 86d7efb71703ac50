"""Every class of bad NIfTI is refused with a message naming the file and the problem."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ndae.data.nifti import load_nifti
from ndae.errors import InvalidImageError


def _save(path, data, affine=None):
    # 5 mm voxels: the 32 x 32 x 24 volume spans a head's field of view (160 x 160 x 120 mm).
    nib.save(nib.Nifti1Image(data, np.diag([5.0, 5.0, 5.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture
def brain_like():
    rng = np.random.default_rng(0)
    return rng.normal(100, 20, size=(32, 32, 24)).astype(np.float32)


def test_valid_image_loads_and_is_ras(tmp_path, brain_like):
    image = load_nifti(_save(tmp_path / "ok.nii.gz", brain_like))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")


def test_single_volume_4d_is_accepted(tmp_path, brain_like):
    image = load_nifti(_save(tmp_path / "one.nii.gz", brain_like[..., None]))
    assert image.shape == brain_like.shape


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("four_d.nii.gz", lambda d: d[..., None].repeat(2, axis=3), "expected a 3-D image"),
        ("two_d.nii.gz", lambda d: d[:, :, 0], "expected a 3-D image"),
        ("nan.nii.gz", lambda d: np.where(d > 130, np.nan, d).astype(np.float32), "non-finite"),
        ("constant.nii.gz", lambda d: np.full_like(d, 7.0), "constant image"),
    ],
)
def test_bad_content_names_file_and_problem(tmp_path, brain_like, name, make, message):
    path = _save(tmp_path / name, make(brain_like))
    with pytest.raises(InvalidImageError, match=message) as error:
        load_nifti(path)
    assert name in str(error.value)


def test_degenerate_affine(tmp_path, brain_like):
    # nibabel will not save a degenerate affine, so write one straight into the header's sform.
    header = nib.Nifti1Header()
    header.set_data_shape(brain_like.shape)
    header.set_data_dtype(np.float32)
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(brain_like, None, header), str(path))
    with pytest.raises(InvalidImageError, match="degenerate affine") as error:
        load_nifti(path)
    assert "flat.nii.gz" in str(error.value)


def test_voxel_size_out_of_range(tmp_path, brain_like):
    path = _save(tmp_path / "metres.nii.gz", brain_like, np.diag([0.002, 0.002, 0.002, 1.0]))
    with pytest.raises(InvalidImageError, match="voxel size .* outside the sane range") as error:
        load_nifti(path)
    assert "metres.nii.gz" in str(error.value)


def test_truncated_gzip(tmp_path, brain_like):
    path = _save(tmp_path / "whole.nii.gz", brain_like)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(InvalidImageError, match="unreadable or truncated") as error:
        load_nifti(truncated)
    assert "truncated.nii.gz" in str(error.value)


def test_not_a_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    with pytest.raises(InvalidImageError) as error:
        load_nifti(path)
    assert "notes.nii.gz" in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_nifti(tmp_path / "absent.nii.gz")


def test_ixi_stored_psr_ends_up_ras_with_landmarks_in_place(ixi_dir):
    """IXI files are stored P-S-R; after loading, RAS voxel axes must point R, A, S anatomically."""
    subject = "IXI012-HH-1211"
    raw = nib.load(str(ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz"))
    assert nib.aff2axcodes(raw.affine) == ("P", "S", "R")
    labels = load_nifti(ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz", is_label=True)
    data = np.asarray(labels.dataobj)

    def centroid(*ids):
        return np.argwhere(np.isin(data, ids)).mean(axis=0)

    # Right lateral ventricle (51) lies at larger voxel x than the left one (52): x runs to the Right.
    assert centroid(51)[0] > centroid(52)[0] + 5
    # Frontal white matter (81/82) lies anterior to occipital white matter (83/84): y runs Anterior.
    assert centroid(81, 82)[1] > centroid(83, 84)[1] + 20
    # Precentral gyri (182/183) lie above the brainstem (35): z runs Superior.
    assert centroid(182, 183)[2] > centroid(35)[2] + 20


# ---- the cheap checks that run before anything hashes or loads a file ---------------------------
def test_truncated_uncompressed_nifti_is_refused_from_its_header(tmp_path, brain_like):
    whole = _save(tmp_path / "whole.nii", brain_like)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(whole.read_bytes()[:-1000])
    with pytest.raises(InvalidImageError, match="cut.nii: truncated: the header declares"):
        load_nifti(cut)


def test_a_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path):
    from ndae.data.nifti import image_file_problem

    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 4096)  # the header and a few voxels
    problem = image_file_problem(path)
    assert problem is not None and "header declares 256.0 GiB" in problem
    with pytest.raises(InvalidImageError, match="huge.nii: header declares"):
        load_nifti(path)


def test_only_single_file_nifti_is_accepted(tmp_path, brain_like):
    path = tmp_path / "pair.img"  # an Analyze-style .hdr/.img pair: the .img alone is not the scan
    nib.save(nib.Nifti1Pair(brain_like, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    with pytest.raises(InvalidImageError, match="pair.img: not a single-file NIfTI"):
        load_nifti(path)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InvalidImageError, match="notes.txt: not a readable NIfTI header"):
        load_nifti(text)


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "scan.nii.gz" if kind == "folder" else Path("/dev/zero")
    if kind == "folder":
        path.mkdir()
    with pytest.raises(InvalidImageError, match="is a folder" if kind == "folder" else "not a regular file"):
        load_nifti(path)
