"""The NDAE at GPU scale in one command for a lent GPU machine: time the presets, train `paper` on
the cohort's training controls, encode everyone and compute the regional diffusion-prior deviations,
and write what the CPU scores (`ndae evaluate --features OUT`) into OUT.

    python -m benchmarks.gpu_ndae --data build/gpu-carry/cohort.npz --out $OUT [--budget-s 330]

Input: the file `benchmarks.gpu_prepare` writes (prepared slices, covariates, the held-out
controls, the atlas on the slices). Imports torch, numpy, pandas, scikit-learn and the parts of
`ndae` that need nothing more, except nibabel (`ndae.baselines.voxelwise`'s region names, imported
by the region means), which travels as a wheel (`benchmarks/gpu_run.sh` installs it).

Steps, inside the wall-clock `--budget-s` (counted from the start of this process):
1. `benchmarks.bench_gpu` cells for `--bench-presets` (the project's loop vs a plain PyTorch loop,
   bf16 autocast vs fp32, peak memory; cuDNN autotuning and warm-up outside the timed region),
   at most `--bench-s` seconds; a cell the time left would not hold is skipped and named;
2. trains `--preset` on the training controls (group control and not held out) until the budget
   minus `--reserve-s` (or `--max-steps`), writing a checkpoint to `--work` every
   `--checkpoint-s` seconds; the same command again resumes that checkpoint (the machine keeps
   the repository's ignored folders while it stays warm), so a timeout does not lose the run;
3. with the EMA weights: z_sem of every subject; the normative model of z_sem fitted on the
   training controls (as `ndae evaluate` fits it); the regional prior residuals
   (`ndae.deviation.prior_residuals`, the same levels and draws as every run) and their swap test;
   the round trip's PSNR in the brain at `--recon-steps` on held-out controls; the age probe of
   z_sem against the same network at its initial weights.

Writes into OUT (at most 8 files, each far under 16 MiB): `run.json` (inputs, config, the DAE
summary, quality, timings; rewritten after every step), `gpu_bench.json` + `gpu.md` (step 1),
`train_loss.csv`, `latents.npz` (subject, z_sem), `prior_residuals.csv` (subject + raw region
means, the columns `ndae evaluate` writes); `gpu_run.sh` adds the log. Every argument and the input
file are checked before anything is timed or trained.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ndae.errors import NdaeError

FORMAT = 1  # benchmarks.gpu_prepare's layout
KEYS = ("images", "subject", "site", "age", "sex", "group", "held_out", "atlas_slices", "meta")
MIN_TRAINING_CONTROLS = 8  # as `ndae evaluate`'s default
RUN_JSON = "run.json"


class Carry:
    """The checked contents of the prepared file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in KEYS if k not in data.files]
                if missing:
                    raise NdaeError(f"--data {path}: missing arrays {missing} (make it with benchmarks.gpu_prepare)")
                arrays = {k: data[k] for k in KEYS}
        except (OSError, ValueError, EOFError) as error:  # not an npz, truncated, pickled objects
            raise NdaeError(f"--data {path}: not a readable npz ({type(error).__name__})") from error
        try:
            self.meta = json.loads(str(arrays["meta"]))
        except ValueError as error:
            raise NdaeError(f"--data {path}: field meta is not JSON") from error
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise NdaeError(f"--data {path}: field meta.format is not {FORMAT} (remake it with benchmarks.gpu_prepare)")
        images = arrays["images"]
        if images.ndim != 4 or images.dtype.kind != "f" or min(images.shape) < 1:
            raise NdaeError(f"--data {path}: field images must be [n, C, H, W] floats, got {images.dtype} {images.shape}")
        n = images.shape[0]
        for key in ("subject", "site", "age", "sex", "group", "held_out"):
            if arrays[key].shape != (n,):
                raise NdaeError(f"--data {path}: field {key} has shape {arrays[key].shape}, expected ({n},)")
        if arrays["atlas_slices"].shape != images.shape[1:]:
            raise NdaeError(f"--data {path}: field atlas_slices has shape {arrays['atlas_slices'].shape}, "
                            f"expected {images.shape[1:]}")
        self.images = images.astype(np.float32)
        if not np.isfinite(self.images).all() or self.images.min() < -1.001 or self.images.max() > 1.001:
            raise NdaeError(f"--data {path}: field images must be finite and in [-1, 1]")
        self.subjects = arrays["subject"].astype(str)
        if len(set(self.subjects)) != n or any(not s for s in self.subjects):
            raise NdaeError(f"--data {path}: field subject must hold {n} distinct, non-empty ids")
        self.ages = arrays["age"].astype(np.float64)
        if not np.isfinite(self.ages).all():
            raise NdaeError(f"--data {path}: field age must be finite")
        self.sites, self.sexes, self.groups = (arrays[k].astype(str) for k in ("site", "sex", "group"))
        if not set(self.groups) <= {"control", "als"}:
            raise NdaeError(f"--data {path}: field group must be control or als")
        if arrays["held_out"].dtype != bool:
            raise NdaeError(f"--data {path}: field held_out must be boolean")
        self.held_out = arrays["held_out"]
        if (self.held_out & (self.groups != "control")).any():
            raise NdaeError(f"--data {path}: field held_out marks a patient (only controls are held out)")
        self.training = (self.groups == "control") & ~self.held_out
        if self.training.sum() < MIN_TRAINING_CONTROLS:
            raise NdaeError(f"--data {path}: {int(self.training.sum())} training controls, fewer than the "
                            f"{MIN_TRAINING_CONTROLS} the normative model needs")
        self.atlas_slices = arrays["atlas_slices"]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        self.sha256 = digest.hexdigest()

    def covariates(self):
        import pandas as pd

        return pd.DataFrame({"subject": self.subjects, "site": self.sites, "age": self.ages, "sex": self.sexes,
                             "group": self.groups})


