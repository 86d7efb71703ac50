"""Library API around the diffusion autoencoder: train, encode, invert, decode, save, federate.

Everything takes plain arrays or tensors and is deterministic under a seed (a `torch.Generator`
draws timesteps, noise and flips). Federated code calls the same functions a centralised run
does: `train_steps` on a site's batches, `get_weights`/`set_weights` for FedAvg. `train_steps` is
plain (non-private) training; everything trained under DP goes through the one DP-SGD loop,
`ndae.privacy.dp_sgd_loop.dp_epochs` (every Poisson batch, an empty one too, is one accounted
step there), and `train_steps` refuses an Opacus `DPOptimizer`.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ndae.errors import NdaeError
from ndae.io import atomic_torch_save
from ndae.model.config import DAEConfig
from ndae.model.dae import DiffusionAutoencoder

ArrayLike = Any  # numpy array or torch tensor


# ---- basics ------------------------------------------------------------------------------------
def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for the training draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def unwrap(model: nn.Module) -> DiffusionAutoencoder:
    """The DiffusionAutoencoder inside an Opacus GradSampleModule (or the model itself)."""
    while not isinstance(model, DiffusionAutoencoder) and hasattr(model, "_module"):
        model = model._module
    return model  # type: ignore[return-value]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def build_model(config: DAEConfig, seed: int | None = None, device: str | torch.device = "cpu") -> DiffusionAutoencoder:
    if seed is not None:
        torch.manual_seed(seed)
    return DiffusionAutoencoder(config).to(device)


def _as_tensor(x: ArrayLike, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def prepare_images(images: ArrayLike, config: DAEConfig) -> torch.Tensor:
    """The DAE's data transform: float tensor [n, C, *image_size], resized (antialiased) if needed.

    Input is the prepared-slice contract: [n, C, H, W] (or [n, C, D, H, W] in 3-D) in [-1, 1].
    """
    x = _as_tensor(images)
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
    m = _as_tensor(masks)
    size = tuple(config.model.image_size)
    if tuple(m.shape[2:]) != size:
        m = F.interpolate(m, size=size, mode="area")
    return m >= 0.5


def batch_iterator(images: ArrayLike, ages: ArrayLike | None = None, batch_size: int = 16,
                   generator: torch.Generator | None = None, flip: bool = True) -> Iterator[tuple]:
    """Endless shuffled mini-batches (images, ages) with random left–right flips (last axis = x)."""
    x = _as_tensor(images)
    a = None if ages is None else _as_tensor(ages)
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


# ---- EMA ---------------------------------------------------------------------------------------
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


def make_optimizer(model: nn.Module, config: DAEConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)


# ---- training ----------------------------------------------------------------------------------
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


# ---- inference ---------------------------------------------------------------------------------
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
    return None if ages is None else _as_tensor(ages).reshape(n)


@torch.no_grad()
def invert(model: nn.Module, images: ArrayLike, z_sem: ArrayLike | None = None, ages: ArrayLike | None = None,
           steps: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Deterministic DDIM inversion of the images to their stochastic code x_T (CPU float32)."""
    core = unwrap(model).eval()
    device = model_device(core)
    x = prepare_images(images, core.config)
    z = encode(core, x) if z_sem is None else _as_tensor(z_sem)
    steps = steps or core.config.diffusion.sample_steps

    def run(xb, zb, ab):
        fn = core.epsilon_fn(zb.to(device), None if ab is None else ab.to(device))
        return core.diffusion.ddim_invert(fn, xb.to(device), steps)

    return _batched(run, x.shape[0], batch_size, x, z, _ages(ages, x.shape[0]))


@torch.no_grad()
def decode(model: nn.Module, z_sem: ArrayLike, x_T: ArrayLike, ages: ArrayLike | None = None,
           steps: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """DDIM decoding of (z_sem, x_T) to images at the model's size (CPU float32)."""
    core = unwrap(model).eval()
    device = model_device(core)
    z, xT = _as_tensor(z_sem), _as_tensor(x_T)
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
    za, zb = _as_tensor(z_sem_a).reshape(-1), _as_tensor(z_sem_b).reshape(-1)
    xa = _as_tensor(x_T_a)
    xb = xa if x_T_b is None else _as_tensor(x_T_b)
    cfg = unwrap(model).config.model
    shape = (cfg.in_channels, *cfg.image_size)
    xa, xb = xa.reshape(shape), xb.reshape(shape)
    z = torch.stack([(1 - a) * za + a * zb for a in alphas])
    x_T = torch.stack([slerp(xa, xb, a) for a in alphas])
    age = None if ages is None else _as_tensor(ages).reshape(1).expand(len(alphas))
    return decode(model, z, x_T, age, steps)


# ---- federation --------------------------------------------------------------------------------
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


# ---- checkpoints -------------------------------------------------------------------------------
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
        "format": "ndae-dae-checkpoint/1",
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
    if not isinstance(state, dict) or state.get("format") != "ndae-dae-checkpoint/1":
        raise NdaeError(f"{path} is not an ndae DAE checkpoint (missing format 'ndae-dae-checkpoint/1')")
    config = DAEConfig.from_dict(state["config"])
    model = DiffusionAutoencoder(config).to(device)
    model.load_state_dict(state["model"])
    ema = EMA(model, config.train.ema_decay, config.train.ema_warmup)
    ema.load_state_dict(state["ema"])
    optimizer = make_optimizer(model, config)
    optimizer.load_state_dict(state["optimizer"])
    return Checkpoint(model, ema, optimizer, config, int(state["step"]), dict(state.get("extra", {})))


# ---- metrics -----------------------------------------------------------------------------------
# (SSIM, whole image or in a mask: `ndae.model.metrics.ssim`, MONAI's implementation.)
def psnr_in_mask(reconstruction: ArrayLike, target: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """PSNR (dB) per image over the brain mask, for images in [-1, 1] (peak-to-peak 2)."""
    r, x = _as_tensor(reconstruction), _as_tensor(target)
    m = _as_tensor(mask).bool().expand_as(x)
    err = ((r - x) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    return (10 * torch.log10(4.0 / err.clamp(min=1e-12))).numpy()
