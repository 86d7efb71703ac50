"""DAE checkpoints on disk: model + EMA + optimiser + config + step, written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndae.errors import NdaeError
from ndae.io import atomic_torch_save
from ndae.model.config import DAEConfig
from ndae.model.dae import DiffusionAutoencoder, unwrap
from ndae.model.ema import EMA
from ndae.model.training import make_optimizer

FORMAT = "ndae-dae-checkpoint/1"


@dataclass
class Checkpoint:
    model: DiffusionAutoencoder
    ema: EMA
    optimizer: torch.optim.Optimizer
    config: DAEConfig
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, step: int,
                    extra: dict[str, Any] | None = None) -> None:
    """Model + EMA + optimiser + config + step (+ generator state etc. in `extra`), atomically."""
    core = unwrap(model)
    atomic_torch_save(path, {
        "format": FORMAT,
        "config": core.config.to_dict(),
        "model": core.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "extra": extra or {},
    })


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise NdaeError(f"DAE checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # unpickling errors vary by torch version
        raise NdaeError(f"DAE checkpoint {path} cannot be read: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NdaeError(f"{path} is not an ndae DAE checkpoint (missing format '{FORMAT}')")
    config = DAEConfig.from_dict(state["config"])
    model = DiffusionAutoencoder(config).to(device)
    model.load_state_dict(state["model"])
    ema = EMA(model, config.train.ema_decay, config.train.ema_warmup)
    ema.load_state_dict(state["ema"])
    optimizer = make_optimizer(model, config)
    optimizer.load_state_dict(state["optimizer"])
    return Checkpoint(model, ema, optimizer, config, int(state["step"]), dict(state.get("extra", {})))
