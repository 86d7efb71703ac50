"""Exponential moving average of the DAE's weights (the weights used to encode and decode)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ndae.model.dae import DiffusionAutoencoder, model_device, unwrap


class EMA:
    """Exponential moving average of the weights with warm-up.

    decay_t = min(decay, (1 + t) / (warmup + t)) so a short run is not dominated by the initial
    (random) weights; `model` is a separate DiffusionAutoencoder used for encoding and decoding.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 10):
        source = unwrap(model)
        self.model = DiffusionAutoencoder(source.config).to(model_device(source))
        self.model.load_state_dict(source.state_dict())
        self.model.eval().requires_grad_(False)
        self.decay, self.warmup, self.step = float(decay), int(warmup), 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.step) / (self.warmup + self.step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        source = unwrap(model).state_dict()
        for name, shadow in self.model.state_dict().items():
            value = source[name].detach()
            if shadow.dtype.is_floating_point:
                shadow.mul_(d).add_(value, alpha=1 - d)
            else:
                shadow.copy_(value)
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "decay": self.decay, "warmup": self.warmup, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.warmup, self.step = float(state["decay"]), int(state["warmup"]), int(state["step"])
