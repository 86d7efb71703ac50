"""Crafted NIfTI files that passed the checks before: each is refused from its header (before the
voxels are read) or before registration, with an error naming the file and the field at fault."""

from __future__ import annotations

import gzip
import time

import nibabel as nib
import numpy as np
import pytest

from ndae.cli import main
from ndae.data.nifti import image_file_problem, load_nifti
from ndae.data.preprocess import prepare_subject
from ndae.errors import InvalidImageError
from tests.timeouts import within




def _raw_nifti(path, header: nib.Nifti1Header, data: bytes = b""):
    """Header bytes written as they are: nibabel's own writer would 'fix' the fields under test."""
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)
    return path


def _header(shape, dtype, zooms=(2.0, 2.0, 2.0)) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms(zooms)
    header.set_sform(np.diag([*zooms, 1.0]), code=1)
    return header


def _noise(shape, dtype=np.uint8) -> bytes:
    return (np.random.default_rng(0).random(shape) * 200 + 20).astype(dtype).tobytes(order="F")


SHAPE = (80, 96, 80)  # a head-sized field of view at 2 mm


def test_a_huge_intensity_scale_is_refused_from_the_header(tmp_path):
    header = _header(SHAPE, np.uint8)
    header["scl_slope"], header["scl_inter"] = 1e38, 0.0
    path = _raw_nifti(tmp_path / "slope.nii", header, _noise(SHAPE))
    started = time.perf_counter()
    problem = image_file_problem(path)
    assert problem is not None and "scl_slope" in problem, problem
    with within(20), pytest.raises(InvalidImageError, match="slope.nii: .*scl_slope"):
        prepare_subject(str(path), None, "s1")
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("field, value", [("scl_slope", np.inf), ("scl_inter", np.nan), ("scl_inter", -1e30)])
def test_a_non_finite_or_absurd_scaling_is_named(tmp_path, field, value):
    header = _header(SHAPE, np.int16)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    header[field] = value
    path = _raw_nifti(tmp_path / "scaled.nii", header, _noise(SHAPE, np.int16))
    problem = image_file_problem(path)
    assert problem is not None and field in problem, problem


def test_a_sane_scaling_still_loads(tmp_path):
    header = _header(SHAPE, np.int16)
    header["scl_slope"], header["scl_inter"] = 2.5, -10.0
    path = _raw_nifti(tmp_path / "ok.nii", header, _noise(SHAPE, np.int16))
    assert image_file_problem(path) is None
    data = np.asarray(load_nifti(path).dataobj)
    assert data.min() >= 2.5 * 20 - 10 - 1e-3


def test_huge_stored_intensities_are_refused_before_registration(tmp_path):
    data = np.frombuffer(_noise(SHAPE), np.uint8).reshape(SHAPE, order="F").astype(np.float32) * 1e30
    path = tmp_path / "bright.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    with within(20), pytest.raises(InvalidImageError, match="bright.nii.gz: intensities up to"):
        load_nifti(path)


def test_a_gzip_declaring_a_billion_voxels_is_refused_before_any_allocation(tmp_path, capsys):
    # 1000^3 uint8 is under the byte bound (0.93 GiB) but would be 7.5 GiB once in float64.
    path = _raw_nifti(tmp_path / "bomb.nii.gz", _header((1000, 1000, 1000), np.uint8, (1.0, 1.0, 1.0)), b"\0" * 4096)
    assert path.stat().st_size < 100_000
    problem = image_file_problem(path)
    assert problem is not None and "1,000,000,000 voxels" in problem, problem
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"subject,site,image,age,sex,group\ns1,A,{path},60,M,control\n")
    with within(30):
        assert main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "bomb.nii.gz" in error and "voxels" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_an_rgb_image_is_refused_by_name(tmp_path):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = np.frombuffer(_noise(SHAPE), np.uint8).reshape(SHAPE, order="F")
    path = tmp_path / "colour.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    problem = image_file_problem(path)
    assert problem is not None and "RGB" in problem, problem
    with pytest.raises(InvalidImageError, match="colour.nii.gz: .*RGB"):
        load_nifti(path)


def test_complex_data_is_refused(tmp_path):
    data = np.frombuffer(_noise(SHAPE), np.uint8).reshape(SHAPE, order="F").astype(np.complex64) * (1 + 1j)
    path = tmp_path / "phase.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    with pytest.raises(InvalidImageError, match="phase.nii.gz: .*complex"):
        load_nifti(path)


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, 1.0, np.nan), (-1.0, 1.0, 1.0)])
def test_a_zero_or_bad_voxel_size_is_not_read_as_1_mm(tmp_path, pixdim):
    header = _header(SHAPE, np.uint8)
    header["qform_code"], header["sform_code"] = 0, 0  # the affine comes from pixdim alone
    header["pixdim"][1:4] = pixdim
    path = _raw_nifti(tmp_path / "flat.nii", header, _noise(SHAPE))
    problem = image_file_problem(path)
    assert problem is not None and "pixdim" in problem, problem
    with pytest.raises(InvalidImageError, match="flat.nii: .*pixdim"):
        load_nifti(path)


@pytest.mark.parametrize("name, shape, zooms, message", [
    ("cube.nii.gz", (8, 8, 8), (1.0, 1.0, 1.0), "8 x 8 x 8 mm"),
    ("cube_big_voxels.nii.gz", (8, 8, 8), (8.0, 8.0, 8.0), "64 x 64 x 64 mm"),
    ("needle.nii.gz", (9, 9, 400), (1.0, 1.0, 1.0), "9 x 9 x 400 mm"),
])
def test_a_noise_cube_or_a_needle_is_not_prepared_as_a_brain(tmp_path, name, shape, zooms, message):
    data = np.random.default_rng(1).normal(100, 20, shape).astype(np.float32)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), str(path))
    with within(20), pytest.raises(InvalidImageError, match="not a plausible head scan") as error:
        prepare_subject(str(path), None, "s1")
    assert name in str(error.value) and message in str(error.value)


def test_a_very_elongated_field_of_view_is_refused_and_a_thick_slab_is_not(tmp_path):
    slab = tmp_path / "slab.nii.gz"  # 240 x 240 x 120 mm of thick slices: a head's field of view
    nib.save(nib.Nifti1Image(np.random.default_rng(1).normal(100, 20, (120, 120, 20)).astype(np.float32),
                             np.diag([2.0, 2.0, 6.0, 1.0])), str(slab))
    assert load_nifti(slab).shape == (120, 120, 20)
    data = np.random.default_rng(1).normal(100, 20, (100, 100, 32)).astype(np.float32)
    path = tmp_path / "sheet.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([8.0, 8.0, 3.0, 1.0])), str(path))  # 800 x 800 x 96 mm
    with pytest.raises(InvalidImageError, match="sheet.nii.gz: not a plausible head scan.*aspect"):
        load_nifti(path)


def test_the_demo_and_ixi_scans_still_load(ixi_dir):
    from ndae.data.demo import demo_manifest_path
    from ndae.data.manifest import read_manifest

    demo = read_manifest(demo_manifest_path())
    for image in demo["image"].iloc[:3]:
        assert load_nifti(image).shape == (80, 96, 80)
    for path in sorted((ixi_dir / "T1").glob("*.nii.gz"))[:3]:
        assert image_file_problem(path) is None
        load_nifti(path)
