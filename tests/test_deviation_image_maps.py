"""Image-space deviation maps from a (briefly) trained run, on the grid and back in native space."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ndae.data.preprocess import extract_axial_slices
from ndae.data.template import output_grid
from ndae.deviation.image_maps import slices_to_volume


def test_slices_to_volume_inverts_slice_extraction():
    grid = output_grid()
    volume = np.random.default_rng(0).normal(size=grid.shape).astype(np.float32)
    z_mm = (8.0, 20.0, 56.0)
    slices = extract_axial_slices(volume, grid, z_mm)
    back = slices_to_volume(slices, z_mm, grid)
    for z in z_mm:
        k = grid.z_index(z)
        np.testing.assert_array_equal(back[:, :, k], volume[:, :, k])
    assert np.count_nonzero(back) == np.count_nonzero(volume[:, :, [grid.z_index(z) for z in z_mm]])


@pytest.mark.slow
def test_maps_on_grid_and_in_native_space(tmp_path, ixi_dir):
    from ndae.model.run import encode_run, train_run
    from ndae.normative.files import fit_normative
    from ndae.testing.toy_cohort import write_toy_cohort

    manifest_path, _ = write_toy_cohort(tmp_path / "toy", n_controls=8, n_patients=2, sites=1, seed=0)
    manifest = pd.read_csv(manifest_path)
    manifest = manifest[manifest["group"] == "control"].copy()
    manifest["image"] = [str((manifest_path.parent / p).resolve()) for p in manifest["image"]]
    manifest["mask"] = [str((manifest_path.parent / p).resolve()) for p in manifest["mask"]]
    subject = "IXI012-HH-1211"  # a native-space scan: registered, so its map goes back to its own voxels
    patient = {"subject": subject, "site": manifest["site"].iloc[0], "image": str(ixi_dir / "T1" / f"{subject}_T1.nii.gz"),
               "age": 60.0, "sex": "M", "group": "als", "mask": str(ixi_dir / "labels" / f"{subject}_T1_DLMUSE.nii.gz"),
               "time": 20.0, "event": 1}
    manifest = pd.concat([manifest, pd.DataFrame([patient])], ignore_index=True)
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    train_run(path, run, "tiny", steps=3, cache_dir=cache, progress=False, figure_steps=2)
    encode_run(run, path, cache_dir=cache, steps=4, progress=False)
    fit_normative(run / "latents.npz", path, run / "normative")

    from ndae.deviation.image_maps import write_deviation_maps

    table = write_deviation_maps(run, path, cache_dir=cache, steps=4, progress=False)
    out = run / "deviation_maps"
    assert set(table["region"]) == {"precentral", "lateral_ventricles"}
    assert table["n_voxels"].gt(0).all() and np.isfinite(table["mean_deviation"]).all()
    on_grid = nib.load(out / f"{subject}_deviation_mni.nii.gz")
    assert on_grid.shape == output_grid().shape and np.abs(on_grid.get_fdata()).max() > 0
    native = nib.load(out / f"{subject}_deviation_native.nii.gz")
    source = nib.as_closest_canonical(nib.load(ixi_dir / "T1" / f"{subject}_T1.nii.gz"))
    assert native.shape == source.shape and np.allclose(native.affine, source.affine)
    assert np.abs(native.get_fdata()).max() > 0
    assert (out / f"{subject}_deviation.png").stat().st_size > 5_000
    assert (out / "deviation_regions.csv").exists()
