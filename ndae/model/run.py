"""Centralised DAE runs on a manifest: what `ndae train` and `ndae encode` do.

Run directory layout written here:
    config.json            {"dae": DAEConfig, "dae_training": {...}} (merged into an existing file)
    dae/checkpoint.pt      model + EMA + optimiser + config + step (atomic; resumable)
    dae/loss.csv           step, loss
    dae/loss_curve.png     training loss (and its running mean)
    dae/reconstruction.png originals vs DDIM inversion + decoding (EMA weights), PSNR in brain
    (config.json "dae_result" also holds the age probe of z_sem, trained vs initial encoder)
    latents.npz            subject, z_sem, x_T (from `encode_run`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ndae.errors import NdaeError
from ndae.io import atomic_save_figure, atomic_save_npz, atomic_write_json, atomic_write_text
from ndae.model.checkpoint import load_checkpoint, save_checkpoint
from ndae.model.config import DAEConfig, preset
from ndae.model.dae import build_model
from ndae.model.ema import EMA
from ndae.model.inference import decode, encode, invert
from ndae.model.inputs import prepare_images, prepare_masks
from ndae.model.metrics import psnr_in_mask
from ndae.model.probe import age_probe_vs_init
from ndae.model.training import batch_iterator, make_optimizer, set_seed, train_steps

CHECKPOINT = Path("dae") / "checkpoint.pt"


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_slices(manifest: str | Path, cache_dir: str | Path | None, progress: bool = True):
    from ndae.data.dataset import load_slice_dataset

    try:
        return load_slice_dataset(manifest, cache_dir, progress=progress)
    except TypeError:  # a loader without the progress flag
        return load_slice_dataset(manifest, cache_dir)


def _merge_config_json(path: Path, update: dict[str, Any]) -> None:
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise NdaeError(f"{path} is not valid JSON: {error}") from error
    current.update(update)
    atomic_write_json(path, current)


def train_run(manifest: str | Path, out: str | Path, config: str | DAEConfig = "tiny", *, steps: int | None = None,
              seed: int | None = None, cache_dir: str | Path | None = None, device: str | None = None,
              resume: bool = False, progress: bool = True, figure_steps: int | None = None) -> dict[str, Any]:
    """Train the DAE on the manifest's healthy controls; returns a summary (also in config.json)."""
    out = Path(out)
    checkpoint_path = out / CHECKPOINT
    data = load_slices(manifest, cache_dir, progress)
    control = np.asarray(data.groups) == "control"
    if not control.any():
        raise NdaeError(f"{manifest}: no rows with group 'control' to train the DAE on")
    images, masks, ages = data.images[control], data.masks[control], np.asarray(data.ages, np.float32)[control]
    dev = resolve_device(device)

    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, dev)
        cfg, model, ema, optimizer, start = state.config, state.model, state.ema, state.optimizer, state.step
        if steps is not None:
            cfg.train.steps = int(steps)
        generator = torch.Generator().manual_seed(cfg.train.seed + start)
        if "generator" in state.extra:
            generator.set_state(state.extra["generator"])
        losses = list(state.extra.get("losses", []))
    else:
        cfg = preset(config) if isinstance(config, str) else config
        cfg = cfg.with_data_shape(images.shape[1])
        if steps is not None:
            cfg.train.steps = int(steps)
        if seed is not None:
            cfg.train.seed = int(seed)
        generator = set_seed(cfg.train.seed)
        model = build_model(cfg, seed=cfg.train.seed, device=dev)
        ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
        optimizer = make_optimizer(model, cfg)
        start, losses = 0, []
    if cfg.with_data_shape(images.shape[1]).model.in_channels != cfg.model.in_channels:
        raise NdaeError(f"{manifest}: slices have {images.shape[1]} channels, the checkpoint expects "
                        f"{cfg.model.in_channels}")
    if cfg.model.spatial_dims != 2:
        raise NdaeError("the 3-D DAE needs volume data; `ndae train` reads 2-D slices (use the library API)")

    x = prepare_images(images, cfg)
    conditioned_ages = ages if cfg.model.age_conditioned else None
    batch_generator = torch.Generator().manual_seed(cfg.train.seed + 7919 * start)
    batches = batch_iterator(x, conditioned_ages, cfg.train.batch_size, batch_generator, cfg.train.flip_augment)
    _merge_config_json(out / "config.json", {"dae": cfg.to_dict(), "dae_training": {
        "manifest": str(Path(manifest).resolve()), "n_controls": int(control.sum()), "device": str(dev)}})

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=start, desc="DAE training", unit="step", disable=not progress)
    step = start
    while step < cfg.train.steps:
        n = min(cfg.train.checkpoint_every, cfg.train.steps - step)
        chunk = train_steps(model, ema, optimizer, batches, n, generator=generator, grad_clip=cfg.train.grad_clip,
                            amp=cfg.train.amp, on_step=lambda i, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
        losses += chunk
        step += n
        save_checkpoint(checkpoint_path, model, ema, optimizer, step,
                        extra={"generator": generator.get_state(), "losses": losses})
        _write_losses(out / "dae", losses)
    bar.close()

    psnr = write_reconstruction_figure(out / "dae" / "reconstruction.png", ema.model, images, masks,
                                       conditioned_ages, figure_steps or cfg.diffusion.sample_steps)
    summary = {"steps": step, "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None,
               "reconstruction_psnr_brain_db": psnr, "parameters": model.num_parameters()}
    # Does z_sem carry meaning? Age probe of the trained encoder vs the weights it started from.
    probe = age_probe_vs_init(ema.model, build_model(cfg, seed=cfg.train.seed, device=dev), x, ages)
    if probe is not None:
        # r_sd: spread of r over CV repeats; a difference from r_init below it is a tie.
        summary["latent_age_probe"] = {"r_trained": probe["trained"]["r"], "r_init": probe["init"]["r"],
                                       "r_sd": probe["trained"]["r_sd"],
                                       "mae_trained": probe["trained"]["mae"], "mae_init": probe["init"]["mae"],
                                       "mae_predicting_mean": probe["trained"]["mean_mae"],
                                       "trained_beats_init": probe["trained_beats_init"],
                                       "n_controls": probe["n_subjects"]}
    _merge_config_json(out / "config.json", {"dae_result": summary})
    return summary


def _write_losses(folder: Path, losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_text(folder / "loss.csv", "step,loss\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(losses)))
    figure, ax = plt.subplots(figsize=(5, 3))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
    window = max(1, min(50, len(losses) // 5))
    if window > 1:
        ax.plot(steps[window - 1:], np.convolve(losses, np.ones(window) / window, "valid"), label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="weighted ε-MSE", yscale="log", title="DAE training loss")
    ax.legend()
    atomic_save_figure(folder / "loss_curve.png", figure)
    plt.close(figure)


def write_reconstruction_figure(path: Path, model, images: np.ndarray, masks: np.ndarray, ages, steps: int,
                                n: int = 4) -> float:
    """Originals vs decode(z_sem, invert(x)) for the first `n` subjects; returns mean PSNR in brain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = model.config
    x = prepare_images(images[:n], cfg)
    mask = prepare_masks(masks[:n], cfg)
    age = None if ages is None else ages[:n]
    z = encode(model, x)
    recon = decode(model, z, invert(model, x, z, age, steps), age, steps)
    psnr = psnr_in_mask(recon, x, mask)
    channels = x.shape[1]
    figure, axes = plt.subplots(len(x), 2 * channels, figsize=(1.6 * 2 * channels, 1.9 * len(x)), squeeze=False)
    for i in range(len(x)):
        for c in range(channels):
            for j, (img, label) in enumerate(((x, "original"), (recon, f"DDIM {steps}: {psnr[i]:.1f} dB"))):
                ax = axes[i, 2 * c + j]
                shown = ax.imshow(img[i, c].numpy(), cmap="gray", vmin=-1, vmax=1)
                ax.set_axis_off()
                if c == 0:
                    ax.set_title(label, fontsize=7)
    figure.colorbar(shown, ax=list(axes.ravel()), shrink=0.5, pad=0.02, label="normalised intensity (a.u.)")
    figure.suptitle("DAE reconstruction (brain-mask PSNR)", fontsize=9)
    atomic_save_figure(path, figure)
    plt.close(figure)
    return float(psnr.mean())


def encode_run(run: str | Path, manifest: str | Path, out: str | Path | None = None, *,
               cache_dir: str | Path | None = None, steps: int | None = None, device: str | None = None,
               progress: bool = True) -> Path:
    """z_sem and the DDIM-inverted x_T of every manifest row (EMA weights) → latents.npz."""
    run = Path(run)
    out = Path(out) if out else run / "latents.npz"
    state = load_checkpoint(run / CHECKPOINT, resolve_device(device))
    model = state.ema.model
    data = load_slices(manifest, cache_dir, progress)
    if state.config.with_data_shape(data.images.shape[1]).model.in_channels != state.config.model.in_channels:
        raise NdaeError(f"{manifest}: slices have {data.images.shape[1]} channels, the DAE in {run} expects "
                        f"{state.config.model.in_channels}")
    x = prepare_images(data.images, state.config)
    ages = np.asarray(data.ages, np.float32) if state.config.model.age_conditioned else None
    z_sem = encode(model, x)
    x_T = invert(model, x, z_sem, ages, steps or state.config.diffusion.sample_steps)
    atomic_save_npz(out, subject=np.asarray(data.subjects).astype(str), z_sem=z_sem.numpy().astype(np.float32),
                    x_T=x_T.numpy().astype(np.float32))
    return out
