"""Diffusion autoencoder: configs, networks, and the train/encode/invert/decode API."""

from ndae.model.config import DAEConfig, DiffusionConfig, ModelConfig, TrainConfig, preset
from ndae.model.dae import DiffusionAutoencoder
from ndae.model.metrics import ssim
from ndae.model.training import (
    EMA, Checkpoint, batch_iterator, build_model, decode, encode, get_weights, interpolate, invert,
    load_checkpoint, make_optimizer, prepare_images, prepare_masks, psnr_in_mask, save_checkpoint,
    set_seed, set_weights, train_steps, unwrap,
)

__all__ = [
    "DAEConfig", "DiffusionConfig", "ModelConfig", "TrainConfig", "preset", "DiffusionAutoencoder", "EMA",
    "Checkpoint", "batch_iterator", "build_model", "decode", "encode", "get_weights", "interpolate", "invert",
    "load_checkpoint", "make_optimizer", "prepare_images", "prepare_masks", "psnr_in_mask", "save_checkpoint",
    "set_seed", "set_weights", "ssim", "train_steps", "unwrap",
]
