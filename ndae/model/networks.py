"""The two networks of the diffusion autoencoder.

- `SemanticEncoder`: the first half of a U-Net (residual blocks, strided downsampling) followed by
  GroupNorm, SiLU, global average pooling and a linear map → `z_sem`.
- `ConditionalUNet`: the noise-prediction U-Net ε_θ(x_t, t, z_sem[, age]); every residual block
  gets the time embedding (scale/shift) and `z_sem` (scale), see `ndae.model.blocks.ResBlock`.

Blocks are hand-written (see `ndae.model.blocks` for why not MONAI's diffusion U-Net).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ndae.model.blocks import AttentionBlock, Downsample, ResBlock, Upsample, conv_nd, group_norm, timestep_embedding
from ndae.model.config import ModelConfig


class SemanticEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dims, groups = config.spatial_dims, config.num_groups
        ch = config.encoder_base_channels
        self.stem = conv_nd(dims, config.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        for level, mult in enumerate(config.encoder_channel_mult):
            out = config.encoder_base_channels * mult
            layers.append(ResBlock(dims, ch, out, groups))
            ch = out
            if level < len(config.encoder_channel_mult) - 1:
                layers.append(Downsample(dims, ch))
        self.layers = nn.ModuleList(layers)
        self.norm = group_norm(ch, groups)
        self.head = nn.Linear(ch, config.z_sem_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h)
        h = F.silu(self.norm(h)).flatten(2).mean(-1)
        return self.head(h)


class ConditionalUNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dims, groups = config.spatial_dims, config.num_groups
        base = config.base_channels
        self.time_dim = time_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        age_dim = time_dim if config.age_conditioned else None
        self.age_mlp = (nn.Sequential(nn.Linear(1, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
                        if config.age_conditioned else None)
        block_kwargs = dict(num_groups=groups, time_dim=time_dim, cond_dim=config.z_sem_dim, age_dim=age_dim,
                            dropout=config.dropout)

        self.stem = conv_nd(dims, config.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        ch = base
        n_levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                out = base * mult
                stage = nn.ModuleList([ResBlock(dims, ch, out, **block_kwargs)])
                if level in config.attention_levels:
                    stage.append(AttentionBlock(dims, out, groups))
                self.down.append(stage)
                ch = out
                skip_channels.append(ch)
            if level < n_levels - 1:
                self.down.append(nn.ModuleList([Downsample(dims, ch)]))
                skip_channels.append(ch)

        self.middle = nn.ModuleList([ResBlock(dims, ch, ch, **block_kwargs), AttentionBlock(dims, ch, groups),
                                     ResBlock(dims, ch, ch, **block_kwargs)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                out = base * mult
                stage = nn.ModuleList([ResBlock(dims, ch + skip_channels.pop(), out, **block_kwargs)])
                if level in config.attention_levels:
                    stage.append(AttentionBlock(dims, out, groups))
                ch = out
                if level > 0 and i == config.num_res_blocks:
                    stage.append(Upsample(dims, ch))
                self.up.append(stage)

        self.out_norm = group_norm(ch, groups)
        self.out_conv = conv_nd(dims, ch, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.base = base

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor,
                age: torch.Tensor | None = None) -> torch.Tensor:
        time_emb = self.time_mlp(timestep_embedding(t, self.base))
        age_emb = None
        if self.age_mlp is not None:
            if age is None:
                raise ValueError("this DAE is age-conditioned: pass `age` (years) for every image")
            # Centred and scaled so the embedding starts near zero for adult ages.
            age_emb = self.age_mlp(((age.float() - 50.0) / 20.0).view(-1, 1))
        cond = (time_emb, z_sem, age_emb)

        h = self.stem(x_t)
        skips = [h]
        for stage in self.down:
            for layer in stage:
                h = layer(h, *cond) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, *cond) if isinstance(layer, ResBlock) else layer(h)
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in stage:
                if isinstance(layer, ResBlock):
                    h = layer(h, *cond)
                elif isinstance(layer, Upsample):
                    h = layer(h, skips[-1].shape[2:])
                else:
                    h = layer(h)
        return self.out_conv(F.silu(self.out_norm(h)))