def check_arguments(args) -> None:
    """Every number and path, before anything runs (the input file is checked by Carry)."""
    from ndae.model import preset

    for name in ("budget_s", "checkpoint_s", "reserve_s"):
        if not getattr(args, name) > 0:
            raise NdaeError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.bench_s < 0:
        raise NdaeError(f"--bench-s must be 0 (skip) or positive, got {args.bench_s}")
    if args.bench_s + args.reserve_s >= args.budget_s:
        raise NdaeError(f"--bench-s ({args.bench_s}) + --reserve-s ({args.reserve_s}) leave no training time in "
                        f"--budget-s ({args.budget_s})")
    for name in ("max_steps", "chunk_steps", "bench_steps", "bench_warmup", "bench_invert_images", "bench_invert_steps",
                 "recon_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise NdaeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.batch_size is not None and args.batch_size < 1:
        raise NdaeError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.recon_steps or min(args.recon_steps) < 1:
        raise NdaeError(f"--recon-steps must be positive step counts, got {args.recon_steps}")
    config = preset(args.preset)  # an unknown name raises NdaeError naming the presets
    if config.model.spatial_dims != 2:
        raise NdaeError(f"--preset {args.preset}: the NDAE run trains a 2-D DAE on the prepared slices "
                        "(paper3d is timed in step 1 only)")
    for name in args.bench_presets:
        preset(name)
    if args.fresh and args.score_only:
        raise NdaeError("--fresh and --score-only contradict each other (nothing to score)")
    if args.out.exists() and not args.out.is_dir():
        raise NdaeError(f"--out {args.out} is not a folder")


def _write_run(out: Path, run: dict) -> None:
    from ndae.io import atomic_write_json, finite_or_null

    atomic_write_json(out / RUN_JSON, finite_or_null(run))


def _checkpoint_matches(state, carry: Carry, config_name: str) -> bool:
    return state.extra.get("data_sha256") == carry.sha256 and state.config.name == config_name


def train(args, carry: Carry, device, deadline: float, run: dict, out: Path):
    """Train until `deadline` (perf_counter) or --max-steps; checkpoints to --work; returns (ema model, config, summary)."""
    import torch

    from ndae.io import atomic_write_text
    from ndae.model import EMA, batch_iterator, build_model, load_checkpoint, make_optimizer, preset, prepare_images
    from ndae.model import save_checkpoint, set_seed, train_steps

    checkpoint = args.work / "checkpoint.pt"
    images = carry.images[carry.training]
    ages = carry.ages[carry.training].astype(np.float32)
    state = load_checkpoint(checkpoint, device) if checkpoint.exists() and not args.fresh else None
    if args.score_only and state is None:
        raise NdaeError(f"--score-only: no checkpoint in --work {args.work} (it is kept only while the machine stays warm)")
    if state is not None and not _checkpoint_matches(state, carry, args.preset):
        raise NdaeError(f"{checkpoint} was trained on other data or another preset: pass --fresh to start over, "
                        "or another --work")
    if state is not None:
        config, model, ema, optimizer, start = state.config, state.model, state.ema, state.optimizer, state.step
        generator = torch.Generator().manual_seed(config.train.seed + start)
        if "generator" in state.extra:
            generator.set_state(state.extra["generator"])
        losses = list(state.extra.get("losses", []))
        seconds_before = float(state.extra.get("train_seconds", 0.0))
    else:
        config = preset(args.preset).with_data_shape(images.shape[1])
        if args.batch_size:
            config.train.batch_size = int(args.batch_size)
        config.train.seed = int(args.seed)
        generator = set_seed(config.train.seed)
        model = build_model(config, seed=config.train.seed, device=device)
        ema = EMA(model, config.train.ema_decay, config.train.ema_warmup)
        optimizer = make_optimizer(model, config)
        start, losses, seconds_before = 0, [], 0.0
    x = prepare_images(images, config)
    conditioned = ages if config.model.age_conditioned else None
    batches = batch_iterator(x, conditioned, config.train.batch_size,
                             torch.Generator().manual_seed(config.train.seed + 7919 * start), config.train.flip_augment)
    step, began, last_saved = start, time.perf_counter(), time.perf_counter()

    def save():
        extra = {"generator": generator.get_state(), "losses": losses, "data_sha256": carry.sha256,
                 "train_seconds": seconds_before + time.perf_counter() - began}
        save_checkpoint(checkpoint, model, ema, optimizer, step, extra=extra)
        atomic_write_text(out / "train_loss.csv", "step,loss\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(losses)))

    args.work.mkdir(parents=True, exist_ok=True)
    while not args.score_only and step < args.max_steps and time.perf_counter() < deadline:
        n = min(args.chunk_steps, args.max_steps - step)
        losses += train_steps(model, ema, optimizer, batches, n, generator=generator, grad_clip=config.train.grad_clip,
                              amp=config.train.amp)
        step += n
        if time.perf_counter() - last_saved >= args.checkpoint_s:
            save()
            last_saved = time.perf_counter()
            run["training"] = {"steps": step, "seconds": seconds_before + last_saved - began, "status": "running"}
            _write_run(out, run)
            print(f"[gpu_ndae] step {step}, loss {np.mean(losses[-50:]):.4f}", flush=True)
    if not args.score_only:
        save()
    seconds = seconds_before + time.perf_counter() - began
    summary = {"steps": step, "resumed_from_step": start, "seconds": seconds,
               "images_seen": step * config.train.batch_size, "batch_size": config.train.batch_size,
               "images_per_s_this_call": (step - start) * config.train.batch_size / max(time.perf_counter() - began, 1e-9),
               "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None,
               "training_controls": int(carry.training.sum()), "status": "done"}
    return ema.model.eval(), config, summary, model.num_parameters()


def score(args, carry: Carry, model, config, device) -> tuple[dict, "object", "object", dict]:
    """z_sem of everyone, the prior residual region means, their swap test, and quality numbers."""
    import pandas as pd
    import torch

    from ndae.deviation.prior_residuals import prior_residual_maps, prior_residual_regions
    from ndae.model import build_model, decode, encode, invert, prepare_images, psnr_in_mask
    from ndae.model.probe import age_probe_vs_init
    from ndae.normative.model import NormativeModel, OutOfRangeWarning

    timings = {}
    t0 = time.perf_counter()
    x = prepare_images(carry.images, config)
    z_sem = encode(model, x).numpy().astype(np.float32)
    timings["encode_s"] = time.perf_counter() - t0
    covariates = carry.covariates()
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # out-of-range ages are reported by the latent scores on the CPU
        warnings.simplefilter("ignore", OutOfRangeWarning)
        normative = NormativeModel().fit(covariates[carry.training][["subject", "site", "age", "sex"]].reset_index(drop=True),
                                         z_sem[carry.training], [f"z_sem_{k}" for k in range(z_sem.shape[1])])
        z_normative = normative.predict(covariates)[0]
    ages = carry.ages.astype(np.float32) if config.model.age_conditioned else None
    residuals = prior_residual_maps(model, config, carry.images, z_normative, ages, out_size=carry.images.shape[2:])
    channels = list(config.model.slice_channels or range(carry.images.shape[1]))
    table = prior_residual_regions(residuals, carry.images[:, channels] > -1.0, carry.atlas_slices[channels])
    table.insert(0, "subject", carry.subjects)
    timings["prior_residuals_s"] = time.perf_counter() - t0
    prior = {"levels": list(residuals.levels), "draws": residuals.draws, **residuals.swap}

    # Round trip on held-out controls (never trained on), brain = any slice above the background.
    t0 = time.perf_counter()
    rows = np.flatnonzero(carry.held_out)[: args.recon_images]
    if len(rows) == 0:
        rows = np.flatnonzero(carry.training)[: args.recon_images]
    xr = x[rows]
    mask = (xr > -1.0).any(dim=1, keepdim=True).to(torch.uint8)
    age_r = None if ages is None else ages[rows]
    zr = encode(model, xr)
    reconstruction = {}
    for steps in args.recon_steps:
        recon = decode(model, zr, invert(model, xr, zr, age_r, steps), age_r, steps)
        reconstruction[str(steps)] = float(psnr_in_mask(recon, xr, mask).mean())
    timings["reconstruction_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probe = age_probe_vs_init(model, build_model(config, seed=config.train.seed, device=device),
                              x[carry.training], carry.ages[carry.training])
    timings["age_probe_s"] = time.perf_counter() - t0
    quality = {"reconstruction_psnr_brain_db": reconstruction, "reconstruction_subjects": [str(s) for s in carry.subjects[rows]],
               "reconstruction_subjects_held_out": bool(carry.held_out[rows].all()), "prior_residual_swap": prior}
    if probe is not None:
        quality["latent_age_probe"] = {"r_trained": probe["trained"]["r"], "r_init": probe["init"]["r"],
                                       "r_sd": probe["trained"]["r_sd"], "mae_trained": probe["trained"]["mae"],
                                       "mae_init": probe["init"]["mae"], "trained_beats_init": probe["trained_beats_init"],
                                       "n_controls": probe["n_subjects"]}
    return {"z_sem": z_sem}, pd.DataFrame(table), quality, timings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the file benchmarks.gpu_prepare wrote")
    parser.add_argument("--out", type=Path, required=True, help="folder for the returned files ($OUT)")
    parser.add_argument("--work", type=Path, default=Path("build/gpu-work"),
                        help="checkpoint folder (kept on a warm machine; the same command resumes it)")
    parser.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --work")
    parser.add_argument("--score-only", action="store_true",
                        help="train nothing: step 3 on the checkpoint in --work (a rerun after a timeout)")
    parser.add_argument("--preset", default="paper", help="the DAE trained (2-D; default paper)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="wall-clock seconds for all three steps")
    parser.add_argument("--bench-s", type=float, default=70.0, help="seconds for step 1 (0: skip it)")
    parser.add_argument("--reserve-s", type=float, default=35.0, help="seconds kept for step 3 after training")
    parser.add_argument("--checkpoint-s", type=float, default=45.0, help="seconds between checkpoints")
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--chunk-steps", type=int, default=10, help="steps between looks at the clock")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench-presets", nargs="*", default=["paper", "paper3d"])
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--bench-warmup", type=int, default=5)
    parser.add_argument("--bench-invert-images", type=int, default=None, help="default 64 (2-D), 8 (3-D)")
    parser.add_argument("--bench-invert-steps", type=int, default=20)
    parser.add_argument("--recon-steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--recon-images", type=int, default=8)
    parser.add_argument("--allow-cpu", action="store_true", help="smoke test without a GPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    try:
        check_arguments(args)
        carry = Carry(args.data)
        import torch

        if not torch.cuda.is_available() and not args.allow_cpu:
            raise NdaeError("no CUDA device (this run is for a GPU machine; --allow-cpu smoke-tests it)")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        args.out.mkdir(parents=True, exist_ok=True)
    except NdaeError as error:
        raise SystemExit(f"gpu_ndae: {error}")

    from benchmarks.common import provenance, write_section

    run = {"run": provenance(), "data": {"file": str(args.data), "sha256": carry.sha256, **carry.meta,
                                          "training_controls": int(carry.training.sum()),
                                          "held_out_count": int(carry.held_out.sum()),
                                          "held_out_subjects": [str(s) for s in carry.subjects[carry.held_out]]},
           "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "timings": {}}
    _write_run(args.out, run)
    try:
        if args.bench_s > 0 and args.bench_presets:
            from benchmarks import bench_gpu

            t0 = time.perf_counter()
            result = bench_gpu.run_cells(args.bench_presets, args.bench_steps, args.bench_warmup, None, device,
                                         args.bench_invert_images, args.bench_invert_steps, args.out / "gpu_bench.json",
                                         deadline=t0 + args.bench_s)
            write_section("gpu", "DAE presets on a GPU: throughput, AMP and peak memory (`benchmarks/bench_gpu.py`)",
                          bench_gpu.render(result), result["run"], folder=args.out)
            run["timings"]["bench_s"] = time.perf_counter() - t0
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _write_run(args.out, run)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        t0 = time.perf_counter()
        model, config, training, parameters = train(args, carry, device, deadline - args.reserve_s, run, args.out)
        run["timings"]["training_s"] = time.perf_counter() - t0
        run["training"], run["dae_config"] = training, config.to_dict()
        _write_run(args.out, run)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        features, prior_table, quality, timings = score(args, carry, model, config, device)
        from ndae.io import atomic_save_npz, atomic_write_text

        atomic_save_npz(args.out / "latents.npz", subject=carry.subjects, z_sem=features["z_sem"])
        atomic_write_text(args.out / "prior_residuals.csv",
                          prior_table.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
        run["timings"].update(timings)
        run["quality"] = quality
        # the DAE summary in the shape `ndae train` records it (evaluation.json "dae")
        run["dae"] = {"preset": config.name, "steps": training["steps"],
                      "final_loss_mean_last_50": training["final_loss_mean_last_50"],
                      "reconstruction_psnr_brain_db": quality["reconstruction_psnr_brain_db"].get("20"),
                      "parameters": parameters, "trained_on": "GPU run (benchmarks/gpu_ndae.py)",
                      **({"latent_age_probe": quality["latent_age_probe"]} if "latent_age_probe" in quality else {})}
        run["timings"]["total_s"] = time.perf_counter() - started
        run["complete"] = True
        _write_run(args.out, run)
    except NdaeError as error:
        raise SystemExit(f"gpu_ndae: {error}")
    print(f"[gpu_ndae] done in {time.perf_counter() - started:.0f} s: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
