"""A clone with nothing beside it tests itself: the IXI fixture falls back to the shipped data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ndae.data.demo import demo_dir
from ndae.data.nifti import load_nifti
from tests.ixi_data import NATIVE_FROM_MNI, MissingTestData, resolve_ixi_dir


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The IXI folder as a clone without ../shared sees it."""
    root = tmp_path_factory.mktemp("alone")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("NDAE_IXI_DIR", raising=False)
        folder, origin = resolve_ixi_dir(root, shared=root / "no-shared-here")
    assert origin == "shipped"
    return folder


def test_without_shared_the_data_root_holds_every_shipped_subject(shipped):
    manifest = pd.read_csv(demo_dir() / "manifest.csv")
    demographics = pd.read_csv(shipped / "demographics.csv")
    assert list(demographics.columns) == ["subject", "age", "sex"]
    assert sorted(demographics["subject"]) == sorted(manifest["subject"])
    pd.testing.assert_series_equal(demographics.set_index("subject")["age"], manifest.set_index("subject")["age"])
    for subject in demographics["subject"]:
        assert (shipped / "T1" / f"{subject}_T1.nii.gz").is_file()
        assert (shipped / "labels" / f"{subject}_T1_DLMUSE.nii.gz").is_file()


def test_made_scans_are_native_psr_and_undo_to_the_shipped_ones_exactly(shipped):
    subject = pd.read_csv(shipped / "demographics.csv")["subject"].iloc[0]
    row = pd.read_csv(demo_dir() / "manifest.csv").set_index("subject").loc[subject]
    raw = nib.load(shipped / "labels" / f"{subject}_T1_DLMUSE.nii.gz")
    assert nib.aff2axcodes(raw.affine) == ("P", "S", "R")
    original = nib.load(demo_dir() / row["mask"])
    assert not np.allclose(raw.affine[:3, 3], original.affine[:3, 3])  # really moved off the MNI grid
    labels = load_nifti(shipped / "labels" / f"{subject}_T1_DLMUSE.nii.gz", is_label=True)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), np.asarray(original.dataobj))
    np.testing.assert_allclose(np.linalg.inv(NATIVE_FROM_MNI) @ labels.affine, original.affine, atol=1e-6)
    image = load_nifti(shipped / "T1" / f"{subject}_T1.nii.gz")
    scanner = np.asarray(image.dataobj, dtype=float)
    assert scanner.min() == 0 and scanner.max() > 100  # positive, background 0, like a scanner's
    shipped_image = nib.load(demo_dir() / row["image"]).get_fdata()
    np.testing.assert_allclose(scanner / 1000.0 - 1.0, shipped_image, atol=1e-3)


def test_shared_folder_wins_where_it_exists(shipped, tmp_path, monkeypatch):
    monkeypatch.delenv("NDAE_IXI_DIR", raising=False)
    shared = tmp_path / "shared-ixi"
    shared.mkdir()
    (shared / "demographics.csv").write_text("subject,age,sex\n")
    assert resolve_ixi_dir(tmp_path / "build", shared=shared) == (shared, "shared")
    assert not (tmp_path / "build").exists()  # nothing made when CI's data is there
    monkeypatch.setenv("NDAE_IXI_DIR", "shipped")
    assert resolve_ixi_dir(shipped.parent, shared=shared) == (shipped, "shipped")  # forced: as a clone alone


def test_a_wrong_ndae_ixi_dir_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NDAE_IXI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MissingTestData, match="nowhere"):
        resolve_ixi_dir(tmp_path / "build", shared=tmp_path)


def test_pyproject_python_bound_matches_flower_and_flwr_run_installs_nothing():
    import tomllib
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    ours = SpecifierSet(project["project"]["requires-python"])
    flower = SpecifierSet(metadata("flwr")["Requires-Python"])
    # every Python we admit must be one flwr admits, or Flower's `uv sync` cannot solve (exit 608)
    for minor in range(8, 20):
        version = Version(f"3.{minor}")
        if version in ours:
            assert version in flower, f"requires-python admits {version}, flwr does not"
    # Flower's runtime `uv sync` installs nothing (tests/test_flwr_run.py runs it): no torch per run
    assert "torch" in project["tool"]["uv"]["exclude-dependencies"]
