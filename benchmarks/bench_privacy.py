"""Privacy costs: DP-SGD step time per Opacus mode, C-index at epsilon ∈ {1, 3, 8, ∞}, empirical
vs accounted epsilon (results/privacy.md); the cost of secure randomness (results/privacy_randomness.md,
raw numbers in results/privacy_randomness.json).

    python -m benchmarks.bench_privacy                    # ~6–9 min on 2 shared CPU cores
    python -m benchmarks.bench_privacy --quick            # step times only (and the randomness section)
    python -m benchmarks.bench_privacy --randomness-only [--try-install]   # ~1 min
    python -m benchmarks.bench_privacy --render-only      # the randomness section from its .json

Every DP variant trains through `ndae.privacy.dp_sgd_loop` (the loop a site runs); plain training
through `ndae.model.train_steps`.

The cohort is the small synthetic one (ndae.testing.synthetic_cohort): every site trains on part of
its controls and holds the rest out as non-members for the membership test. The federation runs in
process (InProcessGrid, the real ClientApp/ServerApp code), federated survival mode for every ε.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import write_section
from ndae.privacy.delta import DEFAULT_DELTA

SITES = ("site1", "site2", "site3")
MODES = ("hooks", "functorch", "ghost")


def step_times(batch: int = 8, repeats: int = 7) -> dict[str, float]:
    """Seconds per optimiser step of the tiny DAE, same batch: plain Adam (`train_steps`, the plain
    loop) and DP-SGD per mode (`dp_sgd_loop.dp_epochs`, the one DP loop a site runs: one epoch of a
    loader holding exactly one batch is one step)."""
    import torch

    from ndae.model import build_model, make_optimizer, preset, train_steps
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private

    cfg = preset("tiny").with_data_shape(3)
    xb = torch.randn(batch, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(0))

    def plain_step(model, optimizer):
        train_steps(model, None, optimizer, [xb], 1, generator=torch.Generator().manual_seed(0), amp=False)

    def dp_step(private):
        dp_epochs(private, None, 1, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
                  flip=False, device="cpu")

    # Every variant is built first, then timed round-robin (repeats × variants), so that load from
    # other users of the shared cores hits every variant alike; the median is reported.
    variants = {}
    model = build_model(cfg, seed=0)
    variants["plain"] = functools.partial(plain_step, model, make_optimizer(model, cfg))
    results: dict[str, object] = {}
    for mode in MODES:
        model = build_model(cfg, seed=0)
        # fixed batches (no Poisson sampling), so every variant times the same batch of 8
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xb), batch_size=batch)
        try:
            private = make_private(model, make_optimizer(model, cfg), loader, max_grad_norm=1.0, noise_multiplier=1.0,
                                   mode=mode, criterion=DenoisingCriterion(model.diffusion), poisson_sampling=False)
            variants[mode] = functools.partial(dp_step, private)
            variants[mode]()  # warm-up (and: does this mode work on the DAE at all?)
        except Exception as error:  # a mode that does not work on the DAE is reported as such
            variants.pop(mode, None)
            results[mode] = f"failed: {type(error).__name__}: {str(error)[:120]}"
    variants["plain"]()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            start = time.perf_counter()
            variant()
            times[name].append(time.perf_counter() - start)
    results.update({name: float(np.median(values)) for name, values in times.items()})
    return results


# ---- cost of secure randomness ------------------------------------------------------------------
RANDOMNESS_SECTION = "privacy_randomness"


def secure_mode_status(try_install: bool) -> dict:
    """Whether Opacus' secure_mode (torchcsprng) works here; with `try_install`, what pip says when
    asked for torchcsprng (downloads into a scratch folder only, never into the project's venv)."""
    import importlib.util
    import subprocess
    import sys
    import zipfile

    result: dict = {"torchcsprng_importable": importlib.util.find_spec("torchcsprng") is not None}
    try:
        from opacus import PrivacyEngine

        PrivacyEngine(accountant="rdp", secure_mode=True)
        result["secure_mode"] = "works"
    except Exception as error:  # noqa: BLE001 - the outcome is the result
        result["secure_mode"] = f"fails: {type(error).__name__}: {str(error).splitlines()[0]}"
    if try_install:
        attempts = {}
        with tempfile.TemporaryDirectory(prefix="ndae-torchcsprng-") as scratch:
            for name, extra in (("this Python", []),
                                ("CPython 3.8 wheel", ["--python-version", "3.8", "--only-binary", ":all:",
                                                       "--platform", "manylinux1_x86_64"])):
                folder = Path(scratch) / name.replace(" ", "-")
                command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), "torchcsprng", *extra]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                    output = (done.stdout + done.stderr).splitlines()
                    attempt = {"command": "pip download --no-deps torchcsprng " + " ".join(extra),
                               "returncode": done.returncode,
                               "errors": [line for line in output if line.startswith("ERROR")][:3]}
                except (OSError, subprocess.SubprocessError) as error:
                    attempt = {"command": " ".join(command[2:]), "returncode": None, "errors": [repr(error)]}
                for wheel in sorted(folder.glob("*.whl")):
                    with zipfile.ZipFile(wheel) as archive:
                        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                        lines = archive.read(meta).decode().splitlines()
                    attempt["wheel"] = wheel.name
                    attempt["requires"] = [line.split(":", 1)[1].strip() for line in lines
                                           if line.startswith(("Requires-Dist:", "Requires-Python:"))]
                attempts[name] = attempt
        result["install_attempts"] = attempts
    return result


