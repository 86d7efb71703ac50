"""The centralised evaluation pipeline behind `ndae evaluate`.

Steps (files under OUT follow the run-directory contract in README.md, "Data contracts"):
1. check the manifest (controls to train on, patients with time/event), read the optional
   truth file (`subject, risk`; e.g. the cohort generator's truth.csv), hold out a fraction of the
   controls per site (`held_out`): OUT/train_manifest.csv is the manifest without them;
2. train the DAE on the training controls (`ndae.model.run.train_run`) and encode everyone
   (`encode_run` → latents.npz);
3. fit the normative model on the training controls' z_sem (normative/) and score every subject
   (deviations.csv: cosine, z summaries, Mahalanobis);
4. compute the baselines (`ndae.baselines`, each fitted on the training controls) — a baseline the data cannot support (e.g. no
   MUSE label maps) is skipped and the reason reported;
5. cross-validate one Cox model per feature set on the patients, every model on the SAME folds,
   grouped by source anatomy (truth.csv `source_subject`), each model alone and with exactly the
   covariates-only model's covariates; Harrell's C and Uno's C (mean ± sd over folds); with a
   truth file, the oracle C* of the true risk and a Cox model on it; then the truth-aware metrics
   (`truth_aware`: expected C over fresh survival draws, risk concordance, severity ρ, AUROC vs
   the held-out controls, paired differences to the covariates-only model and the best baseline)
   and the held-out controls' calibration;
6. HR per unit of the cosine score (as the NDAE paper reports it) and per SD, KM by cosine
   tertile, a C-index bar chart, report.md and evaluation.json.

This module runs the steps in order; the steps' own work is elsewhere: the inputs
(`ndae.evaluation.inputs`), the baselines' features (`baseline_features`), the Cox comparison and
the cosine's hazard ratio (`comparison`), the report and figure (`report`).
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.evaluation.baseline_features import baseline_features
from ndae.evaluation.comparison import cosine_hazard_ratio, cross_validate_models, model_feature_sets, summarise
from ndae.evaluation.grouped_cv import subject_groups
from ndae.evaluation.held_out import (calibration_pair, check_training_controls, held_out_controls,
                                      write_training_manifest)
from ndae.evaluation.inputs import check_manifest, cohort_survival_model, read_truth, read_truth_table
from ndae.evaluation.truth_aware import row_key, truth_aware_metrics
from ndae.io import atomic_write_json, atomic_write_text, finite_or_null

NDAE_SCORES = ("cosine", "mean_abs_z", "max_abs_z", "mahalanobis")  # "NDAE deviation scores"
LATENT_SCORES = (*NDAE_SCORES, "cosine_centred")  # every z_sem score in patients.csv


@dataclass
class EvaluationOptions:
    config: str = "tiny"  # DAE preset
    steps: int | None = None  # DAE training steps (default: the preset's)
    inversion_steps: int | None = None  # DDIM steps for x_T and the reconstruction figure
    folds: int = 5
    seed: int = 0
    penalizer: float = 0.1  # lifelines L2 penalty, the same for every model
    pca_components: int = 5
    autoencoder_steps: int = 300
    autoencoder_latent: int = 16
    cache_dir: str | None = None  # prepared-subject cache (default: the manifest's, as `ndae prepare`)
    device: str | None = None
    progress: bool = True
    min_controls: int = 8
    held_out_controls: float = 0.25  # fraction of the controls kept out of every fit (per site, seeded)
    draws: int = 50  # fresh survival draws for expected C
    bootstrap: int = 200  # source-anatomy resamples for the observed-C paired difference (no survival model)
    # > 0: also the image-space NDAE features (ndae.deviation.image_features) with this many DDIM
    # steps for the inversion and each decode; 0: off (they cost 3 × steps U-Net passes a subject)
    image_deviation_steps: int = 0
    # the regional normative deviations from the diffusion prior (ndae.deviation.prior_residuals):
    # 6 U-Net passes per subject and level (3 levels × 2 draws × own, normative, swapped z_sem)
    prior_residuals: bool = True
    # continue a DAE checkpoint already in OUT/dae (benchmarks that share one trained DAE between
    # cohorts with byte-identical controls); at its full step count nothing is trained again
    resume_dae: bool = False
    # z_sem and the prior residuals computed elsewhere (`ndae.evaluation.external_features`, a GPU
    # run): no DAE is trained here, everything else is as always
    features_dir: str | None = None


def standardised_regions(raw: pd.DataFrame, covariates: pd.DataFrame, controls: np.ndarray, prefix: str,
                         z_prefix: str, model_dir: Path):
    """z-scores of region features (columns `prefix<region>` of `raw`, rows matched to `covariates`)
    from a normative model (age, sex, site) of the training controls' values: `(names, z)`."""
    from ndae.normative.model import NormativeModel, OutOfRangeWarning

    raw = raw.set_index("subject").loc[covariates["subject"].astype(str)].reset_index()
    regions = [c for c in raw.columns if c.startswith(prefix)]
    values = raw[regions].to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        model = NormativeModel().fit(covariates[controls].reset_index(drop=True), values[controls], regions)
        z = model.z_scores(covariates.reset_index(drop=True), values)
    model.save(model_dir)
    return [f"{z_prefix}{c[len(prefix):]}" for c in regions], z


