"""The DAE's data transform: arrays in the prepared-slice format → tensors the network takes.

`prepare_images` picks the configured channels and resizes (antialiased) to the model's image
size; `prepare_masks` resizes brain masks the same way. Training (`ndae.model.training`) and
inference (`ndae.model.inference`) both go through here, so what the network sees is one thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ndae.errors import NdaeError
from ndae.model.config import DAEConfig

ArrayLike = Any  # numpy array or torch tensor


def as_tensor(x: ArrayLike, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def prepare_images(images: ArrayLike, config: DAEConfig) -> torch.Tensor:
    """The DAE's data transform: float tensor [n, C, *image_size], resized (antialiased) if needed.

    Input is the prepared-slice contract: [n, C, H, W] (or [n, C, D, H, W] in 3-D) in [-1, 1].
    """
    x = as_tensor(images)
    dims = config.model.spatial_dims
    if x.dim() != dims + 2:
        raise NdaeError(f"images: expected {dims + 2} dimensions [n, C, ...] for a {dims}-D DAE, got shape "
                        f"{tuple(x.shape)}")
    selected = config.model.slice_channels
    # Raw prepared slices carry all channels: pick the configured ones. Input that already has
    # in_channels channels is taken as selected (prepare_images is applied again inside encode).
    if selected is not None and x.shape[1] != config.model.in_channels:
        if max(selected) >= x.shape[1]:
            raise NdaeError(f"images: {x.shape[1]} channels, but the DAE config's slice_channels "
                            f"{tuple(selected)} needs at least {max(selected) + 1}")
        x = x[:, list(selected)]
    if x.shape[1] != config.model.in_channels:
        raise NdaeError(f"images: {x.shape[1]} channels, but the DAE config expects in_channels = "
                        f"{config.model.in_channels}")
    size = tuple(config.model.image_size)
    if tuple(x.shape[2:]) != size:
        mode = "bilinear" if dims == 2 else "trilinear"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=(dims == 2))
    return x.contiguous()


def prepare_masks(masks: ArrayLike, config: DAEConfig) -> torch.Tensor:
    """Brain masks [n, 1, ...] resized like the images (a pixel is brain if ≥ half of it is)."""
    m = as_tensor(masks)
    size = tuple(config.model.image_size)
    if tuple(m.shape[2:]) != size:
        m = F.interpolate(m, size=size, mode="area")
    return m >= 0.5
