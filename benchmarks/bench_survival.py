"""Benchmark: NDAE deviation scores vs the five baselines vs the oracle C* on a simulated cohort.

Builds simulated multi-site ALS cohorts from the shipped IXI demo scans (`ndae cohort`, by default
4 patients per patient anatomy = 240 patients, cohort seeds 0 1 2; or reuses `--cohort DIR`), then
runs the whole `ndae evaluate` pipeline once per pipeline seed on each (DAE, the autoencoder
baseline and the CV folds change with the seed). Reports Harrell's and Uno's C as mean ± sd over all folds of
all runs, and the sd of the per-run means. Writes `benchmarks/results/survival.md` and its raw
results beside it (`survival.json`: runs, the summary table and the per-fold rows), from which
`--render-only` rewrites the section.

Truth-aware metrics (`ndae.evaluation.truth_metrics`: the cohort's truth makes them possible), per model of every run, computed here from the run's
patients.csv and the cohort's truth by `benchmarks/truth_eval.py` (so they do not depend on which
of them the `ndae evaluate` version reports): observed CV Harrell's / Uno's C on folds grouped by
source anatomy, expected C over `--draws` fresh survival draws from the cohort's stored survival
model, risk concordance with the true linear predictor, ρ with the true severity and AUROC vs
held-out controls for single scores, and paired differences in expected C to the covariates-only
model and to the voxel-wise normative baseline (`ndae.baselines.voxelwise`; fitted here on the
cohort's controls where the run has none), on the raw images and on their within-brain high-pass
(so that a gain that is only spatial filtering shows), with 95 % intervals over runs.

Per-fold Cox table: the per-fold rows come from `ndae evaluate` (`survival/cv_per_fold.csv`, one row
per model, variant and fold, the same folds for every model of a run); `aggregate` summarises them
per model, `reading` compares every model with the covariates-only model as a paired difference
over the same folds (95 % CI over all paired folds of all runs). Nothing in the prose is typed:
where the CI includes 0 it says the two are not distinguishable at this sample size.

    python -m benchmarks.bench_survival [--seeds 0] [--steps 200] [--cohort-seeds 0 1 2] [--patients-per-anatomy 4]
    python -m benchmarks.bench_survival --max-subjects 24 --patients-per-anatomy 2 --cohort-seeds 0 1 --steps 2 \
        --autoencoder-steps 2 --draws 5 --folds 3 --work /tmp/bench-survival-smoke --out /tmp/bench-survival-smoke/s.md
    python -m benchmarks.bench_survival --render-only [--out benchmarks/results/survival.md]
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

from benchmarks.statements import compare, half_width, truth_reading
from benchmarks.truth_eval import (VOXELWISE, VOXELWISE_HIGHPASS, cohort_truth, evaluate_models, jsonable, summarise,
                                   table_lines, voxelwise_scores)
from ndae.cohort.disease import DEFAULT_DISEASE, disease_setting
from ndae.evaluation.paired import paired_difference, select
from ndae.io import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ALONE, WITH = "alone", "with covariates"
ORACLE = "oracle (true risk)"
# the voxel-wise baselines: (model name, feature column prefix); the raw one's name is a prefix
# of the high-pass one's, so models are told apart by `_voxelwise_family`, never by startswith
VOXELWISE_PREFIXES = ((VOXELWISE, "z_voxel_"), (VOXELWISE_HIGHPASS, "z_highpass_voxel_"))


def _voxelwise_family(model: str) -> str | None:
    """VOXELWISE or VOXELWISE_HIGHPASS for the models of that baseline (with its precentral single
    score), None for any other model."""
    name = model.rsplit(" | ", 1)[0]
    for family in (VOXELWISE_HIGHPASS, VOXELWISE):
        if name in (family, f"{family} precentral"):
            return family
    return None


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

    out = Path(args.work) / (f"cohort-seed{cohort_seed}-k{args.patients_per_anatomy}"
                             + (f"-max{args.max_subjects}" if args.max_subjects else "")
                             + ("" if args.disease == DEFAULT_DISEASE else f"-{args.disease}"))
    if not (out / "truth.csv").exists():
        if args.healthy:
            healthy = args.healthy
        elif args.prepared:
            healthy = healthy_from_prepared(Path(args.prepared), Path(args.demographics), Path(args.work) / "healthy")
        else:
            from ndae.data.demo import demo_manifest_path

            healthy = demo_manifest_path()
        args.healthy_used = str(healthy)
        generate_cohort(healthy, out, CohortConfig(sites=args.sites, seed=cohort_seed, jobs=args.jobs, figure=False,
                                                   patients_per_anatomy=args.patients_per_anatomy,
                                                   max_subjects=args.max_subjects, disease=disease_setting(args.disease),
                                                   disease_name=args.disease))
    return out


def eval_folder_name(args, cohort: Path, seed: int) -> str:
    """One run folder per cohort, preset, steps and pipeline seed, so that several presets share a
    --work folder (its cohorts and their prepared caches)."""
    image = f"-image{args.image_deviation_steps}" if args.image_deviation_steps else ""
    return f"eval-{cohort.name}-{args.preset}-steps{args.steps}{image}-seed{seed}"


def _control_fingerprint(cohort: Path) -> str:
    """sha256 over the cohort's control rows and the bytes of their images: equal fingerprints
    mean the DAE (trained on the controls only, with the same seed) is the same."""
    import hashlib

    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str)
    digest = hashlib.sha256()
    for row in manifest[manifest["group"] == "control"].itertuples():
        digest.update(f"{row.subject},{row.site},{row.age},{row.sex},{row.image}".encode())
        digest.update(hashlib.sha256((cohort / row.image).read_bytes()).digest())
    return digest.hexdigest()


def share_trained_dae(args, cohort: Path, out: Path, seed: int) -> bool:
    """Cohorts of one cohort seed under other disease settings hold byte-identical controls
    (`ndae cohort --disease`), so the DAE trained on them with the same preset, steps and seed is
    the same network: copy a finished sibling run's dae/ into `out` (evaluate then resumes it at
    its full step count, training nothing). False when no sibling qualifies."""
    import shutil

    from ndae.cohort.disease import DISEASE_SETTINGS

    if (out / "dae" / "checkpoint.pt").exists():
        return True
    base = cohort.name
    for disease in DISEASE_SETTINGS:
        base = base.removesuffix(f"-{disease}")
    mine = None
    for name in [base, *(f"{base}-{d}" for d in DISEASE_SETTINGS)]:
        source = Path(args.work) / name
        sibling = Path(args.work) / eval_folder_name(args, source, seed)
        if source == cohort or not (sibling / "evaluation.json").is_file() or not (source / "manifest.csv").is_file():
            continue
        mine = mine or _control_fingerprint(cohort)
        if _control_fingerprint(source) != mine:
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(sibling / "dae", out / "dae", dirs_exist_ok=True)
        print(f"[bench_survival] sharing the DAE of {sibling.name} (same controls, preset, steps, seed)", flush=True)
        return True
    return False


def finished_run(out: Path, options) -> dict | None:
    """The evaluation.json of a finished `ndae evaluate` in `out` made with these options (None when
    there is none, or it was made otherwise: then the run is redone). evaluation.json is written
    last, atomically, so its presence means the run finished."""
    from dataclasses import asdict

    saved = out / "evaluation.json"
    if not saved.is_file():
        return None
    try:
        result = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    same = lambda o: {k: v for k, v in o.items() if k != "progress"}
    # an option added since the run was made counts as its default
    saved_options = {**json.loads(json.dumps(asdict(type(options)()))), **result.get("options", {})}
    if same(saved_options) != same(json.loads(json.dumps(asdict(options)))):
        return None
    print(f"[bench_survival] reusing the finished run {out}", flush=True)
    return result


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
            out = Path(args.work) / eval_folder_name(args, cohort, seed)
            options = EvaluationOptions(config=args.preset, steps=args.steps, inversion_steps=args.inversion_steps,
                                        folds=args.folds, seed=seed, autoencoder_steps=args.autoencoder_steps,
                                        cache_dir=str(Path(args.work) / f"cache-{cohort.name}"),
                                        progress=not args.quiet, image_deviation_steps=args.image_deviation_steps)
            result = finished_run(out, options) if args.reuse_runs else None
            if result is None and args.share_dae:
                options.resume_dae = share_trained_dae(args, cohort, out, seed)
            if result is None:
                result = evaluate(cohort / "manifest.csv", out, cohort / "truth.csv", options)
            frame = pd.read_csv(out / "survival" / "cv_per_fold.csv")
            frame["cohort_seed"], frame["seed"] = cohort_seed, seed
            per_fold.append(frame)
            t0 = time.perf_counter()
            truth_metrics = truth_evaluation(args, cohort, out, frame, seed)
            truth_seconds = time.perf_counter() - t0
            runs.append({"cohort_seed": cohort_seed, "seed": seed, "out": str(out), "oracle_c_index": result["oracle_c_index"],
                         "truth": truth_metrics, "truth_seconds": truth_seconds,
                         "pipeline_truth_keys": pipeline_truth_keys(result),
                         "subjects": result["subjects"], "dae": result["dae"], "timings": result["timings"],
                         "baselines": result["baselines"], "skipped": result["skipped_baselines"],
                         "failed": result["failed_models"], "cosine_hazard_ratio": result["cosine_hazard_ratio"]})
    return {"runs": runs, "per_fold": pd.concat(per_fold, ignore_index=True), "cohort_seconds": cohort_seconds,
            "penalizer": options.penalizer,
            "total_seconds": time.perf_counter() - started}


PIPELINE_TRUTH_KEYS = ("expected_c", "risk_concordance", "severity_spearman", "auroc_patients_vs_held_out_controls",
                       "vs_covariates", "vs_best_baseline")


def pipeline_truth_keys(result: dict) -> dict:
    """The truth-aware keys `ndae evaluate` itself put in evaluation.json `models[]` (where its
    version has them), kept beside the benchmark's own computation for comparison."""
    kept = {}
    for model in result.get("models") or []:
        values = {k: model[k] for k in PIPELINE_TRUTH_KEYS if k in model}
        if values:
            kept[f"{model.get('model')} | {model.get('variant')}"] = values
    return kept


