"""Benchmark: NDAE deviation scores vs the five baselines vs the oracle C* on a simulated cohort.

Builds a simulated multi-site ALS cohort from the shipped IXI demo scans (`ndae cohort`, or
reuses `--cohort DIR`), then runs the whole `ndae evaluate` pipeline once per seed (DAE, the
autoencoder baseline and the CV folds change with the seed; the cohort does not unless
`--cohort-seeds` lists several). Reports Harrell's and Uno's C as mean ± sd over all folds of
all runs, and the sd of the per-run means. Writes `benchmarks/results/survival.md`.

    python benchmarks/bench_survival.py [--seeds 0 1] [--steps 100] [--cohort-seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.io import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def healthy_from_prepared(prepared_dir: Path, demographics: Path, out: Path) -> Path:
    """A healthy manifest from prepared IXI subjects (the demo build's intermediate cache), written
    exactly as scripts/build_demo_data.py writes the demo: 8-bit [-1, 1] images + label maps on
    the MNI grid. For when the shipped demo archive is not built yet."""
    import nibabel as nib

    from ndae.data.cache import load_prepared

    people = pd.read_csv(demographics, dtype={"subject": str, "sex": str}).set_index("subject")
    rows = []
    for record in sorted(prepared_dir.glob("*.json")):
        subject = record.stem
        if subject not in people.index or not (prepared_dir / f"{subject}.npz").exists():
            continue
        prepared = load_prepared(prepared_dir, subject)
        image = nib.Nifti1Image(np.round((prepared.image + 1.0) * 127.5).astype(np.uint8), prepared.grid_affine)
        image.header.set_slope_inter(2.0 / 255.0, -1.0)
        labels = nib.Nifti1Image(prepared.labels.astype(np.uint8), prepared.grid_affine)
        for kind, nifti in (("images", image), ("labels", labels)):
            nifti.set_sform(prepared.grid_affine, code=4)
            nifti.set_qform(prepared.grid_affine, code=4)
            atomic_write_bytes(out / kind / f"{subject}.nii", nifti.to_bytes())
        rows.append({"subject": subject, "site": "IXI-HH", "image": f"images/{subject}.nii",
                     "age": people.at[subject, "age"], "sex": people.at[subject, "sex"], "group": "control",
                     "mask": f"labels/{subject}.nii"})
    atomic_write_text(out / "manifest.csv", pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
    return out / "manifest.csv"


def make_cohort(args, cohort_seed: int) -> Path:
    if args.cohort:
        return Path(args.cohort)
    from ndae.cohort import CohortConfig, generate_cohort

    out = Path(args.work) / f"cohort-seed{cohort_seed}"
    if not (out / "truth.csv").exists():
        if args.healthy:
            healthy = args.healthy
        elif args.prepared:
            healthy = healthy_from_prepared(Path(args.prepared), Path(args.demographics), Path(args.work) / "healthy")
        else:
            from ndae.data.demo import demo_manifest_path

            healthy = demo_manifest_path()
        args.healthy_used = str(healthy)
        generate_cohort(healthy, out, CohortConfig(sites=args.sites, seed=cohort_seed, jobs=args.jobs, figure=False))
    return out


def run(args) -> dict:
    import torch

    from ndae.evaluation import EvaluationOptions, evaluate

    torch.set_num_threads(args.threads)
    runs, per_fold, started = [], [], time.perf_counter()
    cohort_seconds = 0.0
    for cohort_seed in args.cohort_seeds:
        t0 = time.perf_counter()
        cohort = make_cohort(args, cohort_seed)
        cohort_seconds += time.perf_counter() - t0
        for seed in args.seeds:
            out = Path(args.work) / f"eval-cohort{cohort_seed}-seed{seed}"
            options = EvaluationOptions(config=args.preset, steps=args.steps, inversion_steps=args.inversion_steps,
                                        folds=args.folds, seed=seed, autoencoder_steps=args.autoencoder_steps,
                                        cache_dir=str(Path(args.work) / f"cache-cohort{cohort_seed}"),
                                        progress=not args.quiet)
            result = evaluate(cohort / "manifest.csv", out, cohort / "truth.csv", options)
            frame = pd.read_csv(out / "survival" / "cv_per_fold.csv")
            frame["cohort_seed"], frame["seed"] = cohort_seed, seed
            per_fold.append(frame)
            runs.append({"cohort_seed": cohort_seed, "seed": seed, "out": str(out), "oracle_c_index": result["oracle_c_index"],
                         "subjects": result["subjects"], "dae": result["dae"], "timings": result["timings"],
                         "baselines": result["baselines"], "skipped": result["skipped_baselines"],
                         "failed": result["failed_models"], "cosine_hazard_ratio": result["cosine_hazard_ratio"]})
    return {"runs": runs, "per_fold": pd.concat(per_fold, ignore_index=True), "cohort_seconds": cohort_seconds,
            "total_seconds": time.perf_counter() - started}


def aggregate(per_fold: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, variant), group in per_fold.groupby(["model", "variant"], sort=False):
        row = {"model": model, "variant": variant, "n_folds": len(group)}
        for metric in ("harrell_c", "uno_c"):
            values = group[metric].dropna()
            run_means = group.groupby(["cohort_seed", "seed"])[metric].mean()
            row[metric] = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
            row[f"{metric}_runs_sd"] = float(run_means.std(ddof=1)) if len(run_means) > 1 else float("nan")
            row[f"{metric}_mean"] = float(values.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(result: dict, table: pd.DataFrame, path: Path, command: str) -> None:
    runs = result["runs"]
    oracle = {(r["cohort_seed"]): r["oracle_c_index"] for r in runs}
    first = runs[0]
    subjects = first["subjects"]
    star = ", ".join(f"{v:.3f} (cohort seed {k})" for k, v in oracle.items())
    lines = [
        "## Survival: NDAE scores vs baselines vs oracle (`benchmarks/bench_survival.py`"
        + ("" if result["preset"] == "tiny" else f", DAE preset `{result['preset']}`") + ")", "",
        f"`{command}` — {datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()} CPU, {os.cpu_count()} cores visible "
        f"(shared with other work), torch threads {result['threads']}, Python {platform.python_version()}. "
        f"Total {result['total_seconds'] / 60:.1f} min (cohort generation {result['cohort_seconds'] / 60:.1f} min).", "",
        f"Cohort: simulated by `ndae cohort` ({len(oracle)} cohort seed(s)) from `{result['healthy']}`; "
        f"{subjects['controls']} controls, {subjects['patients']} patients, {subjects['events']} events. "
        f"DAE preset `{result['preset']}`, {first['dae'].get('steps')} steps (reconstruction PSNR in brain "
        f"{_fmt(first['dae'].get('reconstruction_psnr_brain_db'))} dB); runs (pipeline seeds) {result['seeds']}. "
        f"{result['folds']}-fold CV stratified by event, the same folds for every model within a run; Cox L2 penalty 0.1.", "",
        f"Oracle C* (Harrell's C of the true risk): {star}.", "",
        "Mean ± sd over all folds of all runs; 'runs sd' = sd of the per-run means.", "",
        "| model | variant | Harrell's C | runs sd | Uno's C | runs sd |", "|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(f"| {row.model} | {row.variant} | {row.harrell_c} | {_fmt(row.harrell_c_runs_sd)} | {row.uno_c} | "
                     f"{_fmt(row.uno_c_runs_sd)} |")
    hazard = [r["cosine_hazard_ratio"]["per_sd"] for r in runs]
    brain_age = [r["baselines"].get("brain-age gap", {}).get("controls_out_of_fold_mae_years") for r in runs]
    lines += [
        "", "Models: covariates = age, sex, site (onset is not in the cohort's manifest, so not used); NDAE = "
        "deviation of the DAE's z_sem from the normative model (cosine, Mahalanobis, all scores); regional "
        "normative z = PCNtoolkit-style z-scores of label-map volumes/intensities; autoencoder = conv. AE "
        "reconstruction error + latent Mahalanobis; z_sem PCA = no normative model; brain-age gap from z_sem. "
        "'with covariates' adds age and sex. The oracle row is a Cox model on the true linear predictor.", "",
        "NDAE cosine, HR per SD of the patients' cosine: "
        + ", ".join(f"{h['hazard_ratio']:.2f} ({h['lower_95']:.2f}–{h['upper_95']:.2f})" for h in hazard) + " (per run).",
        "Brain-age model, controls' out-of-fold MAE (years): " + ", ".join(_fmt(v, 1) for v in brain_age) + ".", "",
        "Per-run time (s): " + "; ".join(
            f"seed {r['seed']}: DAE {r['timings']['dae_training_s']:.0f}, encode {r['timings']['encoding_s']:.0f}, "
            f"autoencoder {r['timings']['baseline_autoencoder_s']:.0f}, CV {r['timings']['cross_validation_s']:.0f}, "
            f"total {r['timings']['total_s']:.0f}" for r in runs) + ".", "",
    ]
    lines += [
        f"Reading: at the `{result['preset']}` preset and this CPU step budget the DAE is far from converged (the "
        "DAE benchmark measures what its latent carries), so the NDAE rows check the "
        "pipeline end to end, not the method's ceiling; that needs the `paper` preset on a GPU. Folds hold ~12 "
        "patients, so a fold's C has sd ≈ 0.1: differences below ~0.05 between rows are noise.", "",
    ]
    skipped = {k: v for r in runs for k, v in r["skipped"].items()}
    failed = {k: v for r in runs for k, v in r["failed"].items()}
    if skipped or failed:
        lines += [f"Skipped: {skipped}; failed: {failed}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines))


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", default=None, help="healthy manifest for the cohort (default: the IXI demo)")
    parser.add_argument("--prepared", default=None, help="instead of the demo: a prepared-subject cache of IXI "
                        "scans (e.g. the demo build's /tmp/ndae-demo-build), with --demographics")
    parser.add_argument("--demographics", default=None, help="subject, age, sex CSV for --prepared")
    parser.add_argument("--cohort", default=None, help="use this existing cohort folder (manifest.csv, truth.csv)")
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="cohort generator worker processes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pipeline seeds (DAE, AE, folds)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200, help="DAE training steps")
    parser.add_argument("--inversion-steps", type=int, default=10)
    parser.add_argument("--autoencoder-steps", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/ndae-bench-survival")
    parser.add_argument("--out", default=str(RESULTS / "survival.md"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    result.update(preset=args.preset, seeds=args.seeds, folds=args.folds, threads=args.threads,
                  healthy=getattr(args, "healthy_used", args.cohort or args.healthy) + (
                      f" (the IXI scans of the demo build's prepared cache `{args.prepared}`, written as the demo is)"
                      if args.prepared and not args.cohort else ""))
    table = aggregate(result["per_fold"])
    command = "python benchmarks/bench_survival.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    write_report(result, table, Path(args.out), command.strip())
    Path(args.work).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.work) / "bench_survival.json", json.dumps(
        {k: v for k, v in result.items() if k != "per_fold"}, indent=2, default=str))
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
