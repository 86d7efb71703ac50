"""Signal of the NDAE chain on the toy strong-effect cohort: ρ(score, severity) over seeds.

    python -m benchmarks.bench_signal [--seeds 0 1 2 3 4] [--steps 200]

Each seed draws a new toy cohort (`ndae.testing.toy_cohort`: ellipsoid brains whose precentral
cortex, internal capsule and ventricles change with severity) and trains a new `tiny` DAE on
its controls; `ndae.testing.signal_check.ndae_signal` scores the patients and a shuffled-latent
control. The distribution of ρ over seeds sets the threshold of `tests/test_ndae_signal.py`
(which runs the same chain on the same cohort size): results/signal.json keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import RESULTS_DIR, provenance, write_section
from ndae.io import atomic_write_json

# The test's cohort: kept here so that the benchmark measures exactly what the test runs.
COHORT = {"n_controls": 24, "n_patients": 48}


def run(seeds, steps: int, work: str) -> dict:
    import torch

    from ndae.testing.signal_check import ndae_signal
    from ndae.testing.toy_cohort import write_toy_cohort

    torch.set_num_threads(1)
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        manifest, truth = write_toy_cohort(f"{work}/toy{seed}", seed=seed, **COHORT)
        result = ndae_signal(manifest, truth, f"{work}/chain{seed}", steps=steps, seed=seed)
        result["seconds"] = time.perf_counter() - started
        runs.append(result)
        print(json.dumps(result), flush=True)
    return {"cohort": COHORT, "steps": steps, "runs": runs, "provenance": provenance()}


def section(results: dict) -> str:
    runs = results["runs"]
    scores = list(runs[0]["rho"])
    lines = [f"{results['cohort']['n_controls']} controls and {results['cohort']['n_patients']} patients per seed, "
             f"`tiny` DAE, {results['steps']} steps, {len(runs)} seeds "
             f"(mean {np.mean([r['seconds'] for r in runs]):.0f} s per seed).", "",
             "Spearman ρ of each deviation score with the true severity, and of the same chain with the "
             "patients' z_sem shuffled among them (chance):", "",
             "| score | ρ mean | ρ sd | ρ min | shuffled mean | shuffled max abs |", "|---|---|---|---|---|---|"]
    for score in scores:
        rho = np.array([r["rho"][score] for r in runs])
        shuffled = np.array([r["rho_shuffled"][score] for r in runs])
        lines.append(f"| {score} | {rho.mean():.3f} | {rho.std(ddof=1) if len(rho) > 1 else float('nan'):.3f} | "
                     f"{rho.min():.3f} | {shuffled.mean():.3f} | {np.abs(shuffled).max():.3f} |")
    chance = 1.0 / np.sqrt(results["cohort"]["n_patients"] - 1)
    lines += ["", f"Chance level: a ρ from {results['cohort']['n_patients']} unrelated pairs has sd ≈ {chance:.3f}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--work", default="/tmp/ndae-bench-signal")
    args = parser.parse_args(argv)
    results = run(args.seeds, args.steps, args.work)
    atomic_write_json(RESULTS_DIR / "signal.json", results)
    write_section("signal", "Signal of the NDAE chain (toy strong-effect cohort)", section(results),
                  results["provenance"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