def run_models(per_fold: pd.DataFrame, patients: pd.DataFrame) -> dict[str, list[str]]:
    """`{model | variant: feature columns}` of the run, read from its per-fold rows (the columns
    `ndae evaluate` fitted), plus each voxel-wise baseline (raw, high-pass) where the run has none,
    and each one's precentral single score."""
    models = {}
    for (model, variant), group in per_fold.groupby(["model", "variant"], sort=False):
        columns = [c for c in str(group["features"].iloc[0]).split(", ") if c]
        if columns and all(c in patients.columns for c in columns):
            models[f"{model} | {variant}"] = columns
    for family, prefix in VOXELWISE_PREFIXES:
        voxel = sorted(c for c in patients.columns if c.startswith(prefix))
        if voxel and not any(k.rsplit(" | ", 1)[0] == family for k in models):
            models[f"{family} | {ALONE}"] = voxel
        if f"{prefix}precentral" in patients.columns:
            models[f"{family} precentral | {ALONE}"] = [f"{prefix}precentral"]
    covariates = models.get(f"covariates | {ALONE}")
    if not covariates:
        # the run fitted none (e.g. a site indicator constant among the patients): age + sex + the
        # site indicators that vary among the patients, as the covariates-only model
        candidates = ["age", "sex_female", *sorted(c for c in patients.columns if c.startswith("site_"))]
        covariates = [c for c in candidates if c in patients.columns and patients[c].nunique() > 1]
        models[f"covariates | {ALONE}"] = covariates
    for name in [k for k in models if k.endswith(f" | {ALONE}")]:
        model = name.rsplit(" | ", 1)[0]
        if model not in ("covariates", ORACLE) and f"{model} | {WITH}" not in models:
            # nested: exactly the covariates-only model's covariates plus the model's own columns
            models[f"{model} | {WITH}"] = [*covariates, *[c for c in models[name] if c not in covariates]]
    return models


