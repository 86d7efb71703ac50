"""Benchmark of the diffusion autoencoder on the shipped IXI demo slices (CPU).

Trains a preset (default `tiny-ventricle`, 1000 steps) on the age-stratified training split, then
measures, on the held-out healthy subjects: DDIM-inversion reconstruction PSNR inside the brain
mask and SSIM (whole slice and inside the brain mask), decoding from a random x_T, the effect of
swapping z_sem (on the decode, and on the denoising error at low and at high noise), and
cross-validated probes of age and of the lateral-ventricle area (`ndae.model.probe`) of the
trained encoder vs the same encoder at its initial weights, for the main seed and replicate
seeds. Also training and encoding images/s. Writes `benchmarks/results/<section>.md`.

    python -m benchmarks.bench_dae [--preset tiny-ventricle] [--steps 1000] [--replicate-seeds 1 2]
        [--z-sem-dim 16 --section dae_z16] [--batch-size B] [--channels 1] [--threads 1]
        [--device cuda] [--slices F]           # a GPU machine without the imaging stack (gpu_run.sh)
    python -m benchmarks.bench_dae --save-slices F   # the demo's slices and ventricle areas in one file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import replace

from benchmarks.common import RESULTS_DIR, provenance, write_section
from ndae.io import atomic_write_text
from ndae.model import (
    EMA, batch_iterator, build_model, decode, encode, invert, make_optimizer, prepare_images, prepare_masks, preset,
    psnr_in_mask, set_seed, ssim, train_steps,
)
from ndae.model.probe import effective_rank, ridge_probe


def load_slices(manifest: str | None, cache: str):
    from ndae.data.dataset import load_slice_dataset
    from ndae.data.demo import demo_manifest_path

    return load_slice_dataset(manifest or demo_manifest_path(), cache)


def save_slices(path: Path, manifest: str | None, cache: str | None) -> None:
    """The demo's slices, brain masks, ages and lateral-ventricle areas in one compressed file, so a
    machine without the imaging stack (a lent GPU: no nibabel, no ANTs) runs this benchmark with
    --slices and nothing else from the data pipeline."""
    import io

    from ndae.io import atomic_write_bytes

    data = load_slices(manifest, cache)
    control = np.asarray(data.groups) == "control"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=data.images, masks=data.masks, ages=np.asarray(data.ages, float),
                        subjects=np.asarray(data.subjects, str), groups=np.asarray(data.groups, str),
                        control_ventricle_areas=ventricle_areas(manifest, cache, data.subjects[control], None))
    atomic_write_bytes(path, buffer.getvalue())


class SavedSlices:
    """What `run` reads of a SliceDataset, from a `save_slices` file."""

    def __init__(self, path: Path):
        with np.load(path, allow_pickle=False) as saved:
            self.images, self.masks, self.ages = saved["images"], saved["masks"], saved["ages"]
            self.subjects, self.groups = saved["subjects"], saved["groups"]
            self.control_ventricle_areas = saved["control_ventricle_areas"]


def stratified_split(ages: np.ndarray, every: int = 5, offset: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Sort by age and hold out every `every`-th subject: age-stratified train / held-out indices."""
    order = np.argsort(ages, kind="stable")
    held = np.sort(order[offset::every])
    train = np.setdiff1d(np.arange(len(ages)), held)
    return train, held


def ventricle_areas(manifest: str | None, cache: str | None, subjects, slice_channels) -> np.ndarray:
    """Lateral-ventricle area (DLMUSE labels 51/52, pixels at 2 mm) on the slices the DAE sees, per
    subject, from the label maps in the prepared cache: the anatomy the latent should carry (the
    ventricles widen with age; docs/dae.md)."""
    from ndae.data.cache import load_prepared
    from ndae.data.dataset import default_cache_dir
    from ndae.data.demo import demo_manifest_path
    from ndae.data.preprocess import PrepareConfig, extract_axial_slices
    from ndae.data.template import output_grid

    cache = cache or default_cache_dir(manifest or demo_manifest_path())
    grid, z_mm = output_grid(), PrepareConfig().slice_z_mm
    areas = []
    for subject in subjects:
        ventricles = np.isin(load_prepared(cache, subject).labels, (51, 52)).astype(np.float32)
        slices = extract_axial_slices(ventricles, grid, z_mm)
        areas.append(slices[list(slice_channels)].sum() if slice_channels is not None else slices.sum())
    return np.asarray(areas, float)