def image_space_scores(out: Path, manifest_path: Path, cache_dir: Path, normative, covariates: pd.DataFrame,
                       controls: np.ndarray, held_out: np.ndarray, options: EvaluationOptions):
    """The image-space NDAE features of every subject (rows of `covariates`), standardised by a
    normative model of the region means fitted on the training controls: a frame `subject` +
    `z_image_<region>` + `image_mean_abs_z`, its models, and the held-out controls' calibration."""
    from ndae.deviation.image_features import PREFIX, image_deviation_features

    raw = image_deviation_features(out, manifest_path, cache_dir, normative, options.image_deviation_steps,
                                   device=options.device)
    names, z = standardised_regions(raw, covariates, controls, PREFIX, "z_image_", out / "normative_image")
    frame = pd.DataFrame(z, columns=names)
    frame.insert(0, "subject", covariates["subject"].astype(str).to_numpy())
    frame["image_mean_abs_z"] = np.abs(z).mean(axis=1)
    # every subject's (held-out controls too), as deviations.csv holds the latent scores
    atomic_write_text(out / "image_deviations.csv", frame.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    features = {"NDAE image-space deviation": names, "NDAE image mean abs z": ["image_mean_abs_z"]}
    calibration = {"NDAE image-space z": calibration_pair(z[controls], z[held_out], controls.sum(), held_out.sum())}
    return frame, features, calibration


PRIOR_MODELS = {"normative": "NDAE prior residual", "own": "NDAE prior residual (own z_sem)"}


def prior_residual_scores(out: Path, manifest_path: Path, cache_dir: Path, normative, covariates: pd.DataFrame,
                          controls: np.ndarray, held_out: np.ndarray, options: EvaluationOptions,
                          computed: tuple[pd.DataFrame, dict] | None = None):
    """The regional normative deviations from the diffusion prior (`ndae.deviation.prior_residuals`)
    of every subject, each region's residual z-scored against the training controls' (a normative
    model of its own, `normative_prior/` and `normative_prior_own/`): a frame `subject` +
    `z_prior_<region>` + `z_prior_own_<region>`, its two models, the calibration and the swap test.
    The raw region means (before the z-scores) are kept in `prior_residuals.csv`; `computed`: the
    raw region means and swap test of a run elsewhere (`--features`), standardised here the same way."""
    from ndae.deviation.prior_residuals import NORMATIVE, OWN, PREFIX, prior_residual_features, region_columns

    raw, swap = computed or prior_residual_features(out, manifest_path, cache_dir, normative, device=options.device,
                                                    subjects=covariates["subject"])
    atomic_write_text(out / "prior_residuals.csv", raw.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    frame = pd.DataFrame({"subject": covariates["subject"].astype(str).to_numpy()})
    features, calibration = {}, {}
    for kind, folder in ((NORMATIVE, "normative_prior"), (OWN, "normative_prior_own")):
        names, z = standardised_regions(raw[["subject", *region_columns(raw, kind)]], covariates, controls,
                                        PREFIX[kind], f"z_{PREFIX[kind]}", out / folder)
        frame = pd.concat([frame, pd.DataFrame(z, columns=names)], axis=1)
        features[PRIOR_MODELS[kind]] = names
        calibration[f"{PRIOR_MODELS[kind]} z"] = calibration_pair(z[controls], z[held_out], controls.sum(), held_out.sum())
    atomic_write_text(out / "prior_deviations.csv", frame.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    return frame, features, calibration, swap


def _log(options: EvaluationOptions, message: str) -> None:
    if options.progress:
        print(f"[evaluate] {message}", flush=True)


# -- the pipeline: one function per step, sharing one `EvaluationRun` -----------------------------
@dataclass
class EvaluationRun:
    """What the steps share: the checked inputs (step 1), then the subjects' rows, their z_sem and
    what each step adds. `timings` collects each step's seconds."""

    manifest_path: Path
    out: Path
    truth_path: Path | None
    options: EvaluationOptions
    manifest: pd.DataFrame
    truth: pd.DataFrame | None  # the patients' true risk (`true_risk`), with --truth
    cohort: dict | None  # cohort.json's survival model beside the truth (expected C)
    expected_skip: str | None  # why there is no expected C, where known from the inputs
    held_out_subjects: list[str]
    cache_dir: Path
    external: Any = None  # `ExternalFeatures` with --features
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    # step 2 on: every encoded subject, in latents.npz order
    subjects: list[str] = field(default_factory=list)
    z_sem: np.ndarray | None = None
    rows: pd.DataFrame | None = None  # their manifest rows
    covariates: pd.DataFrame | None = None  # subject, site, age, sex
    held_out: np.ndarray | None = None  # the held-out controls
    controls: np.ndarray | None = None  # the training controls

    def timed(self, key: str, t0: float) -> None:
        self.timings[key] = time.perf_counter() - t0


def check_inputs(manifest_path: str | Path, out_dir: str | Path, truth_path: str | Path | None,
                 options: EvaluationOptions) -> EvaluationRun:
    """Step 1 up to the first write: the manifest, the truth, the options, the held-out controls,
    the cache and any --features folder, checked before anything is written."""
    from ndae.data.cache import default_cache_dir

    manifest_path = Path(manifest_path)
    manifest = check_manifest(manifest_path, options.min_controls, options.folds)
    patients_all = manifest[manifest["group"] == "als"]
    truth = read_truth(truth_path, patients_all["subject"]) if truth_path else None
    if options.draws < 1:
        raise NdaeError(f"--draws must be at least 1, got {options.draws}")
    if isinstance(options.image_deviation_steps, bool) or int(options.image_deviation_steps) < 0:
        raise NdaeError(f"--image-deviation-steps must be 0 (off) or a positive number of DDIM steps, "
                        f"got {options.image_deviation_steps}")
    cohort, expected_skip = cohort_survival_model(truth_path) if truth_path else (None, None)
    held_out_subjects = held_out_controls(manifest, options.held_out_controls, options.seed)
    check_training_controls(manifest_path, int((manifest["group"] == "control").sum()), held_out_subjects,
                            options.held_out_controls, options.min_controls)
    # The manifest's one cache (where `ndae prepare` wrote) unless told otherwise.
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir(manifest_path)
    external = None
    if options.features_dir:
        from ndae.evaluation.external_features import read_external_features

        if options.image_deviation_steps:
            raise NdaeError("--image-deviation-steps needs the DAE itself; it cannot be combined with --features")
        external = read_external_features(options.features_dir, manifest_path, manifest, held_out_subjects,
                                          options.held_out_controls, options.seed)
        options.config = str(external.dae.get("preset") or options.config)  # the DAE that made them, in the report
    return EvaluationRun(manifest_path, Path(out_dir), Path(truth_path) if truth_path else None, options, manifest,
                         truth, cohort, expected_skip, held_out_subjects, cache_dir, external)


def latent_features(run: EvaluationRun, train_manifest: Path) -> dict:
    """Step 2: the DAE on the training controls, then z_sem of everyone (latents.npz), or both
    from --features; sets the run's subjects, rows and control masks; returns the DAE summary."""
    from ndae.normative.files import read_latents

    options, out = run.options, run.out
    if run.external is not None:
        from ndae.io import atomic_save_npz

        _log(options, f"z_sem and prior residuals from {options.features_dir} (no DAE trained here)")
        latents_path = out / "latents.npz"
        atomic_save_npz(latents_path, subject=np.asarray(run.external.subjects),
                        z_sem=run.external.z_sem.astype(np.float32))
        dae_summary = {**run.external.dae, "features_from": run.external.source}
    else:
        from ndae.model.run import encode_run, train_run

        _log(options, f"training the DAE on the controls ({len(run.held_out_subjects)} held out)")
        t0 = time.perf_counter()
        dae_summary = train_run(train_manifest, out, options.config, steps=options.steps, seed=options.seed,
                                resume=options.resume_dae,
                                cache_dir=run.cache_dir, device=options.device, progress=options.progress,
                                figure_steps=options.inversion_steps)
        run.timed("dae_training_s", t0)
        _log(options, "encoding every subject")
        t0 = time.perf_counter()
        latents_path = encode_run(out, run.manifest_path, cache_dir=run.cache_dir, steps=options.inversion_steps,
                                  device=options.device, progress=options.progress)
        run.timed("encoding_s", t0)
    run.subjects, run.z_sem = read_latents(latents_path)
    rows = run.manifest.set_index(run.manifest["subject"].astype(str)).loc[run.subjects].reset_index(drop=True)
    rows["subject"] = rows["subject"].astype(str)
    run.rows = rows
    run.covariates = rows[["subject", "site", "age", "sex"]].copy()
    run.held_out = rows["subject"].isin(set(run.held_out_subjects)).to_numpy()
    run.controls = (rows["group"] == "control").to_numpy() & ~run.held_out
    return dae_summary


@dataclass
class NormativeScores:
    """Step 3's results: the latent normative model, deviations.csv's table, the calibration on
    the held-out controls and the normative figures."""

    model: Any
    deviations: pd.DataFrame
    calibration: dict
    figures: Any


def latent_deviations(run: EvaluationRun) -> NormativeScores:
    """Step 3: the normative model of the training controls' z_sem and every subject's NDAE
    deviation scores (normative/, deviations.csv, the normative figures)."""
    from ndae.deviation.scores import deviation_table
    from ndae.normative.model import NormativeModel, OutOfRangeWarning
    from ndae.reporting.normative_figures import normative_figures

    _log(run.options, "normative model and deviation scores")
    covariates, controls, held_out, z_sem = run.covariates, run.controls, run.held_out, run.z_sem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        normative = NormativeModel().fit(covariates[controls].reset_index(drop=True), z_sem[controls],
                                         [f"z_sem_{k}" for k in range(z_sem.shape[1])])
        deviations = deviation_table(run.subjects, covariates, z_sem, normative)
        latent_z = normative.z_scores(covariates.reset_index(drop=True), z_sem)
    calibration = {"NDAE latent z (z_sem)": calibration_pair(latent_z[controls], latent_z[held_out],
                                                             controls.sum(), held_out.sum())}
    normative.save(run.out / "normative")
    atomic_write_text(run.out / "deviations.csv",
                      deviations.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    figures = normative_figures(run.out, normative, covariates, run.rows["group"], z_sem, latent_z,
                                deviations.assign(subject=deviations["subject"].astype(str)), controls, held_out)
    return NormativeScores(normative, deviations, calibration, figures)


def image_deviations(run: EvaluationRun, normative, calibration: dict):
    """Step 3b: the image-space NDAE features (with --image-deviation-steps) and the regional
    deviations from the diffusion prior; adds their calibration to `calibration`. Returns their
    frames, their models' feature columns and the prior's swap test (None without it)."""
    options = run.options
    frames, features = [], {}
    args = (run.out, run.manifest_path, run.cache_dir, normative, run.covariates, run.controls, run.held_out, options)
    if options.image_deviation_steps:
        _log(options, f"image-space deviations ({options.image_deviation_steps} DDIM steps)")
        t0 = time.perf_counter()
        frame, features, image_calibration = image_space_scores(*args)
        frames.append(frame)
        calibration.update(image_calibration)
        run.timed("image_deviations_s", t0)
    prior_swap = None
    external = run.external
    computed = None if external is None or external.prior_residuals is None else (external.prior_residuals,
                                                                                  external.prior_swap or {})
    if options.prior_residuals and (external is None or computed is not None):
        _log(options, "regional deviations from the diffusion prior")
        t0 = time.perf_counter()
        frame, prior_features, prior_calibration, prior_swap = prior_residual_scores(*args, computed)
        frames.append(frame)
        features.update(prior_features)
        calibration.update(prior_calibration)
        run.timed("prior_residuals_s", t0)
    return frames, features, prior_swap


@dataclass
class FeatureTables:
    """Step 4's results: each model's feature columns, the frames (`subject` + features) that
    join the patients' table, every subject's scores (for the AUROC) and the baselines."""

    features: dict[str, list[str]]
    frames: list[pd.DataFrame]
    all_scores: pd.DataFrame
    baselines: Any  # `BaselineFeatures`


def model_features(run: EvaluationRun, deviations: pd.DataFrame, image_frames: list[pd.DataFrame],
                   image_features: dict[str, list[str]], calibration: dict) -> FeatureTables:
    """Step 4: the clinical covariates, the NDAE scores and the baselines (each fitted on the
    training controls; one the data cannot support is skipped with its reason)."""
    from ndae.baselines import covariate_features

    options = run.options
    _log(options, "baselines")
    clinical, clinical_columns = covariate_features(run.rows[run.rows["group"] == "als"].reset_index(drop=True),
                                                    min_site_size=options.folds)
    features: dict[str, list[str]] = {"covariates": clinical_columns, "NDAE cosine": ["cosine"],
                                      "NDAE centred cosine": ["cosine_centred"],
                                      "NDAE Mahalanobis": ["mahalanobis"], "NDAE deviation scores": list(NDAE_SCORES)}
    baselines = baseline_features(run.subjects, run.z_sem, run.rows, run.covariates, run.controls, run.manifest_path,
                                  run.cache_dir, run.out, options, held_out=run.held_out)
    calibration.update(baselines.calibration)
    features.update(image_features)
    features.update(baselines.features)
    run.timings.update(baselines.timings)
    # age and sex_female are already in the patients' table
    frames = [clinical.drop(columns=["age", "sex_female"]), *image_frames, *baselines.frames]
    # every subject's scores (patients and held-out controls): the AUROC needs both
    all_scores = deviations[["subject", *LATENT_SCORES]].assign(subject=lambda d: d["subject"].astype(str))
    for frame in [*image_frames, *baselines.frames]:
        all_scores = all_scores.merge(frame.assign(subject=frame["subject"].astype(str)), on="subject", how="left")
    return FeatureTables(features, frames, all_scores, baselines)


def patients_table(run: EvaluationRun, deviations: pd.DataFrame, tables: FeatureTables):
    """Step 5a: one row per patient with every model's features (and the true risk): patients.csv.
    Returns the table, the patient counts and the oracle C* (None without a truth)."""
    from ndae.survival.analysis import patient_table
    from ndae.survival.oracle import oracle_c_index

    table, counts = patient_table(deviations, run.manifest, list(LATENT_SCORES), source=str(run.manifest_path))
    for frame in tables.frames:
        table = table.merge(frame, on="subject", how="left")
    oracle = None
    if run.truth is not None:
        table = table.merge(run.truth, on="subject", how="left")
        tables.features["oracle (true risk)"] = ["true_risk"]
        oracle = oracle_c_index(table["time"], table["event"], table["true_risk"])
    feature_columns = sorted({c for columns in tables.features.values() for c in columns})
    bad = [c for c in feature_columns if not np.isfinite(table[c].to_numpy(float)).all()]
    if bad:
        raise NdaeError(f"internal: non-finite patient features {bad}")
    atomic_write_text(run.out / "patients.csv", table.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    return table, counts, oracle


@dataclass
class Comparison:
    """Step 5b's results: the Cox table per fold and summarised, the models' rows with their
    truth-aware metrics, the folds and the groups they keep together."""

    per_fold: pd.DataFrame
    summary: pd.DataFrame
    failures: dict
    folds: list
    groups: np.ndarray
    truth_rows: pd.DataFrame | None
    truthful: dict
    models: list[dict]


def compare_models(run: EvaluationRun, table: pd.DataFrame, tables: FeatureTables) -> Comparison:
    """Step 5b: one cross-validated Cox model per feature set on the SAME grouped folds, each alone
    and with exactly the covariates-only model's covariates, then the truth-aware metrics."""
    options = run.options
    _log(options, "cross-validated Cox models")
    t0 = time.perf_counter()
    sets = model_feature_sets(table, tables.features, tables.features["covariates"])
    truth_rows = read_truth_table(run.truth_path, table["subject"]) if run.truth is not None else None
    groups = subject_groups(table["subject"], truth_rows)
    per_fold, failures, folds = cross_validate_models(table, sets, options, groups=groups)
    run.timed("cross_validation_s", t0)
    summary = summarise(per_fold)

    _log(options, "truth-aware metrics" + (f" ({options.draws} survival draws)" if run.cohort is not None else ""))
    t0 = time.perf_counter()
    feature_columns = sorted({c for columns in tables.features.values() for c in columns})
    score_columns = [c for c in feature_columns if c in tables.all_scores.columns]
    scored = tables.all_scores[tables.all_scores["subject"].isin(set(table["subject"]) | set(run.held_out_subjects))]
    scored = scored.reset_index(drop=True)
    truthful = truth_aware_metrics(table, sets, summary, folds=[np.asarray(f) for f in folds], groups=groups,
                                   truth=truth_rows, cohort=run.cohort, skip_reason=run.expected_skip,
                                   scores=scored[["subject", *score_columns]],
                                   is_patient=scored["subject"].isin(set(table["subject"])).to_numpy(), options=options)
    run.timed("truth_aware_s", t0)
    models = summary.to_dict(orient="records")
    for model in models:
        model.update(truthful["per_model"].get(row_key(model["model"], model["variant"]), {}))
    atomic_write_text(run.out / "survival" / "cv_per_fold.csv", per_fold.to_csv(index=False, lineterminator="\n"))
    return Comparison(per_fold, summary, failures, folds, groups, truth_rows, truthful, models)


def evaluate(manifest_path: str | Path, out_dir: str | Path, truth_path: str | Path | None = None,
             options: EvaluationOptions | None = None) -> dict[str, Any]:
    """Run everything; write OUT/report.md, OUT/evaluation.json and the PNGs; return the JSON dict."""
    from ndae.evaluation.report import c_index_figure, write_report
    from ndae.survival.kaplan_meier import kaplan_meier_by_tertile

    run = check_inputs(manifest_path, out_dir, truth_path, options or EvaluationOptions())
    options, out = run.options, run.out
    out.mkdir(parents=True, exist_ok=True)
    train_manifest = write_training_manifest(run.manifest, run.held_out_subjects, out / "train_manifest.csv")
    dae_summary = latent_features(run, train_manifest)
    normative = latent_deviations(run)
    calibration = normative.calibration
    image_frames, image_features, prior_swap = image_deviations(run, normative.model, calibration)
    tables = model_features(run, normative.deviations, image_frames, image_features, calibration)
    table, counts, oracle = patients_table(run, normative.deviations, tables)
    comparison = compare_models(run, table, tables)

    # 6. the cosine's hazard ratio, KM by its tertile, the C-index figure, the report
    hazard = cosine_hazard_ratio(table, save_to=out / "survival")
    km = kaplan_meier_by_tertile(table, "cosine", path=out / "km_cosine.png",
                                 title="Kaplan–Meier by tertile of the NDAE cosine score",
                                 split_on="the NDAE cosine score alone (no covariates)")
    c_index_figure(comparison.summary, oracle, out / "c_index.png")
    run.timings["total_s"] = time.perf_counter() - run.started
    truthful, truth_rows, baselines = comparison.truthful, comparison.truth_rows, tables.baselines
    controls, held_out = run.controls, run.held_out
    result = {
        "manifest": str(run.manifest_path.resolve()),
        "truth": str(Path(truth_path).resolve()) if truth_path else None,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "options": asdict(options),
        "subjects": {"controls": int(controls.sum()), "held_out_controls": int(held_out.sum()), "patients": int(len(table)), "events": int(table["event"].sum()),
                     **{k: v for k, v in counts.items() if k != "patients_without_deviations"}},
        "dae": dae_summary,
        "oracle_c_index": oracle,
        "models": comparison.models,
        "expected_c": truthful["expected_c"],
        "best_baseline": truthful["best_baseline"],
        "difference_basis": truthful["difference_basis"],
        "score_metrics": truthful["score_metrics"],
        "held_out_controls": {"fraction": options.held_out_controls, "seed": options.seed,
                              "subjects": run.held_out_subjects, "training_manifest": str(train_manifest)},
        "normative_fits": {"NDAE latent normative model": [s for s, c in zip(run.subjects, controls) if c],
                           **baselines.fitted_on},
        "calibration": calibration,
        "groups": {"column": "source_subject" if truth_rows is not None and "source_subject" in truth_rows.columns
                   else None, "count": int(len(set(comparison.groups)))},
        "failed_models": comparison.failures,
        "skipped_baselines": baselines.skipped,
        "baselines": baselines.info,
        "cosine_hazard_ratio": hazard,
        "prior_residuals": None if prior_swap is None else {**prior_swap, "models": list(PRIOR_MODELS.values())},
        "kaplan_meier_cosine": km.to_json(),
        "normative_figures": normative.figures,
        "folds": [list(map(int, f)) for f in comparison.folds],
        "timings": run.timings,
    }
    result = finite_or_null(result)
    atomic_write_json(out / "evaluation.json", result)
    write_report(result, out / "report.md")
    _log(options, f"done in {run.timings['total_s']:.0f} s: {out / 'report.md'}")
    return result
