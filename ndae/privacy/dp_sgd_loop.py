"""The one DP-SGD training loop: epochs of Poisson batches through an Opacus private model.

Used by a site's federated round (`ndae.federation.site.privacy`), by the privacy benchmark
(`benchmarks/bench_privacy.py`) and by the privacy tests, so that what is benchmarked and tested
is what runs at a hospital. (`ndae train` is centralised, non-private training; it has no DP
mode.) `ndae.model.training.train_steps` is plain training and refuses a DP optimizer.

Every batch (an empty Poisson batch too) is one accounted step. The randomness that protects
privacy comes from generators the caller gives, never from the global torch generator: which
records form each batch (`make_private(sampling_generator=...)`), the Gaussian noise
(`make_private(noise_generator=...)` and `noise_generator` here for empty batches), and the
timesteps, denoising targets and flips (`generator` here). At a site they are seeded from the
operating system's CSPRNG (`ndae.privacy.randomness.SiteRandomness`).
"""

from __future__ import annotations

__all__ = ["DenoisingCriterion", "dp_epochs", "noise_only_step"]


class DenoisingCriterion:
    """The Diff-AE loss as a criterion(ε̂, noise, t) with a `reduction` (what Opacus' ghost
    clipping needs: it switches reduction to "none" to get one loss per sample)."""

    def __init__(self, diffusion, reduction: str = "mean"):
        self.diffusion, self.reduction = diffusion, reduction

    def __call__(self, epsilon_pred, noise, t):
        per_sample = self.diffusion.per_sample_loss(epsilon_pred, noise, t)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()


def dp_epochs(private, ema, epochs: int, generator, noise_generator, flip: bool, device) -> list[float]:
    """DP-SGD epochs over the private loader's Poisson batches; returns the batch losses.

    `generator` draws the diffusion timesteps, the denoising targets and the flips;
    `noise_generator` the Gaussian update of an empty batch (Opacus draws the noise of the other
    steps from the generator given to `make_private`)."""
    import torch

    from ndae.model.dae import unwrap

    module, optimizer, criterion = private.module, private.optimizer, private.criterion
    diffusion = unwrap(module).diffusion
    module.train()
    losses: list[float] = []
    for _ in range(epochs):
        for batch in private.data_loader:
            images = batch[0].to(device, torch.float32)
            ages = batch[1].to(device, torch.float32) if len(batch) > 1 else None
            b = images.shape[0]
            if flip and b:
                flips = torch.rand(b, generator=generator) < 0.5
                images = torch.where(flips.view(-1, *([1] * (images.dim() - 1))).to(device), images.flip(-1), images)
            t = diffusion.sample_timesteps(b, generator).to(device)
            noise = torch.randn(images.shape, generator=generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            if b:
                x_t = diffusion.q_sample(images, t, noise)
                loss = criterion(module(x_t, t, images, None, ages), noise, t)
                loss.backward()
                losses.append(float(loss.detach()))
                optimizer.step()
            else:
                noise_only_step(private, noise_generator)
            if ema is not None:
                ema.update(module)
    return losses


def noise_only_step(private, generator) -> None:
    """An empty Poisson batch is still a DP-SGD step: the update is the Gaussian noise alone
    (what Opacus would add to a zero gradient sum), and it is accounted. Done by hand because the
    DAE's attention cannot run a forward pass on zero images."""
    import torch

    optimizer = private.optimizer
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    for parameter in optimizer.params:
        noise = torch.normal(0.0, std, parameter.shape, generator=generator)
        parameter.grad = (noise / optimizer.expected_batch_size).to(parameter.device, parameter.dtype)
    optimizer.original_optimizer.step()
    private.engine.accountant.step(noise_multiplier=optimizer.noise_multiplier, sample_rate=private.sample_rate)
    optimizer.zero_grad(set_to_none=True)