def paper_throughput(in_channels: int, batch_size: int = 4, steps: int = 2) -> dict:
    """CPU images/s of the `paper` preset (training steps and z_sem encoding) on random slices."""
    config = preset("paper").with_data_shape(in_channels)
    model = build_model(config, seed=0)
    optimizer = make_optimizer(model, config)
    x = torch.rand(batch_size, in_channels, *config.model.image_size) * 2 - 1
    train_steps(model, None, optimizer, [x], 1)  # warm-up
    start = time.perf_counter()
    train_steps(model, None, optimizer, [x], steps)
    train_ips = steps * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    encode(model, x)
    return {"parameters": model.num_parameters()["total"], "train_images_per_s": train_ips,
            "encode_images_per_s": batch_size / (time.perf_counter() - start)}


HIGH_NOISE_T = (500, 700)


@torch.no_grad()
def epsilon_mse(model, x: torch.Tensor, z_sem: torch.Tensor, timesteps=(100, 300), repeats: int = 3) -> torch.Tensor:
    """Per-subject ε-MSE at the given noise levels, fixed noise draws."""
    generator = torch.Generator().manual_seed(5)  # CPU draws: the same noise on any device
    device = next(model.parameters()).device
    x, z_sem = x.to(device), z_sem.to(device)
    total = torch.zeros(len(x))
    for t in timesteps:
        for _ in range(repeats):
            noise = torch.randn(x.shape, generator=generator).to(device)
            tt = torch.full((len(x),), t, device=device)
            error = (model(model.diffusion.q_sample(x, tt, noise), tt, z_sem=z_sem) - noise) ** 2
            total += error.flatten(1).mean(1).cpu()
    return total / (len(timesteps) * repeats)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    data = SavedSlices(args.slices) if args.slices else load_slices(args.manifest, args.cache)
    control = np.asarray(data.groups) == "control"
    images, masks, ages = data.images[control], data.masks[control], np.asarray(data.ages, float)[control]
    train_idx, held_idx = stratified_split(ages)
    config = preset(args.preset)
    if args.channels is not None:
        config = replace(config, model=replace(config.model, slice_channels=tuple(args.channels)))
    if args.batch_size is not None:
        config = replace(config, train=replace(config.train, batch_size=args.batch_size))
    if args.z_sem_dim is not None:
        config = replace(config, model=replace(config.model, z_sem_dim=args.z_sem_dim))
    config = config.with_data_shape(images.shape[1])
    if config.model.slice_channels is not None:  # brain mask of the slices the DAE sees
        masks = (images[:, list(config.model.slice_channels)] > -1.0).any(axis=1, keepdims=True)
    generator = set_seed(args.seed)
    model = build_model(config, seed=args.seed, device=args.device)
    ema = EMA(model, config.train.ema_decay, config.train.ema_warmup)
    optimizer = make_optimizer(model, config)
    x_train = prepare_images(images[train_idx], config)
    batches = batch_iterator(x_train, None, config.train.batch_size, generator, config.train.flip_augment)

    x_all = prepare_images(images, config)
    probe_curve = []  # (step, trained-EMA-encoder age-probe r): is the latent still improving?
    losses: list[float] = []
    start, probe_seconds = time.perf_counter(), 0.0
    max_steps = args.steps if args.steps is not None else args.max_steps
    while time.perf_counter() - start - probe_seconds < args.minutes * 60 and len(losses) < max_steps:
        losses += train_steps(model, ema, optimizer, batches, min(10, max_steps - len(losses)),
                              generator=generator, grad_clip=config.train.grad_clip)
        if args.probe_every and len(losses) % args.probe_every == 0:
            t0 = time.perf_counter()
            probe_curve.append((len(losses), ridge_probe(encode(ema.model, x_all).numpy(), ages, repeats=3)["r"]))
            print(f"step {len(losses)}: loss {np.mean(losses[-10:]):.3f}, age probe r {probe_curve[-1][1]:.3f}",
                  flush=True)
            probe_seconds += time.perf_counter() - t0
    train_seconds = time.perf_counter() - start - probe_seconds
    train_ips = len(losses) * config.train.batch_size / train_seconds

    held = prepare_images(images[held_idx], config)
    held_mask = prepare_masks(masks[held_idx], config)
    net = ema.model
    t0 = time.perf_counter()
    z_held = encode(net, held)
    encode_ips = len(held) / (time.perf_counter() - t0)
    result = {"preset": args.preset, "device": str(args.device), "steps": len(losses), "batch_size": config.train.batch_size,
              "train_seconds": train_seconds, "train_images_per_s": train_ips, "encode_images_per_s": encode_ips,
              "parameters": net.num_parameters(), "loss_first10": float(np.mean(losses[:10])),
              "loss_last50": float(np.mean(losses[-50:])), "n_train": len(train_idx), "n_held": len(held_idx),
              "image_size": list(config.model.image_size), "in_channels": config.model.in_channels,
              "slice_channels": None if config.model.slice_channels is None else list(config.model.slice_channels),
              "probe_curve": probe_curve, "seed": args.seed, "z_sem_dim": config.model.z_sem_dim,
              "loss_weight_cap": config.diffusion.loss_weight_cap,
              **({"device_name": torch.cuda.get_device_name(0)} if str(args.device).startswith("cuda") else {})}

    for steps in args.inversion_steps:
        t0 = time.perf_counter()
        x_T = invert(net, held, z_held, steps=steps)
        recon = decode(net, z_held, x_T, steps=steps)
        result[f"invert_decode_images_per_s_{steps}"] = len(held) / (time.perf_counter() - t0)
        result[f"psnr_brain_{steps}"] = float(psnr_in_mask(recon, held, held_mask).mean())
        result[f"ssim_slice_{steps}"] = float(ssim(recon, held).mean())
        result[f"ssim_brain_{steps}"] = float(ssim(recon, held, held_mask).mean())
    steps = max(args.inversion_steps)
    if args.out is None:  # the report's reconstruction figure: four held-out controls
        from ndae.model.run import write_reconstruction_figure

        write_reconstruction_figure(RESULTS_DIR / f"{args.section}_reconstructions.png", net, images[held_idx], masks[held_idx],
                                    None, steps)
        result["figure"] = f"{args.section}_reconstructions.png"
    x_T = invert(net, held, z_held, steps=steps)
    noise = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1))
    from_noise = decode(net, z_held, noise, steps=steps)
    result["psnr_brain_random_x_T"] = float(psnr_in_mask(from_noise, held, held_mask).mean())
    result["ssim_brain_random_x_T"] = float(ssim(from_noise, held, held_mask).mean())
    # Swap: decode each subject's own x_T with the next subject's z_sem; how far does it move?
    own = decode(net, z_held, x_T, steps=steps)
    swapped = decode(net, z_held.roll(1, 0), x_T, steps=steps)
    result["psnr_brain_swap_vs_own"] = float(psnr_in_mask(swapped, own, held_mask).mean())
    # Identity: one fixed noise decoded with each subject's z_sem: closer to that subject than to others?
    fixed = decode(net, z_held, noise[:1].expand_as(noise), steps=steps)
    err = ((fixed[:, None] - held[None]) ** 2 * held_mask[None]).flatten(2).sum(-1) / held_mask[None].flatten(2).sum(-1)
    err = err.numpy()
    result["fixed_noise_identity_rank_mean"] = float(np.mean([(err[i] < err[i, i]).sum() for i in range(len(err))]))

    # Denoising with own vs another subject's z_sem (same x_t, same noise): does the decoder use it?
    own, swapped = epsilon_mse(net, held, z_held), epsilon_mse(net, held, z_held.roll(1, 0))
    result["epsilon_mse_own_z_sem"] = float(own.mean())
    result["epsilon_mse_swapped_z_sem"] = float(swapped.mean())
    result["own_z_sem_better_fraction"] = float((own < swapped).float().mean())
    # At t = 100-300 x_t still shows the image, so z_sem can add little; at t = 500-700 it is the
    # decoder's main source of the subject's anatomy (relative excess error of a swapped z_sem).
    own, swapped = (epsilon_mse(net, held, z, timesteps=HIGH_NOISE_T) for z in (z_held, z_held.roll(1, 0)))
    result["epsilon_mse_high_noise_swap_excess"] = float(swapped.mean() / own.mean() - 1.0)
    result["own_z_sem_better_fraction_high_noise"] = float((own < swapped).float().mean())

    z_all_trained = encode(net, x_all).numpy()
    result["z_sem_effective_rank"] = effective_rank(z_all_trained)
    result["age_probe_trained"] = ridge_probe(z_all_trained, ages)
    random_probes = []
    for seed in range(args.random_inits):
        random_net = build_model(config, seed=1000 + seed, device=args.device)
        random_probes.append(ridge_probe(encode(random_net, x_all).numpy(), ages))
    result["age_probe_random"] = {k: float(np.mean([p[k] for p in random_probes])) for k in random_probes[0]}
    if args.paper_throughput:
        result["paper_cpu"] = paper_throughput(images.shape[1])
    result["random_inits"] = args.random_inits
    result["age_probe_random_r_range"] = [float(min(p["r"] for p in random_probes)),
                                          float(max(p["r"] for p in random_probes))]
    result["age_probe_random_each"] = [{"seed": 1000 + i, "r": p["r"], "mae": p["mae"]} for i, p in enumerate(random_probes)]
    # The same training (data, preset, step count) from other seeds: is the probe's margin over
    # random features a property of training or of seed 0?
    # Paired with the same seed's untrained encoder: random inits differ a lot (r 0.52-0.66 here),
    # so "trained beats random" must be judged against the weights training started from.
    if args.slices:  # saved over all slices: only valid for a preset that sees them all
        if config.model.slice_channels is not None:
            raise SystemExit("--slices holds the ventricle areas over all slices: use a preset without slice_channels")
        areas = data.control_ventricle_areas
    else:
        areas = ventricle_areas(args.manifest, args.cache, data.subjects[control], config.model.slice_channels)

    def paired(seed: int, z_trained: np.ndarray) -> dict:
        """Age and ventricle-area probes of a trained encoder and of the init it started from."""
        z_init = encode(build_model(config, seed=seed, device=args.device), x_all).numpy()
        age, age0 = ridge_probe(z_trained, ages), ridge_probe(z_init, ages)
        return {"seed": seed, "r": age["r"], "mae": age["mae"], "init_r": age0["r"], "init_mae": age0["mae"],
                "ventricles_r": ridge_probe(z_trained, areas)["r"], "init_ventricles_r": ridge_probe(z_init, areas)["r"]}

    result["ventricle_area_age_r"] = float(np.corrcoef(areas, ages)[0, 1])
    result["age_probe_replicates"] = [paired(args.seed, z_all_trained)]
    for seed in args.replicate_seeds:
        generator = set_seed(seed)
        replicate = build_model(config, seed=seed, device=args.device)
        replicate_ema = EMA(replicate, config.train.ema_decay, config.train.ema_warmup)
        train_steps(replicate, replicate_ema, make_optimizer(replicate, config),
                    batch_iterator(x_train, None, config.train.batch_size, generator, config.train.flip_augment),
                    len(losses), generator=generator, grad_clip=config.train.grad_clip)
        result["age_probe_replicates"].append(paired(seed, encode(replicate_ema.model, x_all).numpy()))
        print(f"replicate seed {seed}: {result['age_probe_replicates'][-1]}", flush=True)
    return result


