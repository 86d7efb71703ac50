"""Pipeline modes side by side: centralised vs federated (pooled / federated Cox) vs DP at several ε,
over several simulated cohorts, with one cross-validated survival evaluation; plus the normative
model's calibration on held-out controls. Writes benchmarks/results/modes.md (+ PNG figures and
per-seed / per-fold CSVs beside it).

    python -m benchmarks.bench_modes                       # full default (cohort seeds 0 1 2, 4 rounds × 5 epochs)
    python -m benchmarks.bench_modes --cohort-seeds 0 --rounds 1 --epochs 1 --work /tmp/bench-modes-smoke
    python -m benchmarks.bench_modes --render-only          # the section and figure again from results/modes.json + CSVs

For every cohort seed s: a 3-site ALS cohort simulated from the shipped IXI demo scans
(`ndae.cohort.generate_cohort`, cached under --work), then every mode runs through the real
federation code in process (`InProcessGrid` + `run_federation`, the ClientApp/ServerApp handlers
of a Flower deployment) with the same DAE schedule (R rounds × E local epochs, `tiny`, batch 8):

- centralised: the same subjects re-split as ONE site holding everyone (one site = centralised
  training through the identical code path);
- federated, pooled Cox: the cohort's 3 sites, FedAvg, survival-mode pooled;
- federated, federated Cox: survival-mode federated (no patient row leaves a site). Its DAE is the
  pooled run's (the checkpoint copied in, the server's resume path skips the finished rounds);
  normative fit, scoring and the Newton–Raphson Cox rounds are its own;
- DP ε = 1, 3, 8: DP-SGD + noised normative moments at every site (target ε per site), pooled
  survival with every site's policy allowing pooled scores (so deviations.csv exists).

Every mode's per-patient deviation scores (deviations.csv; for the federated-Cox mode recomputed
from its own checkpoint and normative model, as the sites hold them) go through the SAME K-fold
cross-validated Cox evaluation (same folds for every mode of a cohort seed, grouped by source
anatomy), and the truth-aware metrics (`benchmarks/truth_eval.py`: expected C over `--draws`
survival draws, risk concordance, ρ severity, AUROC vs held-out controls, paired differences to
the covariates-only model and the voxel-wise baseline). Cohorts: 4 patients per patient anatomy
by default (240 patients on the 121 shipped scans).

This file is the command line; the work is in `benchmarks/modes/` (runs = orchestration,
evaluation = metrics on finished runs, calibration, figures, raw = the saved numbers, report = the
section and its computed prose).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS_DIR, provenance
from benchmarks.modes import raw as raw_results
from benchmarks.modes.calibration import calibration, summarise_calibration
from benchmarks.modes.evaluation import evaluate_seed, per_seed_table, truth_metrics_seed
from benchmarks.truth_eval import jsonable, summarise
from benchmarks.modes.figures import figure_c_vs_epsilon
from benchmarks.modes.names import CENTRAL, POOLED, all_modes
from benchmarks.modes.report import write as write_report
from benchmarks.modes.runs import (central_split, cohort_summary, make_cohort, prewarm, reuse_summary, run_all,
                                   site_manifests, source_scans)

# what the report needs of the command line (saved with the raw results)
SETTINGS = ("cohort_seeds", "rounds", "epochs", "batch_size", "preset", "seed", "epsilons", "folds", "cv_seed",
            "penalizer", "max_subjects", "workers", "threads", "retrain_federated_cox", "patients_per_anatomy", "draws")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0, help="DAE / federation seed (the same for every mode)")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cv-seed", type=int, default=0)
    parser.add_argument("--patients-per-anatomy", type=int, default=4,
                        help="patients drawn per patient anatomy (4 on the 121 shipped scans: 240 patients)")
    parser.add_argument("--draws", type=int, default=50, help="fresh survival draws for the expected C")
    parser.add_argument("--penalizer", type=float, default=0.1)
    parser.add_argument("--max-subjects", type=int, default=None, help="smoke runs: a cohort from a subset of the scans")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="cohort generator processes")
    parser.add_argument("--retrain-federated-cox", action="store_true",
                        help="train the federated-Cox run's DAE afresh instead of resuming from the pooled run's")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="keep finished runs of the same cohort and schedule (development)")
    parser.add_argument("--work", default="/tmp/bench-modes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where modes.md, modes.json, the CSVs and figures go (smoke runs: elsewhere)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results/modes.md and its C-vs-ε figure from the saved raw results (no runs)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Cohorts → runs → evaluation → raw results; then the figures and the section."""
    import torch

    from ndae.io import atomic_write_bytes

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cohorts, centrals = {}, {}
    for seed in args.cohort_seeds:
        cohorts[seed] = make_cohort(work, seed, args.jobs, args.max_subjects, args.patients_per_anatomy)
        centrals[seed] = central_split(cohorts[seed])
        prewarm(site_manifests(cohorts[seed]) + site_manifests(centrals[seed]), str(work / "cache"))
    cohort_s = time.perf_counter() - started
    print(f"[bench_modes] cohorts ready in {cohort_s:.0f} s", flush=True)

    results = run_all(args, cohorts, centrals)
    per_fold, checks, calib_rows, truth = [], {}, [], {}
    for seed in args.cohort_seeds:
        frame, checks[seed], tables = evaluate_seed(args, seed, cohorts[seed], results)
        per_fold.append(frame)
        held_out = {}
        for mode in (CENTRAL, POOLED):
            run_result = results.get((seed, mode), {})
            if run_result and "error" not in run_result:
                row = calibration(Path(run_result["run_dir"]), cohorts[seed], str(work / "cache"), args.folds, args.cv_seed)
                held_out[mode] = row.pop("held_out_scores")
                calib_rows.append({"dae": mode, "cohort_seed": seed, **row})
        t0 = time.perf_counter()
        truth[seed] = truth_metrics_seed(args, seed, cohorts[seed], tables, held_out)
        truth[seed]["seconds"] = time.perf_counter() - t0
        print(f"[bench_modes] cohort seed {seed}: truth-aware metrics in {truth[seed]['seconds']:.0f} s", flush=True)
    per_fold = pd.concat(per_fold, ignore_index=True)
    seeds = per_seed_table(per_fold, results, checks, all_modes(args.epsilons))
    calib = pd.DataFrame(calib_rows)

    figures = {"c_vs_eps": "modes_c_vs_epsilon.png"}
    first = results.get((args.cohort_seeds[0], POOLED), {})
    km = Path(first.get("run_dir", "/nonexistent")) / "survival" / "km_risk.png"
    if km.exists():
        figures["km"] = f"modes_km_risk_seed{args.cohort_seeds[0]}.png"
        args.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.results_dir / figures["km"], km.read_bytes())
    scans = source_scans()
    raw = {"provenance": provenance(), "settings": {k: getattr(args, k) for k in SETTINGS}, "cores": os.cpu_count(),
           "source_scans": min(scans, args.max_subjects) if args.max_subjects else scans,
           "cohorts": {seed: cohort_summary(cohort) for seed, cohort in cohorts.items()}, "checks": checks,
           "calibration": summarise_calibration(calib) if len(calib) else [],
           "calibration_per_seed": calib.to_dict("records"), "reuse": reuse_summary(results),
           "total_s": time.perf_counter() - started, "cohort_s": cohort_s, "figures": figures,
           "truth": jsonable(truth), "truth_summary": jsonable(summarise(truth))}
    raw_results.save(raw, seeds, per_fold, args.results_dir)
    render(args.results_dir)


def render(folder: Path) -> None:
    """The figure and the section from the saved raw results in `folder`."""
    raw, seeds, per_fold = raw_results.load(folder)
    settings = raw["settings"]
    figure_c_vs_epsilon(seeds[seeds["error"] == ""], list(settings["epsilons"]), settings["folds"],
                        folder / raw["figures"]["c_vs_eps"])
    print(write_report(raw, seeds, per_fold, folder).read_text())


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.render_only:
        render(args.results_dir)
    else:
        run(args)


if __name__ == "__main__":
    main()