def truth_evaluation(args, cohort: Path, out: Path, per_fold: pd.DataFrame, seed: int) -> dict:
    """The truth-aware metrics (benchmarks/truth_eval.py) of every model of one run, from the run's
    patients.csv and the cohort's truth, independent of which of them `ndae evaluate` reports.
    Held-out controls: the ones the run kept out of every fit (evaluation.json
    `held_out_controls`), with their NDAE scores from its deviations.csv. The voxel-wise baselines
    (raw and high-pass) are fitted here on the run's training controls (prepared images of the
    run's cache) for those controls' scores, and for the patients' where the run has no such features."""
    from ndae.baselines.voxelwise import HIGHPASS_SIGMA
    from ndae.data.manifest import read_manifest

    patients = pd.read_csv(out / "patients.csv", dtype={"subject": str}).sort_values("subject").reset_index(drop=True)
    manifest = read_manifest(cohort / "manifest.csv")
    evaluation = json.loads((out / "evaluation.json").read_text())
    held = [str(s) for s in (evaluation.get("held_out_controls") or {}).get("subjects", [])]
    controls = manifest.loc[(manifest["group"].astype(str) == "control") & ~manifest["subject"].astype(str).isin(held),
                            "subject"].astype(str)
    infos, held_out = {}, None
    for (family, prefix), sigma in zip(VOXELWISE_PREFIXES, (None, HIGHPASS_SIGMA)):
        voxel, held_voxel, infos[family] = voxelwise_scores(cohort, Path(args.work) / f"cache-{cohort.name}", controls,
                                                            patients["subject"], seed=seed, held_out=held or None,
                                                            highpass_sigma=sigma)
        if not any(c.startswith(prefix) for c in patients.columns):
            patients = patients.merge(voxel, on="subject", how="left")
        held_out = held_voxel if held_out is None else held_out.merge(held_voxel, on="subject", how="outer")
    if held:
        for name in ("deviations.csv", "image_deviations.csv"):  # the second only with image-space features
            if not (out / name).exists():
                continue
            deviations = pd.read_csv(out / name, dtype={"subject": str})
            scores = deviations[deviations["subject"].isin(set(held))]
            held_out = held_out.merge(scores[["subject", *[c for c in scores.columns if c in patients.columns and c != "subject"]]],
                                      on="subject", how="outer")
    models = run_models(per_fold, patients)
    truth, cohort_json = cohort_truth(cohort, patients["subject"])
    references = tuple(k for k in (f"covariates | {ALONE}", f"{VOXELWISE} | {ALONE}", f"{VOXELWISE} | {WITH}",
                                   f"{VOXELWISE_HIGHPASS} | {ALONE}", f"{VOXELWISE_HIGHPASS} | {WITH}") if k in models)
    result = evaluate_models(patients, models, truth, cohort_json, folds=args.folds, seed=seed, draws=args.draws,
                             penalizer=args.truth_penalizer, references=references, held_out=held_out)
    result["voxelwise"], result["voxelwise_highpass"] = infos[VOXELWISE], infos[VOXELWISE_HIGHPASS]
    result["held_out_controls"] = len(held)
    return result


