"""Image-space deviation maps on a toy decoder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ndae.deviation.maps import (
    DEFAULT_REGIONS,
    deviation_map,
    regional_summary,
    save_deviation_nifti,
    save_deviation_png,
)
from ndae.errors import NdaeError


def toy_decode(z_sem, x_T):
    """A 'decoder' whose output depends on both codes: x_T · z[0] + z[1]."""
    return x_T * z_sem[0] + z_sem[1]


def test_deviation_map_is_reconstruction_minus_normative_decode():
    x_T = np.arange(12.0).reshape(3, 4)
    z_sem, z_normative = np.array([2.0, 1.0]), np.array([1.0, 0.5])
    expected = (2 * x_T + 1) - (x_T + 0.5)
    np.testing.assert_allclose(deviation_map(toy_decode, z_sem, z_normative, x_T), expected)
    reconstruction = 2 * x_T + 1.25  # a given reconstruction wins over decode(z_sem, x_T)
    np.testing.assert_allclose(
        deviation_map(toy_decode, z_sem, z_normative, x_T, reconstruction), reconstruction - (x_T + 0.5)
    )
    # torch in, numpy out
    torch_map = deviation_map(toy_decode, torch.tensor(z_sem), torch.tensor(z_normative), torch.tensor(x_T))
    np.testing.assert_allclose(torch_map, expected)


def test_regional_summary_means_over_label_ids():
    labels = np.zeros((4, 4, 2), dtype=int)
    labels[0, :, 0] = 182
    labels[1, :, 0] = 151
    labels[2, :2, :] = 51
    deviation = np.zeros(labels.shape)
    deviation[0, :, 0] = 1.0
    deviation[1, :, 0] = -3.0
    deviation[2, :2, :] = 0.5
    table = regional_summary(deviation, labels, {**DEFAULT_REGIONS, "absent": [999]}).set_index("region")
    assert table.loc["precentral", "n_voxels"] == 8
    assert table.loc["precentral", "mean_deviation"] == pytest.approx(-1.0)
    assert table.loc["precentral", "mean_abs_deviation"] == pytest.approx(2.0)
    assert table.loc["lateral_ventricles", "n_voxels"] == 4
    assert table.loc["lateral_ventricles", "mean_deviation"] == pytest.approx(0.5)
    assert table.loc["absent", "n_voxels"] == 0 and np.isnan(table.loc["absent", "mean_deviation"])
    with pytest.raises(NdaeError, match="label map has shape"):
        regional_summary(deviation, labels[..., 0])


def test_maps_are_written_as_nifti_and_png(tmp_path):
    deviation = np.random.default_rng(0).normal(size=(6, 5, 4))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = save_deviation_nifti(tmp_path / "deviation.nii.gz", deviation, affine)
    image = nib.load(path)
    np.testing.assert_allclose(image.get_fdata(), deviation, rtol=1e-6)
    np.testing.assert_allclose(image.affine, affine)
    assert save_deviation_nifti(tmp_path / "slice.nii.gz", deviation[..., 0], affine).exists()
    for name, data in (("volume.png", deviation), ("slice.png", deviation[..., 0])):
        png = save_deviation_png(tmp_path / name, data, background=np.abs(data), title="toy")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
