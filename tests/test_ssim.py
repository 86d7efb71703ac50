"""SSIM (ndae.model.metrics.ssim, MONAI's implementation): identity, noise, masks, shape errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndae.errors import NdaeError
from ndae.model import ssim


def _images(n: int = 3, shape=(48, 40), seed: int = 0) -> torch.Tensor:
    """Smooth structured images in [-1, 1] with a background of -1 around an ellipse."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, shape[0]), torch.linspace(-1, 1, shape[1]), indexing="ij")
    brain = (x / 0.6) ** 2 + (y / 0.7) ** 2 < 1
    images = []
    for _ in range(n):
        phase = torch.rand(2, generator=g) * 3
        texture = 0.5 * torch.sin(6 * x + phase[0]) * torch.cos(5 * y + phase[1])
        images.append(torch.where(brain, texture, torch.full_like(texture, -1.0)))
    return torch.stack(images)[:, None], brain[None, None].expand(n, 1, *shape)


def test_identical_images_give_one():
    x, mask = _images()
    assert np.allclose(ssim(x, x), 1.0, atol=1e-5)
    assert np.allclose(ssim(x, x, mask), 1.0, atol=1e-5)
    assert ssim(x.numpy(), x.numpy()).shape == (3,)  # numpy in, one value per image


def test_noise_lowers_ssim_monotonically():
    x, mask = _images()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    whole = [ssim(x + s * noise, x) for s in (0.02, 0.1, 0.3)]
    brain = [ssim(x + s * noise, x, mask) for s in (0.02, 0.1, 0.3)]
    for values in (whole, brain):
        assert np.all(values[0] < 1.0)
        assert np.all(values[0] > values[1]) and np.all(values[1] > values[2])


def test_whole_image_equals_monai_metric_and_mask_ignores_background():
    from monai.metrics import SSIMMetric

    x, mask = _images()
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    expected = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=11, kernel_sigma=1.5)(noisy, x).flatten()
    assert np.allclose(ssim(noisy, x), expected.numpy(), atol=1e-6)
    # Noise only outside the mask: the in-mask SSIM hardly moves, the whole-image SSIM drops.
    outside = torch.where(mask, x, noisy)
    assert np.all(ssim(outside, x) < 0.9)
    assert np.all(ssim(outside, x, mask) > ssim(outside, x) + 0.05)


def test_volumes_and_empty_mask():
    v = torch.rand(2, 1, 12, 14, 16) * 2 - 1
    assert np.allclose(ssim(v, v), 1.0, atol=1e-5)
    empty = torch.zeros(2, 1, 12, 14, 16)
    assert np.isnan(ssim(v, v, empty)).all()


@pytest.mark.parametrize("reconstruction, target, mask, message", [
    (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 30), None, "shapes differ"),
    (torch.zeros(32, 32), torch.zeros(32, 32), None, r"expected images \[n, C, H, W\]"),
    (torch.zeros(2, 1, 8, 32), torch.zeros(2, 1, 8, 32), None, "smaller than the 11-pixel window"),
    (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), torch.ones(3, 1, 32, 32), "does not broadcast"),
])
def test_shape_errors_are_clear(reconstruction, target, mask, message):
    with pytest.raises(NdaeError, match=message):
        ssim(reconstruction, target, mask)


def test_even_window_is_refused():
    x, _ = _images(1)
    with pytest.raises(NdaeError, match="odd"):
        ssim(x, x, kernel_size=10)
