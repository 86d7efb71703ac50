"""The diffusion autoencoder (Diff-AE, Preechakul et al. 2022) as one `nn.Module`.

One module with one `forward(x_t, t, x_start)` that runs the encoder and the decoder, so that
encoder and decoder train jointly and Opacus can wrap the whole thing (per-sample gradients need
every parameter used inside a single forward call). The diffusion process itself lives in
`ndae.diffusion` and knows nothing about this network. `build_model` makes one from a config
(seeded), `unwrap` finds it inside an Opacus `GradSampleModule`, `model_device` says where it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ndae.diffusion.gaussian import GaussianDiffusion
from ndae.model.config import DAEConfig
from ndae.model.networks import ConditionalUNet, SemanticEncoder


class DiffusionAutoencoder(nn.Module):
    def __init__(self, config: DAEConfig):
        super().__init__()
        self.config = config
        self.encoder = SemanticEncoder(config.model)
        self.unet = ConditionalUNet(config.model)
        # Not a submodule: holds no parameters and is rebuilt from the config.
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)

    def encode(self, x_start: torch.Tensor) -> torch.Tensor:
        return self.encoder(x_start)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor | None = None,
                z_sem: torch.Tensor | None = None, age: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂(x_t, t, z_sem) with z_sem = encoder(x_start) unless given."""
        if z_sem is None:
            if x_start is None:
                raise ValueError("pass x_start (to encode) or z_sem")
            z_sem = self.encoder(x_start)
        return self.unet(x_t, t, z_sem, age)

    def epsilon_fn(self, z_sem: torch.Tensor, age: torch.Tensor | None = None):
        """A closure ε(x_t, t) for the network-independent DDIM code."""
        return lambda x_t, t: self.unet(x_t, t, z_sem, age)

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": count(self.encoder), "unet": count(self.unet), "total": count(self)}


def build_model(config: DAEConfig, seed: int | None = None, device: str | torch.device = "cpu") -> DiffusionAutoencoder:
    if seed is not None:
        torch.manual_seed(seed)
    return DiffusionAutoencoder(config).to(device)


def unwrap(model: nn.Module) -> DiffusionAutoencoder:
    """The DiffusionAutoencoder inside an Opacus GradSampleModule (or the model itself)."""
    while not isinstance(model, DiffusionAutoencoder) and hasattr(model, "_module"):
        model = model._module
    return model  # type: ignore[return-value]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
