"""Baseline 3: a generative normative model without diffusion.

A small convolutional autoencoder (GroupNorm, as the DAE, so it could train under Opacus too)
is trained on the same healthy control slices as the DAE. A subject's deviation is described by
(a) the reconstruction error inside the brain mask — the classic "anomaly score" of
autoencoder normative models — and (b) the Mahalanobis distance and cosine of its latent code
against the project's `NormativeModel` fitted on the controls' codes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ndae.baselines.common import check_controls, check_rows, control_mask, covariate_frame
from ndae.normative.model import NormativeModel, OutOfRangeWarning


def _block(c_in: int, c_out: int, groups: int, down: bool) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1) if down else nn.ConvTranspose2d(
        c_in, c_out, 4, stride=2, padding=1)
    return nn.Sequential(conv, nn.GroupNorm(min(groups, c_out), c_out), nn.SiLU())


class ConvAutoencoder(nn.Module):
    """[n, C, H, W] → latent [n, latent_dim] → [n, C, H, W]; H and W divisible by 8."""

    def __init__(self, in_channels: int, image_size: tuple[int, int] = (48, 40), latent_dim: int = 16,
                 channels: tuple[int, ...] = (16, 32, 64), groups: int = 8):
        super().__init__()
        scale = 2 ** len(channels)
        if image_size[0] % scale or image_size[1] % scale:
            raise ValueError(f"image_size {image_size} must be divisible by {scale}")
        self.in_channels, self.image_size, self.latent_dim = int(in_channels), tuple(image_size), int(latent_dim)
        self.bottom = (channels[-1], image_size[0] // scale, image_size[1] // scale)
        flat = int(np.prod(self.bottom))
        layers, c = [], in_channels
        for width in channels:
            layers.append(_block(c, width, groups, down=True))
            c = width
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, latent_dim))
        up = []
        for width in reversed(channels[:-1]):
            up.append(_block(c, width, groups, down=False))
            c = width
        self.decoder_input = nn.Linear(latent_dim, flat)
        self.decoder = nn.Sequential(*up, nn.ConvTranspose2d(c, in_channels, 4, stride=2, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z).view(-1, *self.bottom)
        return torch.tanh(self.decoder(h))  # images live in [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@dataclass
class AutoencoderTraining:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    flip_augment: bool = True


def resize_images(images: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images, np.float32))
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(masks, np.float32))
    if tuple(m.shape[2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="area")
    return m >= 0.5


class AutoencoderBaseline:
    """`fit` trains the autoencoder on the controls' slices and a `NormativeModel` on their
    latents; `features` gives `ae_reconstruction_error`, `ae_latent_mahalanobis`,
    `ae_latent_cosine` per subject."""

    def __init__(self, image_size: tuple[int, int] = (48, 40), latent_dim: int = 16,
                 training: AutoencoderTraining | None = None, min_controls: int = 8):
        self.image_size, self.latent_dim = tuple(image_size), int(latent_dim)
        self.training = training or AutoencoderTraining()
        self.min_controls = int(min_controls)
        self.model_: ConvAutoencoder | None = None

    def fit(self, images: np.ndarray, masks: np.ndarray, covariates: pd.DataFrame) -> "AutoencoderBaseline":
        """Train on these (control) slices [n, C, H, W] in [-1, 1]; masks [n, 1, H, W]."""
        covariates = covariate_frame(covariates)
        check_rows("autoencoder baseline", len(covariates), images, masks)
        check_controls("the autoencoder baseline", np.ones(len(images), bool), self.min_controls)
        cfg = self.training
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        x = resize_images(images, self.image_size)
        m = resize_masks(masks, self.image_size).float()
        model = ConvAutoencoder(x.shape[1], self.image_size, self.latent_dim)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        model.train()
        self.losses_ = []
        batch = min(cfg.batch_size, len(x))
        for _ in range(cfg.steps):
            index = torch.randperm(len(x), generator=generator)[:batch]
            xb, mb = x[index], m[index]
            if cfg.flip_augment:
                flip = (torch.rand(len(index), generator=generator) < 0.5).view(-1, 1, 1, 1)
                xb, mb = torch.where(flip, xb.flip(-1), xb), torch.where(flip, mb.flip(-1), mb)
            # Mean squared error over the brain (the background is constant -1 and uninformative).
            loss = (((model(xb) - xb) ** 2) * mb).sum() / (mb.sum() * x.shape[1]).clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.losses_.append(float(loss.detach()))
        self.model_ = model.eval()
        latent, _ = self._latent_and_error(images, masks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            self.normative_ = NormativeModel().fit(
                covariates, latent, feature_names=[f"ae_latent_{k}" for k in range(self.latent_dim)])
        return self

    @torch.no_grad()
    def _latent_and_error(self, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = resize_images(images, self.image_size)
        m = resize_masks(masks, self.image_size).float()
        latents, errors = [], []
        for start in range(0, len(x), 64):
            xb, mb = x[start:start + 64], m[start:start + 64]
            z = self.model_.encode(xb)
            squared = ((self.model_.decode(z) - xb) ** 2 * mb).flatten(1).sum(1)
            errors.append(squared / (mb.flatten(1).sum(1) * x.shape[1]).clamp(min=1))
            latents.append(z)
        return torch.cat(latents).double().numpy(), torch.cat(errors).double().numpy()

    def features(self, images: np.ndarray, masks: np.ndarray, covariates: pd.DataFrame) -> pd.DataFrame:
        from ndae.deviation.scores import deviation_table

        covariates = covariate_frame(covariates)
        check_rows("autoencoder baseline", len(covariates), images, masks)
        latent, error = self._latent_and_error(images, masks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            scores = deviation_table(covariates["subject"], covariates, latent, self.normative_)
        return pd.DataFrame({
            "subject": covariates["subject"].to_numpy(),
            "ae_reconstruction_error": error,
            "ae_latent_mahalanobis": scores["mahalanobis"].to_numpy(),
            "ae_latent_cosine": scores["cosine"].to_numpy(),
        })


def fit_autoencoder_features(images, masks, covariates: pd.DataFrame, groups, **options) -> tuple[pd.DataFrame, AutoencoderBaseline]:
    """Train on the rows with group 'control', score every row."""
    controls = control_mask(groups)
    covariates = covariate_frame(covariates)
    baseline = AutoencoderBaseline(**options).fit(images[controls], masks[controls], covariates[controls])
    return baseline.features(images, masks, covariates), baseline
