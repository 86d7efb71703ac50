"""Plain (non-private) training of the diffusion autoencoder: seeds, batches, optimiser, loop.

Everything is deterministic under a seed (a `torch.Generator` draws timesteps, noise and flips).
Federated code calls the same `train_steps` on a site's batches that a centralised run does.
`train_steps` is plain training; everything trained under DP goes through the one DP-SGD loop,
`ndae.privacy.dp_sgd_loop.dp_epochs` (every Poisson batch, an empty one too, is one accounted
step there), and `train_steps` refuses an Opacus `DPOptimizer`. The weights' moving average is
`ndae.model.ema`, checkpoints `ndae.model.checkpoint`, encoding and decoding `ndae.model.inference`.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ndae.errors import NdaeError
from ndae.model.config import DAEConfig
from ndae.model.dae import model_device, unwrap
from ndae.model.ema import EMA
from ndae.model.inputs import as_tensor

ArrayLike = Any  # numpy array or torch tensor


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for the training draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: nn.Module, config: DAEConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)


def batch_iterator(images: ArrayLike, ages: ArrayLike | None = None, batch_size: int = 16,
                   generator: torch.Generator | None = None, flip: bool = True) -> Iterator[tuple]:
    """Endless shuffled mini-batches (images, ages) with random left–right flips (last axis = x)."""
    x = as_tensor(images)
    a = None if ages is None else as_tensor(ages)
    n = x.shape[0]
    if n == 0:
        raise NdaeError("no training images (is the manifest's control group empty?)")
    generator = generator or torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - min(batch_size, n) + 1, min(batch_size, n)):
            idx = order[start:start + batch_size]
            xb = x[idx]
            if flip:
                flips = torch.rand(len(idx), generator=generator) < 0.5
                xb = torch.where(flips.view(-1, *([1] * (xb.dim() - 1))), xb.flip(-1), xb)
            yield (xb, None if a is None else a[idx])


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _refuse_dp(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """train_steps is not a DP-SGD loop: it would skip empty Poisson batches (steps the accountant
    still counts) and draw nothing the site's privacy rests on. Point DP callers at the one loop."""
    wrapped = model is not unwrap(model)  # an Opacus GradSampleModule
    if hasattr(optimizer, "original_optimizer") or wrapped:  # opacus.optimizers.DPOptimizer
        raise NdaeError(
            "train_steps is plain (non-private) training and refuses an Opacus DP optimizer / private module: "
            "train under DP with ndae.privacy.dp_sgd_loop.dp_epochs on what "
            "ndae.privacy.opacus_training.make_private returns")


def train_steps(model: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer,
                batches: Iterable, n_steps: int, *, generator: torch.Generator | None = None,
                grad_clip: float | None = None, amp: bool = True,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Run `n_steps` optimiser steps of the Diff-AE loss; return the loss of each step.

    `batches` yields image tensors [b, C, ...] already at the model's size (see
    `prepare_images`) or tuples (images, ages); a finite iterable is restarted when exhausted.
    Timesteps and noise are drawn from `generator` (CPU) so runs repeat exactly under a seed.
    Non-private only: a DP optimizer raises NdaeError (use `ndae.privacy.dp_sgd_loop.dp_epochs`).
    """
    _refuse_dp(model, optimizer)
    core = unwrap(model)
    diffusion = core.diffusion
    device = model_device(core)
    generator = generator or torch.Generator().manual_seed(0)
    model.train()
    iterator = iter(batches)
    losses: list[float] = []
    while len(losses) < n_steps:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(batches)
            batch = next(iterator)
        images, ages = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, (tuple, list)) else (batch, None)
        images = images.to(device, torch.float32)
        ages = None if ages is None else ages.to(device, torch.float32)
        b = images.shape[0]
        if b == 0:
            raise NdaeError("train_steps: an empty batch (Poisson-sampled batches belong to "
                            "ndae.privacy.dp_sgd_loop.dp_epochs)")
        t = diffusion.sample_timesteps(b, generator).to(device)
        noise = torch.randn(images.shape, generator=generator).to(device)
        x_t = diffusion.q_sample(images, t, noise)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            epsilon = model(x_t, t, images, None, ages)
        loss = diffusion.per_sample_loss(epsilon, noise, t).mean()
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NdaeError(f"DAE training diverged: loss {value} at step {len(losses)} (lower the learning rate)")
        losses.append(value)
        if on_step is not None:
            on_step(len(losses), value)
    return losses
