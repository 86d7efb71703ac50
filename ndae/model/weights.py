"""The DAE's state as a list of NumPy arrays (state_dict order): what a FedAvg message carries."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ndae.errors import NdaeError
from ndae.model.dae import unwrap


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """All state (parameters, buffers) as NumPy arrays in state_dict order: a FedAvg message."""
    return [v.detach().cpu().numpy().copy() for v in unwrap(model).state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    core = unwrap(model)
    state = core.state_dict()
    if len(weights) != len(state):
        raise NdaeError(f"set_weights: got {len(weights)} arrays, the DAE has {len(state)} tensors")
    new_state = {}
    for (name, old), w in zip(state.items(), weights):
        if tuple(old.shape) != tuple(np.shape(w)):
            raise NdaeError(f"set_weights: '{name}' has shape {tuple(old.shape)}, got {tuple(np.shape(w))}")
        new_state[name] = torch.as_tensor(np.asarray(w), dtype=old.dtype)
    core.load_state_dict(new_state)
