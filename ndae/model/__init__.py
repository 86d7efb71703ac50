"""Diffusion autoencoder: configs (`config`), networks (`blocks`, `networks`, `dae`), the data
transform (`inputs`), training (`training`, `ema`), checkpoints (`checkpoint`), FedAvg weights
(`weights`), encode / invert / decode (`inference`), PSNR and SSIM (`metrics`), the latent age
probe (`probe`) and the centralised runs behind `ndae train` / `ndae encode` (`run`)."""

from ndae.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ndae.model.config import DAEConfig, DiffusionConfig, ModelConfig, TrainConfig, preset
from ndae.model.dae import DiffusionAutoencoder, build_model, unwrap
from ndae.model.ema import EMA
from ndae.model.inference import decode, encode, interpolate, invert
from ndae.model.inputs import prepare_images, prepare_masks
from ndae.model.metrics import psnr_in_mask, ssim
from ndae.model.training import batch_iterator, make_optimizer, set_seed, train_steps
from ndae.model.weights import get_weights, set_weights

__all__ = [
    "DAEConfig", "DiffusionConfig", "ModelConfig", "TrainConfig", "preset", "DiffusionAutoencoder", "EMA",
    "Checkpoint", "batch_iterator", "build_model", "decode", "encode", "get_weights", "interpolate", "invert",
    "load_checkpoint", "make_optimizer", "prepare_images", "prepare_masks", "psnr_in_mask", "save_checkpoint",
    "set_seed", "set_weights", "ssim", "train_steps", "unwrap",
]