def device_text(result: dict, threads: int) -> str:
    if result.get("device", "cpu").startswith("cuda"):
        return f"GPU ({result.get('device_name', result['device'])})"
    return f"CPU, {threads} thread(s), shared machine"


def write_report(result: dict, threads: int, out: str | None = None, section: str = "dae") -> Path:
    tr, rd = result["age_probe_trained"], result["age_probe_random"]
    steps = sorted(int(k.rsplit("_", 1)[1]) for k in result if k.startswith("psnr_brain_") and k[-1].isdigit())
    slices = ("all prepared slices" if result["slice_channels"] is None
              else f"slice channel(s) {result['slice_channels']} of the prepared slices")
    beats = [p["r"] for p in result["age_probe_random_each"]]
    replicates = result.get("age_probe_replicates", [])
    replicate_r = ", ".join(f"{p['init_r']:.2f} → {p['r']:.2f}" for p in replicates)
    replicate_delta = ", ".join(f"{p['r'] - p['init_r']:+.3f}" for p in replicates)
    replicate_mae = ", ".join(f"{p['init_mae']:.1f} → {p['mae']:.1f}" for p in replicates if "init_mae" in p)
    replicate_vent = ", ".join(f"{p['init_ventricles_r']:.2f} → {p['ventricles_r']:.2f}" for p in replicates
                               if "ventricles_r" in p)
    lines = [
        f"{device_text(result, threads)}; preset `{result['preset']}` "
        f"({result['parameters']['total']:,} parameters, {result.get('z_sem_dim', 64)}-d z_sem; {slices}: "
        f"{result['in_channels']} channel(s) at "
        f"{result['image_size'][0]}×{result['image_size'][1]}), trained {result['steps']} steps × "
        f"{result['batch_size']} on {result['n_train']} IXI controls in {result['train_seconds'] / 60:.1f} min; "
        f"evaluated on {result['n_held']} age-stratified held-out controls. EMA weights. Seed {result['seed']}.", "",
        "| measure | value |", "|---|---|",
        f"| training images/s | {result['train_images_per_s']:.1f} |",
        f"| encode (z_sem) images/s | {result['encode_images_per_s']:.1f} |",
        *[f"| invert + decode ({s} DDIM steps) images/s | {result[f'invert_decode_images_per_s_{s}']:.2f} |" for s in steps],
        f"| loss: first 10 / last 50 steps | {result['loss_first10']:.3f} / {result['loss_last50']:.3f} |",
        *[f"| PSNR in brain, DDIM inversion + decode, {s} steps | {result[f'psnr_brain_{s}']:.1f} dB |" for s in steps],
        f"| PSNR in brain, decode from random x_T | {result['psnr_brain_random_x_T']:.1f} dB |",
        *[f"| SSIM, DDIM inversion + decode, {s} steps: whole slice / in brain | "
          f"{result[f'ssim_slice_{s}']:.3f} / {result[f'ssim_brain_{s}']:.3f} |" for s in steps if f"ssim_slice_{s}" in result],
        *([f"| SSIM in brain, decode from random x_T | {result['ssim_brain_random_x_T']:.3f} |"]
          if "ssim_brain_random_x_T" in result else []),
        f"| PSNR in brain of swapped-z_sem decode vs own decode (lower = z_sem matters more) | "
        f"{result['psnr_brain_swap_vs_own']:.1f} dB |",
        f"| fixed noise + own z_sem: other subjects closer than self (mean of {result['n_held'] - 1}; chance "
        f"{(result['n_held'] - 1) / 2:.1f}) | {result['fixed_noise_identity_rank_mean']:.1f} |",
        f"| ε-MSE at t = 100, 300 with own / swapped z_sem (own better for {result['own_z_sem_better_fraction']:.0%} "
        f"of subjects) | {result['epsilon_mse_own_z_sem']:.5f} / {result['epsilon_mse_swapped_z_sem']:.5f} |",
        *([f"| ε-MSE at t = {', '.join(map(str, HIGH_NOISE_T))}: excess error with a swapped z_sem (own better for "
           f"{result['own_z_sem_better_fraction_high_noise']:.0%} of subjects) | "
           f"{result['epsilon_mse_high_noise_swap_excess']:+.1%} |"] if "epsilon_mse_high_noise_swap_excess" in result else []),
        f"| z_sem effective rank | {result['z_sem_effective_rank']:.1f} |",
        f"| age probe, trained encoder: r / MAE | {tr['r']:.2f} ± {tr['r_sd']:.2f} / {tr['mae']:.1f} ± {tr['mae_sd']:.1f} y |",
        f"| age probe, random-init encoder (mean of {result['random_inits']} "
        f"seeds, r range {result['age_probe_random_r_range'][0]:.2f}–{result['age_probe_random_r_range'][1]:.2f}): r / MAE | "
        f"{rd['r']:.2f} / {rd['mae']:.1f} y |",
        f"| age probe r, each random-init seed ({', '.join(str(p['seed']) for p in result['age_probe_random_each'])}) | "
        f"{', '.join(f'{r:.2f}' for r in beats)} |",
        f"| trained encoder beats every random-init seed on the age probe (r) | "
        f"{'yes' if tr['r'] > max(beats) else 'no'} |",
        *([f"| age probe r per training seed ({', '.join(str(p['seed']) for p in result['age_probe_replicates'])}): "
           f"its own untrained init → trained | {replicate_r} |",
           *([f"| age probe MAE per training seed: own init → trained | {replicate_mae} y |"] if replicate_mae else []),
           *([f"| ventricle-area probe r per training seed: own init → trained (lateral ventricles on the DAE's "
              f"slices, DLMUSE labels; the area itself predicts age with r {result['ventricle_area_age_r']:.2f}) | "
              f"{replicate_vent} |",
              f"| training seeds whose trained encoder beats its own init on the ventricle-area probe | "
              f"{sum(p['ventricles_r'] > p['init_ventricles_r'] for p in replicates)} of {len(replicates)} |"]
             if replicate_vent else []),
           f"| age probe r per training seed: trained − own init (the main seed's probe sd over repeats: "
           f"{tr['r_sd']:.3f}) | {replicate_delta} |",
           f"| training seeds whose trained encoder beats its own init (by more than that sd) / every random-init seed | "
           f"{sum(p['r'] > p['init_r'] for p in replicates)} ({sum(p['r'] - p['init_r'] > tr['r_sd'] for p in replicates)}) / "
           f"{sum(p['r'] > max(beats) for p in replicates)} of {len(replicates)} |"]
          if result.get("age_probe_replicates") else []),
        f"| age, predicting the training-fold mean: MAE | {tr['mean_mae']:.1f} y |",
        *([f"| age probe r of the EMA encoder during training (step: r, 5-fold × 3) | "
           f"{', '.join(f'{s}: {r:.2f}' for s, r in result['probe_curve'])} |"] if result.get("probe_curve") else []),
        *([f"| `paper` preset on this CPU ({result['paper_cpu']['parameters']:,} parameters): training / encode "
           f"images/s | {result['paper_cpu']['train_images_per_s']:.2f} / {result['paper_cpu']['encode_images_per_s']:.1f} |"]
          if "paper_cpu" in result else []),
        "",
        *([f"![Held-out controls: originals and DDIM inversion + decoding]({result['figure']})", ""]
          if result.get("figure") else []),
        "SSIM: MONAI's (`ndae.model.ssim`; Gaussian window 11 px, σ 1.5, data range 2), mean of the SSIM map over "
        "every position where the window fits in the slice (whole slice, MONAI's `SSIMMetric`) or over the window centres inside the brain "
        "mask (in brain); held-out controls, mean over subjects. "
        "Age probe: all controls, standardised z_sem, ridge with the penalty chosen by leave-one-out inside each "
        "training fold, 5-fold CV × 10 repeats (± = sd over repeats) (`ndae.model.probe`). Ventricle-area probe: the "
        "same probe with the lateral-ventricle area (DLMUSE labels 51/52 on the DAE's slices, from the prepared "
        "label maps) as target. 'Own init' is the encoder at the weights its training run started from (same "
        "seed). The encoder was trained without labels on the training split." + (" Quality of the `paper` preset (and 3-D) needs a GPU: none was lent to this run, so only its CPU throughput is "
               "shown." if "paper_cpu" in result else ""), "",
    ]
    title = "Diffusion autoencoder (`benchmarks/bench_dae.py`)"
    if result.get("z_sem_dim", 64) != 64:
        title += f", {result['z_sem_dim']}-d z_sem"
    if out is None:
        return write_section(section, title, "\n".join(lines), result.get("provenance"))
    atomic_write_text(out, f"## {title}\n\n" + "\n".join(lines) + "\n")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=None, help="manifest (default: the shipped IXI demo)")
    parser.add_argument("--cache", default=None, help="prepared-subject cache (default: the manifest's)")
    parser.add_argument("--slices", type=Path, default=None, help="read the data from a --save-slices file instead")
    parser.add_argument("--save-slices", type=Path, default=None, help="write the demo's slices to this file and stop")
    parser.add_argument("--preset", default="tiny-ventricle")
    parser.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1000, help="train exactly this many steps (unless --minutes runs out first)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--z-sem-dim", type=int, default=None, help="override the preset's z_sem dimension")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="slice channels the DAE sees (overrides the preset's slice_channels; 1 = lateral ventricles)")
    parser.add_argument("--probe-every", type=int, default=250, help="age-probe the EMA encoder every N steps (0: off)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the paper preset's quality needs a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-inits", type=int, default=5)
    parser.add_argument("--replicate-seeds", type=int, nargs="*", default=[1, 2],
                        help="train again from these seeds (same steps) and age-probe each encoder")
    parser.add_argument("--inversion-steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--paper-throughput", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the paper preset on CPU")
    parser.add_argument("--section", default="dae", help="results/<section>.md (and its figure), e.g. for a variant")
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/dae.md with provenance)")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results/<section>.md from its saved numbers (results/<section>.json)")
    args = parser.parse_args(argv)
    if args.save_slices:
        save_slices(args.save_slices, args.manifest, args.cache)
        return 0
    saved = RESULTS_DIR / f"{args.section}.json"
    if args.render_only:
        result = json.loads(saved.read_text())
    else:
        result = run(args)
        result.update(threads=args.threads, provenance=provenance())
        if args.out is None:  # the section's raw numbers, beside it, for --render-only
            atomic_write_text(saved, json.dumps(result, indent=2))
    write_report(result, result["threads"], args.out, args.section)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
