"""Runs AT THE SITE: one round of local DAE training from the server's weights (non-private; the
DP-SGD round is `ndae.federation.site.private_releases`).
"""

from __future__ import annotations

import zlib

import numpy as np

from ndae.errors import NdaeError
from ndae.federation.site.data import SiteData

# ---- the DAE ----------------------------------------------------------------------------------
__all__ = ['build_dae', 'local_steps', 'site_seed', 'start_local_round', 'train_round']


def build_dae(dae_config: dict, device="cpu"):
    """Model and EMA for a DAE config dict (weights are loaded from a message afterwards)."""
    from ndae.model import EMA, DAEConfig, build_model

    cfg = DAEConfig.from_dict(dae_config)
    import torch

    with torch.random.fork_rng(devices=[]):  # build_model seeds torch's global generator: leave it as it was
        model = build_model(cfg, seed=0, device=device)
    return model, EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)


def local_steps(n_controls: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps in `epochs` passes over n controls (batch_iterator drops the last partial batch)."""
    if n_controls == 0:
        return 0
    return epochs * max(1, n_controls // min(batch_size, n_controls))


def site_seed(seed: int, round_number: int, site_name: str) -> int:
    """A seed for one NON-private site round: the same (seed, round, site) gives the same draws,
    so plain runs repeat and resume exactly. Never used for privacy: the server knows all three
    (private rounds draw from the site's CSPRNG, `ndae.privacy.randomness`)."""
    return (seed * 1_000_003 + round_number * 7919 + zlib.crc32(site_name.encode())) % 2**31


def start_local_round(site: SiteData, weights, dae_config: dict, ema_step: int, device: str = "auto",
                      canaries=None):
    """A fresh local DAE holding the global weights, and the site's training images.

    Returns (model, ema, images, ages): the controls, plus the included canaries when the site
    audits the run (`canaries`, an ndae.privacy.canaries.CanarySet); ages are None unless the DAE
    is age-conditioned. Plain and DP-SGD rounds both start here, so both train on the same records.
    """
    from ndae.federation.records import record_to_dae
    from ndae.model import prepare_images
    from ndae.model.run import resolve_device

    model, ema = build_dae(dae_config, resolve_device(device))
    record_to_dae(weights, model, ema)
    ema.step = int(ema_step)
    control = site.controls
    if not control.any():
        raise NdaeError(f"site {site.name!r} has no controls to train on")
    images = site.data.images[control]
    ages = np.asarray(site.data.ages, np.float32)[control]
    if canaries is not None and canaries.count:
        canary_images, canary_ages = canaries.training_images()
        if canary_images.shape[1:] != images.shape[1:]:
            raise NdaeError(f"site {site.name!r}: canaries of shape {canary_images.shape[1:]} do not match "
                            f"the slices {images.shape[1:]}")
        images = np.concatenate([images, canary_images.astype(images.dtype)])
        ages = np.concatenate([ages, canary_ages])
    x = prepare_images(images, model.config)
    return model, ema, x, (ages if model.config.model.age_conditioned else None)


def train_round(site: SiteData, weights, dae_config: dict, *, round_number: int, epochs: int, seed: int,
                ema_step: int, proximal_mu: float = 0.0, device: str = "auto", canaries=None):
    """E local epochs of DAE training from the global weights; returns (weights record, metrics).

    Stateless between rounds (a fresh Adam each round), so a round depends only on the global
    weights, the site's data and (seed, round, site): what makes server-side resume exact.
    """
    import torch

    from ndae.federation.records import dae_to_record
    from ndae.model import batch_iterator, make_optimizer, train_steps

    model, ema, x, ages = start_local_round(site, weights, dae_config, ema_step, device, canaries)
    cfg, n = model.config, int(x.shape[0])
    local_seed = site_seed(seed, round_number, site.name)
    generator = torch.Generator().manual_seed(local_seed)
    batches = batch_iterator(x, ages, cfg.train.batch_size, torch.Generator().manual_seed(local_seed + 1),
                             cfg.train.flip_augment)
    optimizer = make_optimizer(model, cfg)
    hooks = []
    if proximal_mu > 0:
        # FedProx: the gradient of mu/2 ||w - w_global||^2, added to every parameter's gradient.
        for parameter in model.parameters():
            anchor = parameter.detach().clone()
            hooks.append(parameter.register_hook(lambda g, p=parameter, a=anchor: g + proximal_mu * (p.detach() - a)))
    steps = local_steps(n, cfg.train.batch_size, epochs)
    try:
        losses = train_steps(model, ema, optimizer, batches, steps, generator=generator,
                             grad_clip=cfg.train.grad_clip, amp=cfg.train.amp)
    finally:
        for hook in hooks:
            hook.remove()
    metrics = {"num-examples": n, "train-loss": float(np.mean(losses)), "local-steps": steps}
    return dae_to_record(model, ema), metrics


