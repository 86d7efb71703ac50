"""Inference with a trained DAE: encode to z_sem, DDIM-invert to x_T, decode, interpolate.

All take arrays in the prepared-slice format (`ndae.model.inputs.prepare_images`) or latents,
run in batches on the model's device and return CPU float32 tensors.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ndae.model.dae import model_device, unwrap
from ndae.model.inputs import as_tensor, prepare_images

ArrayLike = Any  # numpy array or torch tensor


def _batched(fn: Callable[..., torch.Tensor], n: int, batch_size: int, *arrays) -> torch.Tensor:
    out = []
    for start in range(0, n, batch_size):
        out.append(fn(*[None if a is None else a[start:start + batch_size] for a in arrays]).cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def encode(model: nn.Module, images: ArrayLike, batch_size: int = 64) -> torch.Tensor:
    """z_sem [n, z_sem_dim] (CPU float32) for images in the prepared-slice format."""
    core = unwrap(model).eval()
    device = model_device(core)
    x = prepare_images(images, core.config)
    return _batched(lambda xb: core.encode(xb.to(device)).float(), x.shape[0], batch_size, x)


def _ages(ages: ArrayLike | None, n: int) -> torch.Tensor | None:
    return None if ages is None else as_tensor(ages).reshape(n)


@torch.no_grad()
def invert(model: nn.Module, images: ArrayLike, z_sem: ArrayLike | None = None, ages: ArrayLike | None = None,
           steps: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Deterministic DDIM inversion of the images to their stochastic code x_T (CPU float32)."""
    core = unwrap(model).eval()
    device = model_device(core)
    x = prepare_images(images, core.config)
    z = encode(core, x) if z_sem is None else as_tensor(z_sem)
    steps = steps or core.config.diffusion.sample_steps

    def run(xb, zb, ab):
        fn = core.epsilon_fn(zb.to(device), None if ab is None else ab.to(device))
        return core.diffusion.ddim_invert(fn, xb.to(device), steps, core.config.diffusion.clip_denoised)

    return _batched(run, x.shape[0], batch_size, x, z, _ages(ages, x.shape[0]))


@torch.no_grad()
def decode(model: nn.Module, z_sem: ArrayLike, x_T: ArrayLike, ages: ArrayLike | None = None,
           steps: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """DDIM decoding of (z_sem, x_T) to images at the model's size (CPU float32)."""
    core = unwrap(model).eval()
    device = model_device(core)
    z, xT = as_tensor(z_sem), as_tensor(x_T)
    steps = steps or core.config.diffusion.sample_steps
    clip = core.config.diffusion.clip_denoised

    def run(zb, xb, ab):
        fn = core.epsilon_fn(zb.to(device), None if ab is None else ab.to(device))
        return core.diffusion.ddim_sample(fn, xb.to(device), steps, clip)

    return _batched(run, z.shape[0], batch_size, z, xT, _ages(ages, z.shape[0]))


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation (for x_T, which lives on a Gaussian shell)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.clamp(torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    if theta < 1e-6:
        return (1 - alpha) * a + alpha * b
    return (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)


@torch.no_grad()
def interpolate(model: nn.Module, z_sem_a: ArrayLike, z_sem_b: ArrayLike, x_T_a: ArrayLike, x_T_b: ArrayLike | None = None,
                alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), ages: ArrayLike | None = None,
                steps: int | None = None) -> torch.Tensor:
    """Decode a path between two subjects: linear in z_sem, spherical in x_T (x_T_b defaults to x_T_a)."""
    za, zb = as_tensor(z_sem_a).reshape(-1), as_tensor(z_sem_b).reshape(-1)
    xa = as_tensor(x_T_a)
    xb = xa if x_T_b is None else as_tensor(x_T_b)
    cfg = unwrap(model).config.model
    shape = (cfg.in_channels, *cfg.image_size)
    xa, xb = xa.reshape(shape), xb.reshape(shape)
    z = torch.stack([(1 - a) * za + a * zb for a in alphas])
    x_T = torch.stack([slerp(xa, xb, a) for a in alphas])
    age = None if ages is None else as_tensor(ages).reshape(1).expand(len(alphas))
    return decode(model, z, x_T, age, steps)