def aggregate(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant): mean and sd of each metric over all folds of all runs, the sd of the per-run
    means, the number of folds, and the feature columns the model used."""
    rows = []
    for (model, variant), group in per_fold.groupby(["model", "variant"], sort=False):
        row = {"model": model, "variant": variant, "n_folds": len(group),
               "features": str(group["features"].iloc[0]) if "features" in group else None}
        for metric in ("harrell_c", "uno_c"):
            values = group[metric].dropna()
            run_means = group.groupby(["cohort_seed", "seed"])[metric].mean()
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            row[f"{metric}_runs_sd"] = float(run_means.std(ddof=1)) if len(run_means) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def raw_results(result: dict, table: pd.DataFrame, command: str) -> dict:
    """Everything the section states, as saved beside it (`<out>.json`) for `--render-only`."""
    runs = [{"cohort_seed": r["cohort_seed"], "seed": r["seed"], "oracle_c_index": r["oracle_c_index"],
             "subjects": r["subjects"], "dae_steps": r["dae"].get("steps"),
             "psnr_brain_db": r["dae"].get("reconstruction_psnr_brain_db"), "timings": r["timings"],
             "brain_age_mae_years": r["baselines"].get("brain-age gap", {}).get("controls_out_of_fold_mae_years"),
             "cosine_hr_per_sd": r["cosine_hazard_ratio"]["per_sd"], "skipped": r["skipped"], "failed": r["failed"],
             "truth": r["truth"], "truth_seconds": r["truth_seconds"], "pipeline_truth_keys": r["pipeline_truth_keys"]}
            for r in result["runs"]]
    truth_summary = summarise({f"{r['cohort_seed']}/{r['seed']}": r["truth"] for r in result["runs"]})
    return {"command": command, "date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "machine": platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "threads": result["threads"],
            "total_seconds": result["total_seconds"], "cohort_seconds": result["cohort_seconds"],
            "healthy": result["healthy"], "healthy_note": result["healthy_note"], "preset": result["preset"],
            "disease": result.get("disease", DEFAULT_DISEASE), "image_deviation_steps": result.get("image_deviation_steps", 0),
            "seeds": result["seeds"], "folds": result["folds"],
            "penalizer": result["penalizer"], "truth_penalizer": result["truth_penalizer"], "draws": result["draws"],
            "patients_per_anatomy": result["patients_per_anatomy"], "runs": runs, "table": table.to_dict("records"),
            "truth_summary": truth_summary,
            "per_fold": result["per_fold"].to_dict("records")}


def render(raw: dict) -> str:
    """The section, from the raw results alone."""
    runs, first = raw["runs"], raw["runs"][0]
    oracle = {r["cohort_seed"]: r["oracle_c_index"] for r in runs}
    subjects = first["subjects"]
    star = ", ".join(f"{v:.3f} (cohort seed {k})" for k, v in oracle.items())
    lines = [
        "## Survival: NDAE scores vs baselines vs oracle (`benchmarks/bench_survival.py`"
        + ("" if raw["preset"] == "tiny" else f", DAE preset `{raw['preset']}`")
        + ("" if raw.get("disease", DEFAULT_DISEASE) == DEFAULT_DISEASE else f", disease setting `{raw['disease']}`")
        + ")", "",
        f"`{raw['command']}` — {raw['date']}, {raw['machine']} CPU, {raw['cores']} cores visible "
        f"(shared with other work), torch threads {raw['threads']}, Python {raw['python']}. "
        f"Total {raw['total_seconds'] / 60:.1f} min (cohort generation {raw['cohort_seconds'] / 60:.1f} min).", "",
        f"Cohort: simulated by `ndae cohort --disease {raw.get('disease', DEFAULT_DISEASE)}` ({len(oracle)} cohort seed(s)) "
        f"from `{raw['healthy']}`{raw.get('healthy_note', '')}; "
        f"{subjects['controls']} controls, {subjects['patients']} patients, {subjects['events']} events. "
        f"DAE preset `{raw['preset']}`, {first['dae_steps']} steps (reconstruction PSNR in brain "
        f"{_fmt(first['psnr_brain_db'])} dB); runs (pipeline seeds) {raw['seeds']}. "
        f"Per-fold table below: `ndae evaluate`'s own {raw['folds']}-fold CV, the same folds for every model within a run; Cox L2 penalty "
        f"{raw['penalizer']:g}.", "",
        f"Oracle C* (Harrell's C of the true risk): {star}.", "",
        *truth_section(raw),
        "Mean ± sd over all folds of all runs; 'runs sd' = sd of the per-run means.", "",
        "| model | variant | Harrell's C | runs sd | Uno's C | runs sd |", "|---|---|---|---|---|---|",
    ]
    for row in raw["table"]:
        lines.append(f"| {row['model']} | {row['variant']} | {_fmt(row['harrell_c_mean'])} ± {_fmt(row['harrell_c_sd'])} | "
                     f"{_fmt(row['harrell_c_runs_sd'])} | {_fmt(row['uno_c_mean'])} ± {_fmt(row['uno_c_sd'])} | "
                     f"{_fmt(row['uno_c_runs_sd'])} |")
    hazard = [r["cosine_hr_per_sd"] for r in runs]
    lines += [
        "", "Models: NDAE = deviation of the DAE's z_sem from the normative model (cosine, Mahalanobis, all "
        "scores); regional normative z = PCNtoolkit-style z-scores of label-map volumes/intensities; voxel-wise normative "
        "z = per-voxel normative model of the MNI-grid images (age, sex, site), mean z per atlas region (high-pass: "
        "the same on each image minus its within-brain Gaussian blur); autoencoder = "
        "conv. AE reconstruction error + latent Mahalanobis; z_sem PCA = no normative model; brain-age gap from "
        "z_sem. The oracle row is a Cox model on the true linear predictor. " + _covariates_text(raw["table"]), "",
        "NDAE cosine, HR per SD of the patients' cosine: "
        + ", ".join(f"{h['hazard_ratio']:.2f} ({h['lower_95']:.2f}–{h['upper_95']:.2f})" for h in hazard) + " (per run).",
        "Brain-age model, controls' out-of-fold MAE (years): " + ", ".join(_fmt(r["brain_age_mae_years"], 1) for r in runs) + ".", "",
        "Per-run time (s): " + "; ".join(
            f"cohort seed {r['cohort_seed']}, seed {r['seed']}: DAE {r['timings']['dae_training_s']:.0f}, encode {r['timings']['encoding_s']:.0f}, "
            f"autoencoder {r['timings']['baseline_autoencoder_s']:.0f}, CV {r['timings']['cross_validation_s']:.0f}, "
            f"total {r['timings']['total_s']:.0f}" for r in runs) + ".", "",
        "Reading: " + reading(raw), "",
    ]
    skipped = {k: v for r in runs for k, v in r["skipped"].items()}
    failed = {k: v for r in runs for k, v in r["failed"].items()}
    if skipped or failed:
        lines += [f"Skipped: {skipped}; failed: {failed}", ""]
    return "\n".join(lines)


def _reference_of(model: str) -> tuple[str, str | None, str | None]:
    """The rows a model's difference columns compare with: covariates alone; the voxel-wise
    baseline of the same variant, and the high-pass voxel-wise baseline of the same variant (none
    for the rows of that baseline itself; the raw and high-pass rows are compared with each other)."""
    variant = WITH if model.split(" | ")[-1] == WITH else ALONE
    family = _voxelwise_family(model)
    voxel = None if family == VOXELWISE else f"{VOXELWISE} | {variant}"
    highpass = None if family == VOXELWISE_HIGHPASS else f"{VOXELWISE_HIGHPASS} | {variant}"
    return f"covariates | {ALONE}", voxel, highpass


def truth_section(raw: dict) -> list[str]:
    """The truth-aware metrics over all runs, and their computed reading."""
    rows = raw.get("truth_summary")
    if not rows:
        return ["(This run predates the truth-aware metrics: no expected C, risk concordance or paired CIs.)", ""]
    first = raw["runs"][0]["truth"]
    patients = sorted({r["truth"]["patients"] for r in raw["runs"]})
    anatomies = sorted({r["truth"]["source_anatomies"] for r in raw["runs"]})
    voxel = first.get("voxelwise", {})
    highpass = first.get("voxelwise_highpass")
    lines = [
        "### Truth-aware metrics", "",
        f"Per model, mean over {len(raw['runs'])} run(s) ({len({r['cohort_seed'] for r in raw['runs']})} cohort seed(s)); "
        f"{'/'.join(map(str, patients))} patients from {'/'.join(map(str, anatomies))} source anatomies "
        f"({raw.get('patients_per_anatomy')} per patient anatomy). All computed by `benchmarks/truth_eval.py` from each "
        f"run's patients.csv with `ndae.evaluation.truth_metrics`: {first['folds']}-fold CV grouped by source anatomy "
        f"(the same folds for every model of a run), ridge Cox (penalty {raw.get('truth_penalizer')}) refitted per fold; "
        f"expected C = mean CV Harrell's C over {first['draws']} fresh survival draws from the cohort's stored survival "
        "model (every model on the same draws and folds); risk concordance = concordance of the out-of-fold risk with the "
        "true linear predictor; ρ severity and AUROC only for single scores. Δ = paired difference in expected C over "
        "the same draws, mean over runs with its 95 % t-interval over runs (cohort seeds). Voxel-wise baseline: "
        f"`ndae.baselines.voxelwise` fitted on {voxel.get('training_controls')} training controls "
        f"({voxel.get('voxels_modelled')} voxels, stride {voxel.get('stride')}); its held-out controls for the AUROC: "
        f"{voxel.get('held_out')}" + ("" if first.get("held_out_controls") else
                                      "; NDAE scores have no AUROC here: the run held no controls out") + ". "
        + (f"High-pass voxel-wise baseline: the same, on each image minus its within-brain Gaussian blur (σ "
           f"{highpass.get('highpass_sigma'):g} voxels), so that a gain that is only spatial filtering shows."
           if highpass and highpass.get("highpass_sigma") else
           "(These runs predate the high-pass voxel-wise baseline: its columns show –.)"), "",
        *table_lines(rows, _reference_of, _label), "",
        "Reading (computed): " + truth_reading(
            [r for r in rows if r["model"].endswith(ALONE)],
            {f"covariates | {ALONE}": "covariates alone", f"{VOXELWISE} | {ALONE}": "the voxel-wise baseline alone",
             f"{VOXELWISE_HIGHPASS} | {ALONE}": "the high-pass voxel-wise baseline alone"}, _label)
        + " " + truth_reading([r for r in rows if r["model"].endswith(WITH)],
                              {f"covariates | {ALONE}": "covariates alone",
                               f"{VOXELWISE} | {WITH}": "the voxel-wise baseline with covariates",
                               f"{VOXELWISE_HIGHPASS} | {WITH}": "the high-pass voxel-wise baseline with covariates"},
                              _label), "",
    ]
    refused = {r["model"]: r["refused"] for r in rows if r.get("refused")}
    if refused:
        lines += [f"Refused by the CV: {refused}", ""]
    return lines


def _label(model: str) -> str:
    name, _, variant = model.rpartition(" | ")
    return f"{name} ({variant})" if name else model


def _covariates_text(table: list[dict]) -> str:
    """The covariate columns as the runs used them (from the per-fold `features`), not as described."""
    rows = {(row["model"], row["variant"]): row.get("features") for row in table}
    alone = rows.get(("covariates", "alone"))
    if not alone:
        return "(The runs' feature columns were not recorded.)"
    added = sorted({f for (model, variant), features in rows.items() if variant == "with covariates" and features
                    for f in features.split(", ")} & set(alone.split(", ")))
    return (f"Covariates-only model: {alone}; 'with covariates' adds {', '.join(added) if added else 'none of them'}.")


def reading(raw: dict) -> str:
    """Computed from the numbers: the fold spread, and each model against the covariates-only model as a
    paired difference with its 95 % CI (pairs: the same fold of the same run)."""
    subjects, table = raw["runs"][0]["subjects"], raw["table"]
    fold_sd = float(np.nanmedian([row["harrell_c_sd"] for row in table]))
    n_folds = int(np.median([row["n_folds"] for row in table]))
    text = (f"folds hold ~{subjects['patients'] / raw['folds']:.0f} patients, and one fold's Harrell's C has sd "
            f"{fold_sd:.2f} (median over rows). ")
    per_fold = pd.DataFrame(raw.get("per_fold") or [])
    if per_fold.empty:
        bound = 1.96 * np.sqrt(2) * fold_sd / np.sqrt(n_folds)
        return text + (f"The per-fold rows of this run were not kept, so no paired difference can be computed; unpaired, "
                       f"two rows' means over {n_folds} folds would need to differ by more than ±{bound:.3f} "
                       "(1.96·√2·sd/√folds) to be told apart.")
    per_fold = per_fold.assign(pair=per_fold["cohort_seed"].astype(str) + "/" + per_fold["seed"].astype(str)
                               + "/" + per_fold["fold"].astype(str))
    base = {"model": "covariates", "variant": "alone"}
    stated, measured = [], []
    for row in table:
        if row["model"] == "covariates" and row["variant"] == "alone":
            continue
        name = f"{row['model']} ({row['variant']})"
        difference = paired_difference(select(per_fold, {"model": row["model"], "variant": row["variant"]}, ["pair"],
                                              "harrell_c"), select(per_fold, base, ["pair"], "harrell_c")).stated()
        if np.isfinite(difference["d"]):
            measured.append(difference)
            stated.append(compare(name, "covariates alone", difference))
    resolution = half_width(measured)
    if stated:
        text += "Against the covariates-only model, Harrell's C paired over the same folds: " + "; ".join(stated) + ". "
    if np.isfinite(resolution):
        text += f"At this sample size these paired differences resolve about ±{resolution:.3f} (median half-width of their 95 % CIs)."
    return text.strip()


def write_report(raw: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path.with_suffix(".json"), json.dumps(jsonable(raw), indent=2, default=str) + "\n")
    atomic_write_text(path, render(raw))


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", default=None, help="healthy manifest for the cohort (default: the IXI demo)")
    parser.add_argument("--prepared", default=None, help="instead of the demo: a prepared-subject cache of IXI "
                        "scans (e.g. the demo build's /tmp/ndae-demo-build), with --demographics")
    parser.add_argument("--demographics", default=None, help="subject, age, sex CSV for --prepared")
    parser.add_argument("--cohort", default=None, help="use this existing cohort folder (manifest.csv, truth.csv)")
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients-per-anatomy", type=int, default=4,
                        help="patients drawn per patient anatomy (4 on the 121 shipped scans: 240 patients)")
    parser.add_argument("--max-subjects", type=int, default=None, help="smoke runs: a cohort from a subset of the scans")
    parser.add_argument("--draws", type=int, default=50, help="fresh survival draws for the expected C")
    parser.add_argument("--truth-penalizer", type=float, default=0.1, help="ridge penalty of the truth-aware Cox fits")
    parser.add_argument("--disease", default=DEFAULT_DISEASE, help="the cohorts' disease setting (`ndae cohort --disease`)")
    parser.add_argument("--share-dae", action="store_true",
                        help="reuse the DAE of a finished run on a cohort with byte-identical controls (the same "
                        "cohort seed under another disease setting) instead of training it again")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="keep finished `ndae evaluate` runs in --work made with the same options (resuming)")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="cohort generator worker processes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pipeline seeds (DAE, AE, folds)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200, help="DAE training steps")
    parser.add_argument("--inversion-steps", type=int, default=10)
    parser.add_argument("--image-deviation-steps", type=int, default=0,
                        help="also the image-space NDAE features with this many DDIM steps (`ndae evaluate`; 0: off)")
    parser.add_argument("--autoencoder-steps", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/ndae-bench-survival")
    parser.add_argument("--out", default=str(RESULTS / "survival.md"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite --out from the raw results saved beside it (<out>.json); no runs")
    args = parser.parse_args(argv)
    if args.render_only:
        saved = Path(args.out).with_suffix(".json")
        if not saved.exists():
            raise SystemExit(f"--render-only: no raw results at {saved}; run the benchmark first")
        atomic_write_text(Path(args.out), render(json.loads(saved.read_text())))
        print(Path(args.out).read_text())
        return 0
    result = run(args)
    result.update(preset=args.preset, disease=args.disease, image_deviation_steps=args.image_deviation_steps, seeds=args.seeds, folds=args.folds, threads=args.threads, draws=args.draws,
                  truth_penalizer=args.truth_penalizer, patients_per_anatomy=args.patients_per_anatomy,
                  healthy=getattr(args, "healthy_used", args.cohort or args.healthy),
                  healthy_note=(f" (the IXI scans of the demo build's prepared cache `{args.prepared}`, written as the "
                                "demo is)" if args.prepared and not args.cohort else ""))
    table = aggregate(result["per_fold"])
    command = "python -m benchmarks.bench_survival " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    write_report(raw_results(result, table, command.strip()), Path(args.out))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.work) / "bench_survival.json", json.dumps(
        {k: v for k, v in result.items() if k != "per_fold"}, indent=2, default=str))
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
