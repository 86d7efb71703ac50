"""Regional normative deviations from the diffusion prior (`ndae.deviation.prior_residuals`).

A DAE whose networks are replaced by known functions: the "U-Net" is an oracle denoiser whose x̂₀
is exactly a healthy template h plus z_sem[0] times a fixed pattern P (a decoder that uses z_sem),
and the "encoder" reads z_sem off the image. Every residual, region mean and swap number can then
be computed by hand, so a sign error, the wrong conditioning, a subject mixed up in a batch, or a
wrong average would show.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ndae.deviation.prior_residuals import (DRAWS, LEVELS, _noise, derangement, prior_residual_maps,
                                           prior_residual_regions)
from ndae.errors import NdaeError
from ndae.model.dae import build_model
from tests.test_dae_model import micro_config

H = W = 16


def template_and_pattern():
    yy, xx = np.mgrid[0:H, 0:W]
    brain = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 7.2**2
    h = np.where(brain, 0.2 + 0.02 * (yy - 8), -1.0).astype(np.float32)
    pattern = np.where(brain, 0.05 * np.sin(xx / 3.0), 0.0).astype(np.float32)
    channels = lambda a: np.stack([a, a[::-1]])  # noqa: E731  (two slices)
    return channels(h), channels(pattern), channels(brain)


C_XT = 0.1  # the oracle's x̂₀ also follows the noised input a little, so noise and level matter


class OracleUNet(nn.Module):
    """ε such that x̂₀ = h + z[:, 0]·P + C_XT·x_t exactly, for any x_t and t."""

    def __init__(self, diffusion, h, pattern):
        super().__init__()
        self.diffusion, self.weight = diffusion, nn.Parameter(torch.zeros(1))
        self.h, self.pattern = torch.as_tensor(h), torch.as_tensor(pattern)

    def forward(self, x_t, t, z_sem, age=None):
        a = self.diffusion.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
        x0 = self.h + z_sem[:, :1, None, None] * self.pattern + C_XT * x_t
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


class MeanEncoder(nn.Module):
    """z_sem[0] = 2 × the image's mean over the template's brain (the rest zeros)."""

    def __init__(self, brain, dim):
        super().__init__()
        self.brain, self.dim = torch.as_tensor(brain), dim

    def forward(self, x):
        z = torch.zeros(x.shape[0], self.dim)
        z[:, 0] = 2 * (x * self.brain).flatten(1).sum(1) / self.brain.sum()
        return z


@pytest.fixture()
def oracle_dae():
    config = micro_config()
    model = build_model(config, seed=0)
    h, pattern, brain = template_and_pattern()
    model.unet = OracleUNet(model.diffusion, h, pattern)
    model.encoder = MeanEncoder(brain, config.model.z_sem_dim)
    return model, config, h, pattern, brain


def subjects(h, brain):
    rng = np.random.default_rng(0)
    images = np.repeat(h[None], 5, axis=0) + 0.05 * rng.normal(size=(5, *h.shape)).astype(np.float32) * brain
    images[3, :, :, :8] -= 0.3 * brain[:, :, :8]  # subject 3: darker on the left of both slices
    return np.clip(images, -1, 1).astype(np.float32)


def noised(model, images):
    """x_t = √ᾱ x + √(1−ᾱ) ε for every level and draw, ε the same for every subject."""
    for k, t in enumerate(LEVELS):
        a = float(model.diffusion.alphas_cumprod[t])
        for draw in range(DRAWS):
            yield np.sqrt(a) * images + np.sqrt(1 - a) * _noise(images.shape[1:], k, draw).numpy()


def hand_residual(model, images, h, pattern, z):
    """x − x̂₀ averaged over levels and draws, x̂₀ = clip(h + z[0]·P + C_XT·x_t) (the Diff-AE clamp)."""
    residuals = [images - np.clip(h + z[:, :1, None, None] * pattern + C_XT * x_t, -1, 1)
                 for x_t in noised(model, images)]
    return np.mean(residuals, axis=0), residuals


def test_residuals_match_the_hand_computed_ones(oracle_dae):
    model, config, h, pattern, brain = oracle_dae
    images = subjects(h, brain)
    z_norm = np.zeros((5, config.model.z_sem_dim), np.float32)
    z_norm[:, 0] = [0.5, -0.5, 1.0, 0.0, 2.0]
    result = prior_residual_maps(model, config, images, z_norm)
    z_own = MeanEncoder(brain, config.model.z_sem_dim)(torch.as_tensor(images)).numpy()
    expected_normative, _ = hand_residual(model, images, h, pattern, z_norm)
    expected_own, own_per_level = hand_residual(model, images, h, pattern, z_own)
    np.testing.assert_allclose(result.maps["normative"], expected_normative, atol=2e-4)
    np.testing.assert_allclose(result.maps["own"], expected_own, atol=2e-4)
    # the swap: subject i denoised with its partner's z_sem, the move relative to i's own residual (per
    # level and draw; the oracle's move does not depend on them, its residual does)
    partner = derangement(5)
    assert (partner != np.arange(5)).all() and sorted(partner) == list(range(5))
    _, swapped_per_level = hand_residual(model, images, h, pattern, z_own[partner])
    moves = np.concatenate([np.linalg.norm(((own - swapped) * brain).reshape(5, -1), axis=1)
                            for own, swapped in zip(own_per_level, swapped_per_level)])
    sizes = np.concatenate([np.linalg.norm((own * brain).reshape(5, -1), axis=1) for own in own_per_level])
    assert result.swap["relative_change"] == pytest.approx(float(np.mean(moves / sizes)), rel=1e-3)
    # the same image gives the same residual wherever it sits in the batch (common noise)
    again = prior_residual_maps(model, config, images[::-1].copy(), z_norm[::-1].copy(), batch_size=2)
    np.testing.assert_allclose(again.maps["normative"][::-1], result.maps["normative"], atol=1e-6)
    # maps come back at the prepared slices' size (bilinear from the DAE's)
    larger = prior_residual_maps(model, config, images, z_norm, out_size=(32, 32))
    resized = torch.nn.functional.interpolate(torch.as_tensor(expected_normative), size=(32, 32), mode="bilinear",
                                              align_corners=False).numpy()
    np.testing.assert_allclose(larger.maps["normative"], resized, atol=2e-4)


def test_region_means_carry_the_sign_of_a_local_change(oracle_dae):
    model, config, h, pattern, brain = oracle_dae
    images = subjects(h, brain)
    z_norm = np.zeros((5, config.model.z_sem_dim), np.float32)
    atlas = np.where(brain, 5, 0).astype(np.int16)  # "ventricles": the right half
    atlas[:, :, :8] = np.where(brain[:, :, :8], 1, 0)  # "precentral": the left half
    brains = np.broadcast_to(brain, images.shape)
    table = prior_residual_regions(prior_residual_maps(model, config, images, z_norm), brains, atlas)
    assert {"prior_precentral", "prior_ventricles", "prior_own_precentral"} <= set(table.columns)
    # each conditioning's columns hold its own map's region means
    own = prior_residual_maps(model, config, images, z_norm).maps["own"]
    inside = brains & (atlas == 1)[None]
    np.testing.assert_allclose(table["prior_own_precentral"], (own * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3)),
                               atol=1e-9)
    left = table["prior_precentral"].to_numpy()
    right = table["prior_ventricles"].to_numpy()
    others = [0, 1, 2, 4]
    assert left[3] < left[others].min() - 0.2  # darker there: a negative residual, ≈ −0.3
    assert abs(right[3] - right[others].mean()) < 0.05  # and nowhere else


def test_refusals(oracle_dae):
    model, config, h, pattern, brain = oracle_dae
    images = subjects(h, brain)
    with pytest.raises(NdaeError, match="normative z_sem of shape"):
        prior_residual_maps(model, config, images, np.zeros((4, config.model.z_sem_dim)))
    with pytest.raises(NdaeError, match="levels"):
        prior_residual_maps(model, config, images, np.zeros((5, config.model.z_sem_dim)), levels=(1000,))