def _secure_mode_step_ratio(repeats: int) -> dict:
    """Only where torchcsprng works: seconds per DP step (hooks, batch 8) with secure_mode vs without."""
    import torch
    from opacus import PrivacyEngine

    from ndae.model import build_model, make_optimizer, preset
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion

    cfg = preset("tiny").with_data_shape(3)
    xb = torch.randn(8, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(0))
    steps = {}
    for secure in (False, True):
        model = build_model(cfg, seed=0)
        engine = PrivacyEngine(accountant="rdp", secure_mode=secure)
        module, optimizer, _ = engine.make_private(
            module=model, optimizer=make_optimizer(model, cfg), criterion=DenoisingCriterion(model.diffusion),
            data_loader=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xb), batch_size=8),
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)

        def step(module=module, optimizer=optimizer, diffusion=model.diffusion):
            generator = torch.Generator().manual_seed(0)
            t = diffusion.sample_timesteps(8, generator)
            noise = torch.randn(xb.shape, generator=generator)
            optimizer.zero_grad()
            diffusion.per_sample_loss(module(diffusion.q_sample(xb, t, noise), t, xb, None, None), noise, t).mean().backward()
            optimizer.step()
        step()
        steps[secure] = step
    times = {secure: [] for secure in steps}
    for _ in range(repeats):
        for secure, step in steps.items():
            start = time.perf_counter()
            step()
            times[secure].append(time.perf_counter() - start)
    plain, secure = float(np.median(times[False])), float(np.median(times[True]))
    return {"seconds_per_step": plain, "seconds_per_step_secure_mode": secure, "ratio": secure / plain}


class _CountingDataset:
    """A TensorDataset that counts the records fetched (the Poisson batches' sizes, summed)."""

    def __init__(self, *tensors):
        import torch

        self.inner = torch.utils.data.TensorDataset(*tensors)
        self.fetched = 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        self.fetched += 1
        return self.inner[index]


