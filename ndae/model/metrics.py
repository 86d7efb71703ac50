"""Image-similarity metrics for reconstructions: PSNR over the brain mask and SSIM.

PSNR (`psnr_in_mask`) is the mean squared error inside the mask against the images' peak-to-peak
range. SSIM is MONAI's (`monai.metrics.regression.compute_ssim_and_cs`, Wang et al. 2004: Gaussian
window, constants k1 = 0.01, k2 = 0.03). MONAI returns the SSIM *map* over every position where the
window fits inside the image; its `SSIMMetric` averages that map over the image. Here the map is
averaged either over the whole image (the same number as `SSIMMetric`) or over the positions whose
window centre lies inside a mask (the brain), so background that both images leave at -1 does
not inflate the score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ndae.errors import NdaeError

ArrayLike = Any  # numpy array or torch tensor


def _tensor(name: str, x: ArrayLike, metric: str = "ssim") -> torch.Tensor:
    try:
        return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).detach().to("cpu", torch.float32)
    except (TypeError, ValueError) as error:
        raise NdaeError(f"{metric}: {name} is not a numeric array: {error}") from error


def psnr_in_mask(reconstruction: ArrayLike, target: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """PSNR (dB) per image over the brain mask, for images in [-1, 1] (peak-to-peak 2)."""
    r, x = _tensor("reconstruction", reconstruction, "psnr"), _tensor("target", target, "psnr")
    m = _tensor("mask", mask, "psnr").bool().expand_as(x)
    err = ((r - x) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    return (10 * torch.log10(4.0 / err.clamp(min=1e-12))).numpy()


def ssim(reconstruction: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, *, data_range: float = 2.0,
         kernel_size: int = 11, kernel_sigma: float = 1.5) -> np.ndarray:
    """SSIM per image of `reconstruction` against `target`, shape [n, C, H, W] or [n, C, D, H, W].

    `data_range` is the images' peak-to-peak range (2 for the DAE's [-1, 1]). Without `mask`: the
    mean of MONAI's SSIM map (equal to `monai.metrics.SSIMMetric`). With `mask` (broadcastable to
    the images, e.g. [n, 1, H, W]): the mean of the map over the window centres inside the mask,
    channels averaged; an image whose mask holds no window centre gets NaN. The window is a
    Gaussian of odd `kernel_size` and standard deviation `kernel_sigma` (pixels).
    """
    from monai.metrics.regression import compute_ssim_and_cs

    r, x = _tensor("reconstruction", reconstruction), _tensor("target", target)
    if r.shape != x.shape:
        raise NdaeError(f"ssim: reconstruction and target shapes differ: {tuple(r.shape)} vs {tuple(x.shape)}")
    if x.dim() not in (4, 5):
        raise NdaeError(f"ssim: expected images [n, C, H, W] or [n, C, D, H, W], got shape {tuple(x.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise NdaeError(f"ssim: kernel_size must be a positive odd number, got {kernel_size}")
    if min(x.shape[2:]) < kernel_size:
        raise NdaeError(f"ssim: image spatial shape {tuple(x.shape[2:])} is smaller than the {kernel_size}-pixel window")
    if not data_range > 0:
        raise NdaeError(f"ssim: data_range must be positive, got {data_range}")
    spatial = x.dim() - 2
    ssim_map, _ = compute_ssim_and_cs(r, x, spatial_dims=spatial, kernel_size=[kernel_size] * spatial,
                                      kernel_sigma=[kernel_sigma] * spatial, data_range=data_range)
    if mask is None:
        return ssim_map.flatten(1).mean(1).numpy()
    m = _tensor("mask", mask)
    try:
        m = torch.broadcast_to(m != 0, x.shape)
    except RuntimeError as error:
        raise NdaeError(f"ssim: mask shape {tuple(m.shape)} does not broadcast to the images' shape "
                        f"{tuple(x.shape)}") from error
    half = kernel_size // 2  # map position i is the window centred on image position i + half
    centres = m[(slice(None), slice(None), *[slice(half, half + n) for n in ssim_map.shape[2:]])].float()
    count = centres.flatten(1).sum(1)
    total = (ssim_map * centres).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan"))).numpy()
