"""The `paper` and `paper3d` DAE presets on a GPU: training and inference throughput with and without
bf16 autocast (AMP), and peak GPU memory, on random inputs at each preset's size.

Measures the project's own loops (`ndae.model.train_steps`, `encode`, `invert`), not a bare forward
pass: training draws timesteps and noise from a CPU generator (the seeded, repeatable draws every
run uses) and reads the loss every step, so its images/s is what `ndae train` gets. Every cell runs
in one process, one after another; the AMP / fp32 pair of a preset is the ratio to read.

    python -m benchmarks.bench_gpu [--presets paper paper3d] [--steps 20] [--json F] [--section gpu]
    python -m benchmarks.bench_gpu --render-only --json F     # the section from saved numbers

Without a GPU it refuses (`--allow-cpu` runs the same code on the CPU with `tiny`, for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, provenance, write_section
from ndae.io import atomic_write_text

# The 2-D presets see the four prepared axial slices as channels; paper3d the whole volume.
IN_CHANNELS = {"paper": 4, "paper3d": 1, "tiny": 4}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(preset_name: str, batch_size: int | None, device):
    import torch

    from ndae.model import build_model, make_optimizer, preset

    config = preset(preset_name).with_data_shape(IN_CHANNELS[preset_name])
    if batch_size:
        config = replace(config, train=replace(config.train, batch_size=batch_size))
    b = config.train.batch_size
    model = build_model(config, seed=0, device=device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(b, config.model.in_channels, *config.model.image_size, generator=generator) * 2 - 1)
    cell = {"preset": preset_name, "batch_size": b, "image_size": list(config.model.image_size),
            "in_channels": config.model.in_channels, "parameters": model.num_parameters()["total"]}
    return model, optimizer, generator, x, cell


def plain_train_steps(model, optimizer, x, steps: int, amp: bool):
    """The reference: a plain PyTorch loop of the same network and loss (Adam, the Diff-AE
    ε-loss), with timesteps and noise drawn on the device and the loss never read back, so
    nothing waits for the GPU inside the loop. No EMA and no gradient clipping, as in the
    project-loop cell it is compared with."""
    import torch

    from ndae.model import unwrap

    diffusion = unwrap(model).diffusion
    x = x.to(next(model.parameters()).device)
    model.train()
    loss = None
    for _ in range(steps):
        t = torch.randint(0, diffusion.timesteps, (x.shape[0],), device=x.device)
        noise = torch.randn_like(x)
        x_t = diffusion.q_sample(x, t, noise)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda"):
            epsilon = model(x_t, t, x)
        loss = diffusion.per_sample_loss(epsilon, noise, t).mean()
        loss.backward()
        optimizer.step()
    return loss


def measure(preset_name: str, amp: bool, steps: int, warmup: int, batch_size: int | None, device,
            invert_images: int, invert_steps: int, loop: str = "project") -> dict:
    """One cell: `steps` timed optimiser steps after `warmup` at the same shapes (cuDNN autotuning
    happens there), then, for the project's loop, z_sem encoding and DDIM inversion with the
    optimiser's state freed first (the inference peak is an inference run's, not training's).
    `loop`: "project" (`ndae.model.train_steps`, what `ndae train` runs) or "plain"."""
    import torch

    from ndae.model import encode, invert, train_steps

    model, optimizer, generator, x, cell = _setup(preset_name, batch_size, device)
    b = cell["batch_size"]
    cell.update(amp=amp, loop=loop)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        if loop == "plain":
            run = lambda n: plain_train_steps(model, optimizer, x, n, amp)  # noqa: E731
        else:
            run = lambda n: train_steps(model, None, optimizer, [x], n, generator=generator, amp=amp)  # noqa: E731
        run(warmup)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        losses = run(steps)
        _sync(device)
        seconds = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError as error:  # a size that does not fit is a result, not a crash
        cell["error"] = f"out of GPU memory at batch {b}: {str(error).splitlines()[0]}"
        return cell
    last = losses[-1] if isinstance(losses, list) else float(losses.detach())
    cell.update(train_steps=steps, train_seconds=seconds, train_images_per_s=steps * b / seconds,
                train_step_ms=1000 * seconds / steps, loss_last=float(last))
    if device.type == "cuda":
        cell["train_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if loop == "plain":
        return cell
    # Inference without the optimiser's state and the gradients.
    model.zero_grad(set_to_none=True)
    optimizer = None  # noqa: F841  (frees the Adam state: the training closure shares this variable)
    # Inference under the same precision: the project's encode/invert run in fp32 unless autocast is on.
    context = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else _null()
    n = max(1, invert_images)
    xs = x.repeat((n + b - 1) // b, *([1] * (x.dim() - 1)))[:n]
    with context:
        z = encode(model, xs)  # warm-up at the timed shapes (and cuDNN's autotuning)
        invert(model, xs, z, steps=2)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        z = encode(model, xs)
        _sync(device)
        cell["encode_images_per_s"] = n / (time.perf_counter() - start)
        start = time.perf_counter()
        x_T = invert(model, xs, z, steps=invert_steps)
        _sync(device)
        cell["invert_images_per_s"] = n / (time.perf_counter() - start)
    cell.update(invert_images=n, invert_steps=invert_steps, x_T_finite=bool(torch.isfinite(x_T).all()))
    if device.type == "cuda":
        cell["inference_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return cell


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def render(result: dict) -> str:
    lines = [
        "Random inputs at each preset's size (2-D: the four prepared axial slices as channels at the native 2 mm, "
        "96×80; 3-D: the 80×96×80 volume). Training: the project's `train_steps` (Adam, the Diff-AE loss, "
        "timesteps and noise drawn on the CPU as in every run, the loss read each step), after warm-up steps. "
        "Encoding: z_sem, batches of 64. Inversion: deterministic DDIM to x_T with the preset's sampling steps. "
        "AMP = bf16 autocast (the presets' default on CUDA); fp32 = autocast off. Peak = "
        "`torch.cuda.max_memory_allocated` during the timed training steps, and during inference.", "",
        "| preset | precision | parameters | batch | train images/s | train step ms | train peak GiB | "
        "encode images/s | DDIM inversion images/s (steps) | inference peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"]:
        precision = "AMP (bf16)" if cell["amp"] else "fp32"
        if "error" in cell:
            lines.append(f"| `{cell['preset']}` | {precision} | {cell['parameters']:,} | {cell['batch_size']} | "
                         f"{cell['error']} | | | | | |")
            continue
        lines.append(
            f"| `{cell['preset']}` | {precision} | {cell['parameters']:,} | {cell['batch_size']} | "
            f"{cell['train_images_per_s']:.1f} | {cell['train_step_ms']:.1f} | {cell.get('train_peak_gib', float('nan')):.2f} | "
            f"{cell['encode_images_per_s']:.0f} | {cell['invert_images_per_s']:.1f} ({cell['invert_steps']}) | "
            f"{cell.get('inference_peak_gib', float('nan')):.2f} |")
    lines.append("")
    ratios = []
    for name in dict.fromkeys(c["preset"] for c in result["cells"]):
        pair = {c["amp"]: c for c in result["cells"] if c["preset"] == name and "error" not in c}
        if True in pair and False in pair:
            amp, fp32 = pair[True], pair[False]
            memory = (f" with {amp['train_peak_gib'] / fp32['train_peak_gib']:.2f}× its peak memory"
                      if "train_peak_gib" in amp and "train_peak_gib" in fp32 else "")
            ratios.append(
                f"`{name}`: AMP trains {amp['train_images_per_s'] / fp32['train_images_per_s']:.2f}× as fast as fp32"
                f"{memory}, and inverts {amp['invert_images_per_s'] / fp32['invert_images_per_s']:.2f}× as fast")
            if "train_peak_gib" in amp:
                # The preset's own schedule (50 000 steps: the NDAE paper's scale), at the measured rate.
                steps = amp["preset_steps"]
                ratios.append(f"`{name}`'s own schedule ({steps:,} steps of batch {amp['batch_size']}) at this rate: "
                              f"{steps * amp['train_step_ms'] / 3.6e6:.1f} GPU-hours")
    plain = [c for c in result.get("plain_cells", []) if "error" not in c]
    if plain:
        lines += ["The project's training loop against a plain PyTorch loop of the same network and loss "
                  "(`plain_train_steps`: timesteps and noise drawn on the GPU, the loss never read back; "
                  "neither loop has EMA or gradient clipping here):", "",
                  "| preset | precision | plain loop images/s | plain peak GiB | project loop images/s | "
                  "project / plain |", "|---|---|---|---|---|---|"]
        for cell in plain:
            mine = next((c for c in result["cells"] if c["preset"] == cell["preset"] and c["amp"] == cell["amp"]
                         and "error" not in c), None)
            ratio = f"{mine['train_images_per_s'] / cell['train_images_per_s']:.2f}" if mine else "n/a"
            lines.append(f"| `{cell['preset']}` | {'AMP (bf16)' if cell['amp'] else 'fp32'} | "
                         f"{cell['train_images_per_s']:.1f} | {cell.get('train_peak_gib', float('nan')):.2f} | "
                         f"{mine['train_images_per_s']:.1f} | {ratio} |" if mine else
                         f"| `{cell['preset']}` | {'AMP (bf16)' if cell['amp'] else 'fp32'} | "
                         f"{cell['train_images_per_s']:.1f} | {cell.get('train_peak_gib', float('nan')):.2f} | n/a | n/a |")
        lines.append("")
    skipped = result.get("skipped", [])
    if skipped:
        lines += ["Not measured (the time budget ran out first): " + ", ".join(skipped) + ".", ""]
    if ratios:
        lines += ["Read (computed from the table): " + "; ".join(ratios) + ".", ""]
    return "\n".join(lines)


def run_cells(presets, steps: int, warmup: int, batch_size: int | None, device, invert_images: int | None,
              invert_steps: int | None, json_path: Path, deadline: float | None = None, plain: bool = True) -> dict:
    """Every preset's cells (project loop AMP and fp32, each followed by the plain loop's), saved to
    `json_path` after each one; a cell that the time left (`deadline`, perf_counter seconds) would
    not hold, judged from the preset's last cell, is skipped and named."""
    import torch

    from ndae.model import preset

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {"run": provenance(), "cells": [], "plain_cells": [], "skipped": []}
    for name in presets:
        steps_of_preset = preset(name).train.steps
        sample_steps = invert_steps or preset(name).diffusion.sample_steps
        volumes = preset(name).model.spatial_dims == 3
        # the expected length of the next cell: the preset's last project cell (training and
        # inference) for a project cell, its training part alone for a plain-loop cell
        expected = {"project": 0.0, "plain": 0.0}
        for amp in (True, False):
            for loop in ("project", "plain") if plain else ("project",):
                label = f"{name} {'AMP' if amp else 'fp32'} {loop} loop"
                if deadline is not None and time.perf_counter() + 1.5 * expected[loop] > deadline:
                    result["skipped"].append(label)
                    continue
                started = time.perf_counter()
                cell = measure(name, amp, steps, warmup, batch_size, device,
                               invert_images or (8 if volumes else 64), sample_steps, loop=loop)
                if loop == "project":
                    expected["project"] = time.perf_counter() - started
                    expected["plain"] = cell.get("train_seconds", expected["project"]) * (steps + warmup) / steps
                cell["preset_steps"] = steps_of_preset
                result["cells" if loop == "project" else "plain_cells"].append(cell)
                print(json.dumps(cell), flush=True)
                # Saved after every cell: a run killed at its time limit keeps what it measured.
                atomic_write_text(json_path, json.dumps(result, indent=1))
    atomic_write_text(json_path, json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["paper", "paper3d"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    parser.add_argument("--invert-images", type=int, default=None,
                        help="images to encode and invert per cell (default 64 for 2-D, 8 volumes for 3-D)")
    parser.add_argument("--invert-steps", type=int, default=None, help="default: each preset's sample_steps")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "gpu.json")
    parser.add_argument("--section", default="gpu", help="writes benchmarks/results/<section>.md")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke test without a GPU")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-PyTorch-loop reference cells")
    args = parser.parse_args(argv)
    title = "DAE presets on a GPU: throughput, AMP and peak memory (`benchmarks/bench_gpu.py`)"
    if args.render_only:
        result = json.loads(args.json.read_text())
        write_section(args.section, title, render(result), result["run"], folder=args.results_dir)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("bench_gpu: no CUDA device (this benchmark is for a GPU machine; --allow-cpu smoke-tests it)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = run_cells(args.presets, args.steps, args.warmup, args.batch_size, device, args.invert_images,
                       args.invert_steps, args.json, plain=not args.no_plain)
    write_section(args.section, title, render(result), result["run"], folder=args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