def dp_round_times(records: int = 16, batch: int = 8, epochs: int = 2, repeats: int = 4) -> dict:
    """One DP-SGD round of the tiny DAE (make_private + dp_epochs, hooks, Poisson sampling) with
    every generator from SiteRandomness() (secret seeds) vs SiteRandomness(insecure_seed=0).
    Poisson batches differ between secret seeds, so seconds per sampled record are reported too."""
    import torch

    from ndae.model import build_model, make_optimizer, preset
    from ndae.privacy.dp_sgd_loop import DenoisingCriterion, dp_epochs
    from ndae.privacy.opacus_training import make_private
    from ndae.privacy.randomness import SiteRandomness

    cfg = preset("tiny").with_data_shape(3)
    x = torch.rand(records, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def one_round(site: SiteRandomness) -> tuple[float, int, int]:
        model = build_model(cfg, seed=0)
        dataset = _CountingDataset(x)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch)
        start = time.perf_counter()
        private = make_private(model, make_optimizer(model, cfg), loader, max_grad_norm=1.0, noise_multiplier=1.0,
                               criterion=DenoisingCriterion(model.diffusion),
                               noise_generator=site.torch_generator("round", "noise"),
                               sampling_generator=site.torch_generator("round", "sampling"))
        fetched_before = dataset.fetched  # Opacus reads record 0 once to learn the shapes
        dp_epochs(private, None, epochs, site.torch_generator("round", "draws"),
                  site.torch_generator("round", "empty-batch"), flip=True, device="cpu")
        return time.perf_counter() - start, dataset.fetched - fetched_before, private.steps_this_round

    variants = {"secure": SiteRandomness(), "insecure_seed_0": SiteRandomness(insecure_seed=0)}
    one_round(variants["insecure_seed_0"])  # warm-up
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, site in variants.items():
            runs[name].append(one_round(site))
    out: dict = {"records": records, "batch": batch, "epochs": epochs, "repeats": repeats}
    for name, values in runs.items():
        seconds = [v[0] for v in values]
        out[name] = {"seconds_per_round": float(np.median(seconds)),
                     "seconds_per_sampled_record": float(np.median([s / max(r, 1) for s, r, _ in values])),
                     "records_sampled": [r for _, r, _ in values], "steps": values[0][2]}
    for key in ("seconds_per_round", "seconds_per_sampled_record"):
        out[f"ratio_{key}"] = out["secure"][key] / out["insecure_seed_0"][key]
    # the seeding itself: secrets.randbits + manual_seed vs sha256 of the purpose + manual_seed
    for name, site in variants.items():
        start = time.perf_counter()
        for k in range(1000):
            site.torch_generator("seed-cost", k)
        out[name]["seconds_per_generator"] = (time.perf_counter() - start) / 1000
    return out


