"""U-Net building blocks for 2-D and 3-D, written by hand so that DP-SGD works on them.

Why not MONAI's `DiffusionModelUNet`: its residual blocks take one embedding that is *added*
(time + class), and its conditioning is cross-attention; Diff-AE needs adaptive GroupNorm where
the time embedding gives scale and shift and `z_sem` (and an age embedding) gives a
multiplicative scale. Here every learnable layer is Conv{2,3}d, Linear or GroupNorm, each
called once per forward pass, which Opacus supports with per-sample-gradient hooks; attention is
1×1 convolutions plus parameter-free matrix products.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    groups = math.gcd(channels, num_groups)
    return nn.GroupNorm(groups, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of the (integer) timestep, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(*v.shape, *([1] * (like.dim() - v.dim())))


class ResBlock(nn.Module):
    """Residual block with adaptive GroupNorm.

    h = conv(SiLU(GN(x))); h = GN(h)·(1 + s_t) + b_t; h = h·(1 + W_z z_sem) [·(1 + W_a age)];
    out = x + conv(dropout(SiLU(h))). Without `time_dim` it is a plain residual block (encoder).
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, num_groups: int,
                 time_dim: int | None = None, cond_dim: int | None = None, age_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.norm_in = group_norm(in_channels, num_groups)
        self.conv_in = conv_nd(dims, in_channels, out_channels, 3, padding=1)
        self.norm_out = group_norm(out_channels, num_groups)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels) if time_dim else None
        self.cond_proj = nn.Linear(cond_dim, out_channels) if cond_dim else None
        self.age_proj = nn.Linear(age_dim, out_channels) if age_dim else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1))
        self.skip = conv_nd(dims, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None, z_sem: torch.Tensor | None = None,
                age_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = self.norm_out(h)
        if self.time_proj is not None:
            scale, shift = self.time_proj(F.silu(time_emb)).chunk(2, dim=1)
            h = h * (1 + _expand(scale, h)) + _expand(shift, h)
        if self.cond_proj is not None:
            h = h * (1 + _expand(self.cond_proj(z_sem), h))
        if self.age_proj is not None:
            h = h * (1 + _expand(self.age_proj(F.silu(age_emb)), h))
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions; 1×1 convolutions only."""

    def __init__(self, dims: int, channels: int, num_groups: int):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.qkv = conv_nd(dims, channels, 3 * channels, 1)
        self.proj = zero_module(conv_nd(dims, channels, channels, 1))

    def forward(self, x: torch.Tensor, *unused) -> torch.Tensor:
        b, c = x.shape[:2]
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, -1).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        h = torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, *unused) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        # Explicit target size: odd feature maps (e.g. 5 → 10 vs 11) match their skip exactly.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
