"""Benchmark: does the DAE's decoder use z_sem? The swap test per noise level, per training variant.

For each variant (`tiny` with another loss-weight cap on the ε-loss, min(1/ᾱ_t, cap), and/or other
training steps; written `capC@STEPS`, `capnone` = plain ε-MSE) the DAE is trained on the cohort's
controls, the normative model of z_sem is fitted on them, and on the patients:
- the swap test at each noise level t: how far x̂₀(x_t | z) moves when the patient's own z_sem is
  replaced by another patient's, relative to the residual x − x̂₀ itself
  (`ndae.deviation.prior_residuals`);
- the prior residual per atlas region (normative z_sem), z-scored against the controls' residuals,
  and its Spearman ρ with the true severity per region (a diagnostic only: the DAE and the residuals'
  normative model are both fitted on every control, so this is not the held-out evaluation of
  `ndae evaluate`).
Raw numbers go to benchmarks/results/zsem_use.json (a rerun reuses the finished variants), the
section to benchmarks/results/zsem_use.md.

    python -m benchmarks.bench_zsem_use --cohort /tmp/ndae-directions/cohort-seed0-k4 --variants cap10@200 cap1000@200
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd

from ndae.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (100, 250, 400, 600, 800)


def parse_variant(text: str) -> tuple[float | None, int]:
    cap, _, steps = text.partition("@")
    if not cap.startswith("cap") or not steps.isdigit():
        raise SystemExit(f"variant {text!r}: expected capC@STEPS, e.g. cap10@200 or capnone@200")
    value = cap[3:]
    return (None if value == "none" else float(value)), int(steps)


def measure(cohort: Path, variant: str, work: Path, seed: int) -> dict:
    import torch

    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.image_features import dae_slices_and_atlas
    from ndae.deviation.prior_residuals import prior_residual_maps, prior_residual_regions
    from ndae.model import encode, load_checkpoint
    from ndae.model.config import preset
    from ndae.model.run import train_run
    from ndae.normative.model import NormativeModel, OutOfRangeWarning

    cap, steps = parse_variant(variant)
    config = preset("tiny")
    config.diffusion.loss_weight_cap = cap
    out = work / f"{cohort.name}-{variant}-seed{seed}"
    cache = work / f"cache-{cohort.name}"
    t0 = time.perf_counter()
    train_run(cohort / "manifest.csv", out, config, steps=steps, seed=seed, cache_dir=cache, progress=False,
              figure_steps=10)
    train_s = time.perf_counter() - t0
    state = load_checkpoint(out / "dae" / "checkpoint.pt")
    model, cfg = state.ema.model, state.config
    data = load_slice_dataset(cohort / "manifest.csv", cache, progress=False)
    covariates = data.manifest[["subject", "site", "age", "sex", "group"]].reset_index(drop=True)
    controls = covariates["group"].to_numpy() == "control"
    with torch.no_grad():
        z = encode(model, data.images).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        normative = NormativeModel().fit(covariates[controls].reset_index(drop=True), z[controls])
        z_normative = normative.predict(covariates)[0]
    channels, atlas = dae_slices_and_atlas(cfg, cache, data.subjects[0], data.images.shape[1])
    brain = data.images[:, channels] > -1.0
    truth = pd.read_csv(cohort / "truth.csv", dtype={"subject": str}).set_index("subject")
    patients = ~controls
    severity = truth.loc[covariates.loc[patients, "subject"], "severity"].to_numpy(float)
    per_level = {}
    for t in LEVELS:
        result = prior_residual_maps(model, cfg, data.images, z_normative, levels=(t,), draws=1,
                                     out_size=data.images.shape[2:])
        table = prior_residual_regions(result, brain, atlas)
        regions = [c for c in table.columns if c.startswith("prior_") and not c.startswith("prior_own_")]
        values = table[regions].to_numpy(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            zmodel = NormativeModel().fit(covariates[controls].reset_index(drop=True), values[controls], regions)
            zs = zmodel.z_scores(covariates.reset_index(drop=True), values)
        from scipy.stats import spearmanr

        rho = {r[len("prior_"):]: float(spearmanr(zs[patients, k], severity)[0]) for k, r in enumerate(regions)}
        per_level[str(t)] = {**result.swap, "severity_rho": rho}
    return {"variant": variant, "cohort": str(cohort), "seed": seed, "loss_weight_cap": cap, "steps": steps,
            "train_s": train_s, "levels": per_level,
            "psnr_brain_db_10_steps": json.loads((out / "config.json").read_text()).get("dae_result", {}).get("reconstruction_psnr_brain_db")}


def render(raw: dict) -> str:
    runs = raw["runs"]
    lines = ["## Does the decoder use z_sem? (`benchmarks/bench_zsem_use.py`)", ""]
    if not runs:
        return "\n".join(lines + ["No runs.", ""])
    best = max(runs, key=lambda r: max(v["relative_change"] for v in r["levels"].values()))
    top = max(best["levels"].items(), key=lambda kv: kv[1]["relative_change"])
    lines += [f"Verdict (computed): the largest swap effect is {100 * top[1]['relative_change']:.2g} % of the residual "
              f"({best['variant']}, t = {top[0]}); at the score's levels (100-400) the largest is "
              f"{100 * max(r['levels'][str(t)]['relative_change'] for r in runs for t in (100, 250, 400)):.2g} %.", "",
              "Swap test: mean over patients of |x̂₀(x_t | another patient's z_sem) − x̂₀(x_t | own z_sem)| / "
              "|x − x̂₀(x_t | own)| over the brain, one noise draw. ρ: Spearman of the precentral prior-residual z "
              "(normative z_sem) with true severity (diagnostic: DAE and residual model fitted on every control).", "",
              "| variant | cohort | DAE s | " + " | ".join(f"swap t={t}" for t in LEVELS) + " | "
              + " | ".join(f"ρ precentral t={t}" for t in LEVELS) + " |",
              "|---|---|---|" + "---|" * (2 * len(LEVELS))]
    for r in runs:
        swaps = " | ".join(f"{100 * r['levels'][str(t)]['relative_change']:.2g} %" for t in LEVELS)
        rhos = " | ".join(f"{r['levels'][str(t)]['severity_rho'].get('precentral', float('nan')):+.2f}" for t in LEVELS)
        lines.append(f"| {r['variant']} | {Path(r['cohort']).name} | {r['train_s']:.0f} | {swaps} | {rhos} |")
    lines += ["", f"Command: `{raw.get('command', '')}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["cap10@200", "cap1000@200"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ndae-zsem-use"))
    parser.add_argument("--out", type=Path, default=RESULTS / "zsem_use.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    raw = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    raw["command"] = "python -m benchmarks.bench_zsem_use " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    for variant in args.variants:
        key = (variant, str(args.cohort), args.seed)
        if any((r["variant"], r["cohort"], r["seed"]) == key for r in raw["runs"]):
            continue
        raw["runs"].append(measure(args.cohort, variant, args.work, args.seed))
        atomic_write_json(args.out, raw)  # after every variant: a killed run keeps what it measured
        atomic_write_text(args.out.with_suffix(".md"), render(raw))
        print(render(raw), flush=True)
    atomic_write_text(args.out.with_suffix(".md"), render(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