def csprng_normal(count: int, std: float = 1.0):
    """`count` N(0, std²) draws from the OS CSPRNG: 53-bit uniforms from os.urandom, Box–Muller in torch."""
    import os

    import torch

    pairs = (count + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64)
    uniform = torch.from_numpy(((raw >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53)  # (0, 1]
    radius = torch.sqrt(-2.0 * torch.log(uniform[:pairs]))
    angle = (2.0 * math.pi) * uniform[pairs:]
    return (torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count] * std).to(torch.float32)


def gaussian_times(repeats: int = 7) -> dict:
    """One DP step's noise for the tiny DAE (one draw per parameter): CSPRNG Box–Muller vs
    torch.normal with a seeded torch.Generator (what Opacus does with the site's noise_generator)."""
    import torch

    from ndae.model import build_model, preset

    parameters = sum(p.numel() for p in build_model(preset("tiny").with_data_shape(3), seed=0).parameters())
    generator = torch.Generator().manual_seed(0)
    variants = {"torch_normal_seeded": lambda: torch.normal(0.0, 1.0, (parameters,), generator=generator),
                "csprng_box_muller": lambda: csprng_normal(parameters)}
    for draw in variants.values():
        draw()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, draw in variants.items():
            start = time.perf_counter()
            draw()
            times[name].append(time.perf_counter() - start)
    sample = csprng_normal(parameters)
    out = {"parameters": int(parameters), "repeats": repeats,
           **{f"seconds_{name}": float(np.median(values)) for name, values in times.items()},
           "csprng_sample_mean": float(sample.mean()), "csprng_sample_std": float(sample.std())}
    out["ratio"] = out["seconds_csprng_box_muller"] / out["seconds_torch_normal_seeded"]
    return out


def randomness_costs(try_install: bool, quick: bool) -> dict:
    from benchmarks.common import provenance

    status = secure_mode_status(try_install)
    result = {"provenance": provenance(), "secure_mode": status}
    if status["secure_mode"] == "works":
        result["secure_mode_step"] = _secure_mode_step_ratio(3 if quick else 7)
    result["round"] = dp_round_times(repeats=3 if quick else 5)
    result["gaussian"] = gaussian_times()
    return result


def render_randomness(result: dict) -> str:
    status, rounds, gauss = result["secure_mode"], result["round"], result["gaussian"]
    secure, insecure = rounds["secure"], rounds["insecure_seed_0"]
    steps = secure["steps"]
    lines = ["### Opacus `secure_mode`", ""]
    lines.append(f"`PrivacyEngine(secure_mode=True)` here: {status['secure_mode']} "
                 f"(torchcsprng importable: {'yes' if status['torchcsprng_importable'] else 'no'}).")
    for name, attempt in status.get("install_attempts", {}).items():
        outcome = "downloaded " + attempt["wheel"] if attempt.get("wheel") else (
            "; ".join(attempt["errors"]) or f"exit code {attempt['returncode']}")
        requires = f" (declares {', '.join(attempt['requires'])})" if attempt.get("requires") else ""
        lines.append(f"- `{attempt['command'].strip()}` ({name}): {outcome}{requires}.")
    if "secure_mode_step" in result:
        step = result["secure_mode_step"]
        lines.append(f"- DP step with secure_mode: {step['seconds_per_step_secure_mode']:.3f} s vs "
                     f"{step['seconds_per_step']:.3f} s without (× {step['ratio']:.2f}).")
    else:
        lines.append("- So secure_mode cannot be used (or timed) with this Opacus/torch; the sites draw every "
                     "privacy-protecting generator's seed from the OS CSPRNG instead (`ndae.privacy.randomness`).")
    lines += ["", f"### One DP-SGD round: secret seeds vs a fixed insecure seed", "",
              f"Tiny DAE (3×48×40), {rounds['records']} records, batch {rounds['batch']} (Poisson rate "
              f"1/{math.ceil(rounds['records'] / rounds['batch'])}), {rounds['epochs']} epochs = {steps} steps, `hooks`; "
              f"`make_private` + `dp_epochs` with every generator from `SiteRandomness()` vs "
              f"`SiteRandomness(insecure_seed=0)`; median of {rounds['repeats']} rounds each, interleaved.", "",
              "| generators | s / round | s / sampled record | records sampled per round | s to make one generator |",
              "|---|---|---|---|---|"]
    for label, row in (("`SiteRandomness()` (secret seeds)", secure), ("`SiteRandomness(insecure_seed=0)`", insecure)):
        lines.append(f"| {label} | {row['seconds_per_round']:.2f} | {row['seconds_per_sampled_record']:.3f} | "
                     f"{', '.join(map(str, row['records_sampled']))} | {row['seconds_per_generator'] * 1e6:.1f} µs |")
    lines += ["", f"Ratio secure / insecure: {rounds['ratio_seconds_per_round']:.2f} per round, "
              f"{rounds['ratio_seconds_per_sampled_record']:.2f} per sampled record. Both are the same torch "
              f"generator and differ only in where the seed comes from, so any difference is the "
              f"Poisson batch sizes (secret seeds give different batches every round; part of a step's cost is "
              f"fixed, so s / record rises when fewer records are sampled) and load on the shared cores; "
              f"making a generator costs {secure['seconds_per_generator'] * 1e6:.1f} µs with a secret seed vs "
              f"{insecure['seconds_per_generator'] * 1e6:.1f} µs from the insecure seed, four per round.", "",
              "### A CSPRNG Gaussian for the DP noise", "",
              f"One step's noise for the tiny DAE ({gauss['parameters']:,} parameters, one draw each): "
              f"`torch.normal` with a seeded generator (what Opacus does with the site's `noise_generator`) vs "
              f"53-bit uniforms from `os.urandom` through Box–Muller in torch (every draw from the OS CSPRNG); "
              f"median of {gauss['repeats']}.", "",
              "| noise source | s / step | ÷ torch.normal |", "|---|---|---|",
              f"| `torch.normal`, seeded generator | {gauss['seconds_torch_normal_seeded'] * 1e3:.2f} ms | 1.00 |",
              f"| `os.urandom` → Box–Muller | {gauss['seconds_csprng_box_muller'] * 1e3:.2f} ms | {gauss['ratio']:.2f} |",
              ""]
    extra_step = gauss["seconds_csprng_box_muller"] - gauss["seconds_torch_normal_seeded"]
    step_seconds = secure["seconds_per_round"] / steps
    lines.append(f"The CSPRNG noise adds {extra_step * 1e3:.2f} ms per step, {100 * extra_step / step_seconds:.2f} % of "
                 f"a DP step here ({step_seconds:.2f} s), i.e. {extra_step * steps * 1e3:.1f} ms to the {steps}-step "
                 f"round above. (Sample check: mean {gauss['csprng_sample_mean']:+.4f}, sd "
                 f"{gauss['csprng_sample_std']:.4f}.) One machine, one run, shared cores: ratios are indicative.")
    return "\n".join(lines)


def write_randomness(result: dict) -> Path:
    from ndae.io import atomic_write_text

    from benchmarks.common import RESULTS_DIR

    atomic_write_text(RESULTS_DIR / f"{RANDOMNESS_SECTION}.json", json.dumps(result, indent=2))
    return write_section(RANDOMNESS_SECTION, "Privacy: cost of secure randomness (`benchmarks/bench_privacy.py`)",
                         render_randomness(result), run=result["provenance"])


def make_cohort(root: Path, controls: int, train_controls: int, patients: int, seed: int) -> None:
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    make_synthetic_cohort(root / "cohort", sites=len(SITES), controls_per_site=controls, patients_per_site=patients,
                          seed=seed)
    for site in SITES:
        manifest = pd.read_csv(root / "cohort" / "sites" / site / "manifest.csv")
        control = manifest[manifest["group"] == "control"]
        out = root / "cohort" / "split" / site
        out.mkdir(parents=True, exist_ok=True)
        pd.concat([control.iloc[:train_controls], manifest[manifest["group"] != "control"]]).to_csv(
            out / "train.csv", index=False)
        control.iloc[:train_controls].to_csv(out / "members.csv", index=False)
        control.iloc[train_controls:].to_csv(out / "heldout.csv", index=False)


def federated_run(root: Path, epsilon: float, rounds: int, epochs: int, seed: int, exact_moments: bool = False) -> dict:
    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import run_federation

    name = ("eps-inf" if math.isinf(epsilon) else f"eps-{epsilon:g}") + ("-exact-moments" if exact_moments else "")
    run_dir = root / name
    settings = dict(run_dir=str(run_dir), cache_dir=str(root / "cache"), rounds=rounds, local_epochs=epochs,
                    batch_size=4, seed=seed, survival_mode="federated", resume=False)
    # Each site's policy (node config): its ledger in the run folder, the project's delta rule (1e-5).
    policy = {"privacy-dir": str(run_dir / "privacy")}
    if math.isfinite(epsilon):
        # The moments get a fixed share of the budget; DP-SGD's noise is solved for the rest.
        settings.update(privacy=True, target_epsilon=epsilon, budget_epsilon=epsilon,
                        moments_noise_multiplier=max(2.0, 10.0 / epsilon))
        if exact_moments:  # diagnostic: DP-SGD at this epsilon, moments without noise (so epsilon is inf)
            settings.update(moments_noise_multiplier=0.0, budget_epsilon=0.0, target_epsilon=0.0,
                            noise_multiplier=float(exact_moments))
            policy.update({"budget-epsilon": "inf", "max-epsilon-per-run": "inf"})
    else:
        policy["require-privacy"] = "false"
    config = FederationConfig(**settings)
    grid = InProcessGrid([root / "cohort" / "split" / s / "train.csv" for s in SITES], config.to_run_config(),
                         node_config=policy)
    started = time.perf_counter()
    summary = run_federation(grid, config, log=lambda _: None)
    summary["seconds"] = time.perf_counter() - started
    summary["run_dir"] = run_dir
    return summary


def membership(root: Path, run_dir: Path, delta: float) -> dict:
    """All sites' training controls vs all held-out controls, attacked with the global model."""
    from ndae.data.dataset import load_slice_dataset
    from ndae.model import load_checkpoint
    from ndae.privacy.empirical import membership_audit

    def images(kind):
        frames = [load_slice_dataset(root / "cohort" / "split" / s / f"{kind}.csv", root / "cache", progress=False)
                  for s in SITES]
        return np.concatenate([f.images for f in frames])

    model = load_checkpoint(run_dir / "dae" / "checkpoint.pt").model
    return membership_audit(model, images("members"), images("heldout"), delta=delta, draws=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="step times only")
    parser.add_argument("--controls", type=int, default=10, help="controls per site (train + held out)")
    parser.add_argument("--train-controls", type=int, default=6)
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--randomness-only", action="store_true",
                        help=f"only the cost of secure randomness (results/{RANDOMNESS_SECTION}.md and .json)")
    parser.add_argument("--try-install", action="store_true",
                        help="also ask pip for torchcsprng (download into a scratch folder, never installed)")
    parser.add_argument("--render-only", action="store_true",
                        help=f"rewrite results/{RANDOMNESS_SECTION}.md from its saved .json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from benchmarks.common import RESULTS_DIR

    if args.render_only:
        print(write_randomness(json.loads((RESULTS_DIR / f"{RANDOMNESS_SECTION}.json").read_text())).read_text())
        return
    print(write_randomness(randomness_costs(args.try_install, args.quick)).read_text(), flush=True)
    if args.randomness_only:
        return

    times = step_times()
    lines = ["### DP-SGD step time (tiny DAE, batch 8, 3×48×40, one CPU thread)", "",
             "| mode | seconds / step | ÷ plain |", "|---|---|---|",
             f"| plain Adam | {times['plain']:.3f} | 1.00 |"]
    for mode in MODES:
        value = times[mode]
        lines.append(f"| Opacus `{mode}` | {value:.3f} | {value / times['plain']:.2f} |" if isinstance(value, float)
                     else f"| Opacus `{mode}` | {value} | – |")
    working = {m: v for m, v in times.items() if m != "plain" and isinstance(v, float)}
    lines += ["", f"Fastest working mode here: `{min(working, key=working.get)}` (the `dp-mode` default is `hooks`). "
              "Median of 7 timed steps per variant after a warm-up, variants interleaved round-robin, on 2 CPU cores "
              "shared with other jobs: ratios are indicative (an earlier, non-interleaved run ordered the modes differently).", ""]
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="ndae-bench-privacy-") as scratch:
            root = Path(scratch)
            make_cohort(root, args.controls, args.train_controls, args.patients, args.seed)
            held_out = args.controls - args.train_controls
            from ndae.federation.site.policy import SitePolicy

            # what each site does with the requested batch 4: its policy's floor, at most its n
            dp_batch = min(max(4, SitePolicy().min_dp_batch_size), args.train_controls)
            rate = 1 / math.ceil(args.train_controls / dp_batch)
            lines += [f"### C-index and membership audit vs epsilon", "",
                      f"Synthetic cohort: {len(SITES)} sites × ({args.train_controls} training controls + {held_out} "
                      f"held-out controls, {args.patients} patients); {args.rounds} rounds × {args.local_epochs} local "
                      f"epochs of FedAvg, batch 4 requested (under DP the site's floor makes it {dp_batch}: Poisson "
                      f"rate {rate:.2f}), federated Cox. ε is each site's total (DP-SGD rounds + normative moments; "
                      f"RDP, δ = {DEFAULT_DELTA:g}, the sites' default rule); the moments' noise multiplier is "
                      "max(2, 10/ε). "
                      f"Empirical ε: membership test (−denoising loss at 8 fixed t/noise draws) of all sites' "
                      f"{len(SITES) * args.train_controls} training controls vs {len(SITES) * held_out} held-out ones, "
                      "95% Clopper–Pearson lower bound.", "",
                      "| target ε | accounted ε (RDP) | DP-SGD σ | C-index (within site) | attack AUC | empirical ε (lower bound) | run s |",
                      "|---|---|---|---|---|---|---|"]
            sigma_at_8 = None
            for epsilon, exact in ((1.0, False), (3.0, False), (8.0, False), (math.inf, False), (8.0, True)):
                if exact and sigma_at_8 is None:
                    continue
                try:
                    summary = federated_run(root, epsilon, args.rounds, args.local_epochs, args.seed,
                                            exact_moments=sigma_at_8 if exact else False)
                except Exception as error:  # report, do not hide, a run that fails at this epsilon
                    lines.append(f"| {epsilon:g} | – | – | failed: {type(error).__name__}: {str(error)[:100]} | – | – | – |")
                    continue
                privacy = summary.get("privacy", {})
                accounted = max((h["epsilon"] for h in privacy.values()), default=math.inf)
                delta = next(iter(privacy.values()))["delta"] if privacy else DEFAULT_DELTA  # the sites' rule
                sigma = "–"
                if privacy:
                    entry = json.loads((summary["run_dir"] / "privacy" / "site1.jsonl").read_text().splitlines()[0])
                    sigma = f"{entry['noise_multiplier']:.2f}"
                    if epsilon == 8.0 and not exact:
                        sigma_at_8 = entry["noise_multiplier"]
                audit = membership(root, summary["run_dir"], delta)
                c_index = summary["survival"]["c_index_within_site"]
                label = f"{epsilon:g}" if not exact else "8, DP-SGD only (same σ; moments exact, so ε = ∞)"
                lines.append(f"| {label} | {accounted if isinstance(accounted, str) else f'{accounted:.3f}'} | "
                             f"{sigma} | {c_index:.3f} | {audit['auc']:.3f} | {audit['epsilon_lower_bound']:.3f} | "
                             f"{summary['seconds']:.0f} |")
                print(lines[-1], flush=True)
            from ndae.federation.config import FederationConfig
            from ndae.privacy.dp_moments import moments_sensitivity

            defaults = FederationConfig()
            sensitivity = moments_sensitivity(defaults.moments_covariate_clip, defaults.moments_latent_clip)
            lowest_multiplier = min(max(2.0, 10.0 / e) for e in (1.0, 3.0, 8.0))
            members = len(SITES) * args.train_controls
            nonmembers = len(SITES) * (args.controls - args.train_controls)
            lines += ["", f"The membership test compares {members} training with {nonmembers} held-out controls: "
                      "its Clopper–Pearson bound stays near 0 unless they separate almost perfectly, so a low "
                      "empirical ε for the non-private run says the tiny DAE does not memorise in these few steps, "
                      "not that it is private. One seed. The last row takes the ε = 8 run's DP-SGD noise but "
                      "releases the normative moments exactly, to separate the two mechanisms: the moments' "
                      f"Gaussian noise (sensitivity {sensitivity:.1f} for the default clips, noise multiplier ≥ "
                      f"{lowest_multiplier:g}) is added to sums over {args.train_controls} controls per site; "
                      "`benchmarks/results/dp_moments.md` measures how many controls a site needs for useful "
                      "DP moments."]
    path = write_section("privacy", "Differential privacy: DP-SGD cost, utility vs ε, empirical audit", "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
