"""The centralised evaluation pipeline behind `ndae evaluate`.

Steps (files under OUT follow the run-directory contract of docs/DESIGN):
1. check the manifest (controls to train on, patients with time/event), read the optional
   truth file (`subject, risk`; e.g. the cohort generator's truth.csv);
2. train the DAE on the controls (`ndae.model.run.train_run`) and encode everyone
   (`encode_run` → latents.npz);
3. fit the normative model on the controls' z_sem (normative/) and score every subject
   (deviations.csv: cosine, z summaries, Mahalanobis);
4. compute the five baselines (`ndae.baselines`) — a baseline the data cannot support (e.g. no
   MUSE label maps) is skipped and the reason reported;
5. cross-validate one Cox model per feature set on the patients, every model on the SAME folds
   (`cross_validate_cox` with one seed on one table), each model alone and with the clinical
   covariates; Harrell's C and Uno's C (mean ± sd over folds); with a truth file, the oracle
   C* of the true risk and a Cox model on it;
6. HR per unit of the cosine score (as the NDAE paper reports it) and per SD, KM by cosine
   tertile, a C-index bar chart, report.md and evaluation.json.
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.io import atomic_write_json, atomic_write_text, finite_or_null

NDAE_SCORES = ("cosine", "mean_abs_z", "max_abs_z", "mahalanobis")


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


def _log(options: EvaluationOptions, message: str) -> None:
    if options.progress:
        print(f"[evaluate] {message}", flush=True)


# -- inputs -----------------------------------------------------------------------------------
def check_manifest(manifest_path: str | Path, min_controls: int = 8, folds: int = 5) -> pd.DataFrame:
    """The validated manifest; clear errors for what evaluation cannot do without."""
    from ndae.data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    groups = manifest["group"].astype(str)
    n_controls, patients = int((groups == "control").sum()), manifest[groups == "als"]
    if n_controls == 0:
        raise NdaeError(f"{manifest_path}: no controls (no row with group == 'control'): the DAE and the "
                        "normative model are trained on healthy controls only")
    if n_controls < min_controls:
        raise NdaeError(f"{manifest_path}: {n_controls} control(s); evaluation needs at least {min_controls} to "
                        "fit the normative models")
    if patients.empty:
        raise NdaeError(f"{manifest_path}: no patients (no row with group == 'als'): there is no survival to evaluate")
    for column in ("time", "event"):
        if column not in manifest.columns:
            raise NdaeError(f"{manifest_path}: missing column {column!r}, needed for the patients' survival")
    events = int(patients["event"].astype(int).sum())
    censored = len(patients) - events
    if min(events, censored) < folds:
        raise NdaeError(f"{manifest_path}: {len(patients)} patients with {events} events and {censored} censored; "
                        f"{folds}-fold cross-validation needs at least {folds} of each (lower --folds)")
    return manifest


def read_truth(truth_path: str | Path, patients: pd.Series) -> pd.DataFrame:
    """`subject, risk` for the patients, from a truth CSV (any extra columns are ignored)."""
    path = Path(truth_path)
    if not path.exists():
        raise NdaeError(f"{path}: truth file does not exist")
    truth = pd.read_csv(path, dtype={"subject": str})
    for column in ("subject", "risk"):
        if column not in truth.columns:
            raise NdaeError(f"{path}: missing column {column!r} (the true linear predictor per patient)")
    truth = truth[["subject", "risk"]].rename(columns={"risk": "true_risk"})
    missing = sorted(set(patients.astype(str)) - set(truth["subject"]))
    if missing:
        raise NdaeError(f"{path}: no true risk for {len(missing)} patient(s) of the manifest, e.g. {missing[:5]}")
    values = pd.to_numeric(truth["true_risk"], errors="coerce")
    if not np.isfinite(values[truth["subject"].isin(patients.astype(str))]).all():
        raise NdaeError(f"{path}: column 'risk' has missing or non-numeric values for patients")
    truth["true_risk"] = values
    return truth


# -- models -----------------------------------------------------------------------------------
def model_feature_sets(table: pd.DataFrame, features: dict[str, list[str]], covariates: list[str]) -> dict[str, dict]:
    """Each model alone and, except the covariates-only model, with the clinical covariates.

    Columns that are constant over the patients cannot enter a Cox model and are dropped.
    """
    sets = {}
    for name, columns in features.items():
        columns = [c for c in columns if table[c].nunique() > 1]
        if not columns:
            continue
        sets[name] = {"alone": columns}
        if name != "covariates" and name != "oracle (true risk)":
            sets[name]["with covariates"] = [*columns, *[c for c in covariates if c not in columns]]
    return sets


def _cross_validate(table: pd.DataFrame, sets: dict[str, dict], options: EvaluationOptions):
    """One `cross_validate_cox` per (model, variant) on the same table and seed: identical folds.
    A model whose Cox fit fails in some fold is reported with its error, the others go on."""
    from ndae.survival.metrics import cross_validate_cox

    per_fold, failures, folds_seen = [], {}, None
    for name, variants in sets.items():
        for variant, columns in variants.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = cross_validate_cox(table, {name: columns}, folds=options.folds, seed=options.seed,
                                                penalizer=options.penalizer)
            except NdaeError as error:
                failures[f"{name} | {variant}"] = str(error)
                continue
            folds = [tuple(np.sort(index)) for index in result.test_indices[name]]
            if folds_seen is None:
                folds_seen = folds
            elif folds != folds_seen:  # guards the paired comparison
                raise NdaeError("internal: cross-validation folds differ between models")
            frame = result.per_fold.copy()
            frame["variant"] = variant
            frame["features"] = ", ".join(columns)
            per_fold.append(frame)
    if not per_fold:
        raise NdaeError(f"no Cox model could be cross-validated: {failures}")
    return pd.concat(per_fold, ignore_index=True), failures, folds_seen


def summarise(per_fold: pd.DataFrame) -> pd.DataFrame:
    grouped = per_fold.groupby(["model", "variant"], sort=False)
    rows = []
    for (model, variant), group in grouped:
        row = {"model": model, "variant": variant, "features": group["features"].iloc[0], "folds": len(group)}
        for metric in ("harrell_c", "uno_c", "mean_auc", "integrated_brier"):
            values = group[metric].to_numpy(float)
            finite = values[np.isfinite(values)]
            row[f"{metric}_mean"] = float(finite.mean()) if finite.size else float("nan")
            row[f"{metric}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def cosine_hazard_ratio(table: pd.DataFrame, penalizer: float = 0.0, save_to: Path | None = None) -> dict[str, Any]:
    """HR per unit of the cosine score (the NDAE paper's report) and per patients' SD, from a
    Cox model on the cosine alone over all patients; 95 % Wald CI. `save_to`: cox.json and
    hazard_ratios.csv of that model."""
    from ndae.survival.cox import CoxModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoxModel(penalizer=penalizer).fit(table, ["cosine"])
    if save_to is not None:
        model.save(save_to)
    row = model.hazard_ratios().iloc[0]
    sd = float(table["cosine"].std(ddof=1))
    coef, se = float(row["coef"]), float(row["se"])
    return {
        "per_unit": {"hazard_ratio": float(np.exp(coef)), "lower_95": float(row["hazard_ratio_lower_95"]),
                     "upper_95": float(row["hazard_ratio_upper_95"]), "p": float(row["p"])},
        "per_sd": {"sd": sd, "hazard_ratio": float(np.exp(coef * sd)), "lower_95": float(np.exp((coef - 1.96 * se) * sd)),
                   "upper_95": float(np.exp((coef + 1.96 * se) * sd))},
        "coef": coef, "se": se, "n": model.n_, "events": model.events_,
    }


# -- the pipeline -----------------------------------------------------------------------------
def evaluate(manifest_path: str | Path, out_dir: str | Path, truth_path: str | Path | None = None,
             options: EvaluationOptions | None = None) -> dict[str, Any]:
    """Run everything; write OUT/report.md, OUT/evaluation.json and the PNGs; return the JSON dict."""
    from ndae.baselines import (BaselineUnavailable, BrainAgeBaseline, LatentPCABaseline,
                                RegionalNormativeBaseline, covariate_features)
    from ndae.baselines.autoencoder import AutoencoderTraining, fit_autoencoder_features
    from ndae.baselines.regional import measures_table
    from ndae.data.cache import load_prepared
    from ndae.deviation.scores import deviation_table
    from ndae.model.run import encode_run, train_run
    from ndae.normative.files import read_latents
    from ndae.normative.model import NormativeModel, OutOfRangeWarning
    from ndae.survival.analysis import patient_table
    from ndae.survival.oracle import oracle_c_index

    options = options or EvaluationOptions()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    manifest_path = Path(manifest_path)
    manifest = check_manifest(manifest_path, options.min_controls, options.folds)
    patients_all = manifest[manifest["group"] == "als"]
    truth = read_truth(truth_path, patients_all["subject"]) if truth_path else None
    from ndae.data.cache import default_cache_dir

    # The manifest's one cache (where `ndae prepare` wrote) unless told otherwise.
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir(manifest_path)
    out.mkdir(parents=True, exist_ok=True)

    # 2. DAE on the controls, then z_sem of everyone
    _log(options, "training the DAE on the controls")
    t0 = time.perf_counter()
    dae_summary = train_run(manifest_path, out, options.config, steps=options.steps, seed=options.seed,
                            cache_dir=cache_dir, device=options.device, progress=options.progress,
                            figure_steps=options.inversion_steps)
    timings["dae_training_s"] = time.perf_counter() - t0
    _log(options, "encoding every subject")
    t0 = time.perf_counter()
    latents_path = encode_run(out, manifest_path, cache_dir=cache_dir, steps=options.inversion_steps,
                              device=options.device, progress=options.progress)
    timings["encoding_s"] = time.perf_counter() - t0
    subjects, z_sem = read_latents(latents_path)
    rows = manifest.set_index(manifest["subject"].astype(str)).loc[subjects].reset_index(drop=True)
    rows["subject"] = rows["subject"].astype(str)
    covariates = rows[["subject", "site", "age", "sex"]].copy()
    controls = (rows["group"] == "control").to_numpy()

    # 3. normative model of z_sem and the NDAE deviation scores
    _log(options, "normative model and deviation scores")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        normative = NormativeModel().fit(covariates[controls].reset_index(drop=True), z_sem[controls],
                                         [f"z_sem_{k}" for k in range(z_sem.shape[1])])
        deviations = deviation_table(subjects, covariates, z_sem, normative)
    normative.save(out / "normative")
    atomic_write_text(out / "deviations.csv", deviations.to_csv(index=False, lineterminator="\n", float_format="%.8g"))

    # 4. baselines: each a frame `subject` + features, over every subject
    _log(options, "baselines")
    features: dict[str, list[str]] = {}
    frames: list[pd.DataFrame] = []
    baseline_info: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    clinical, clinical_columns = covariate_features(rows[rows["group"] == "als"].reset_index(drop=True),
                                                    min_site_size=options.folds)
    frames.append(clinical.drop(columns=["age", "sex_female"]))  # both already in the patients' table
    features["covariates"] = clinical_columns
    features["NDAE cosine"] = ["cosine"]
    features["NDAE Mahalanobis"] = ["mahalanobis"]
    features["NDAE deviation scores"] = list(NDAE_SCORES)

    t0 = time.perf_counter()
    try:
        measures = measures_table(subjects, lambda s: load_prepared(cache_dir, s))
        atomic_write_text(out / "baselines" / "regional_measures.csv", measures.to_csv(index=False, lineterminator="\n"))
        regional = RegionalNormativeBaseline(min_controls=options.min_controls).fit(
            covariates[controls], measures[controls].reset_index(drop=True))
        frame = regional.features(covariates, measures)
        frames.append(frame)
        features["regional normative z"] = [c for c in frame.columns if c != "subject"]
        baseline_info["regional normative z"] = {"measures": regional.features_}
    except BaselineUnavailable as error:
        skipped["regional normative z"] = str(error)
    timings["baseline_regional_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        from ndae.data.dataset import load_slice_dataset

        data = load_slice_dataset(manifest_path, cache_dir, progress=False)
        order = pd.Series(np.arange(len(data.subjects)), index=pd.Index(data.subjects).astype(str)).loc[subjects].to_numpy()
        frame, autoencoder = fit_autoencoder_features(
            data.images[order], data.masks[order], covariates, rows["group"], latent_dim=options.autoencoder_latent,
            training=AutoencoderTraining(steps=options.autoencoder_steps, seed=options.seed),
            min_controls=options.min_controls)
        frames.append(frame)
        features["autoencoder"] = ["ae_reconstruction_error", "ae_latent_mahalanobis"]
        baseline_info["autoencoder"] = {"steps": options.autoencoder_steps, "latent_dim": options.autoencoder_latent,
                                        "final_loss_mean_last_20": float(np.mean(autoencoder.losses_[-20:]))}
    except BaselineUnavailable as error:
        skipped["autoencoder"] = str(error)
    timings["baseline_autoencoder_s"] = time.perf_counter() - t0

    try:
        pca = LatentPCABaseline(options.pca_components).fit(z_sem[controls])
        frame = pca.features(subjects, z_sem)
        frames.append(frame)
        features["z_sem PCA"] = [c for c in frame.columns if c != "subject"]
        baseline_info["z_sem PCA"] = {"explained_variance_ratio": pca.explained_variance_ratio_.tolist()}
    except BaselineUnavailable as error:
        skipped["z_sem PCA"] = str(error)

    try:
        brain_age = BrainAgeBaseline(folds=options.folds, seed=options.seed)
        frame = brain_age.fit_features(subjects, z_sem, rows["age"], rows["group"])
        frames.append(frame[["subject", "brain_age_gap"]])
        features["brain-age gap"] = ["brain_age_gap"]
        baseline_info["brain-age gap"] = {"controls_out_of_fold_mae_years": brain_age.control_mae_,
                                          "controls_out_of_fold_r": brain_age.control_r_,
                                          "bias_slope": brain_age.bias_slope_}
    except BaselineUnavailable as error:
        skipped["brain-age gap"] = str(error)

    # 5. the patients' table and the cross-validated comparison
    table, counts = patient_table(deviations, manifest, list(NDAE_SCORES), source=str(manifest_path))
    for frame in frames:
        table = table.merge(frame, on="subject", how="left")
    oracle = None
    if truth is not None:
        table = table.merge(truth, on="subject", how="left")
        features["oracle (true risk)"] = ["true_risk"]
        oracle = oracle_c_index(table["time"], table["event"], table["true_risk"])
    feature_columns = sorted({c for columns in features.values() for c in columns})
    bad = [c for c in feature_columns if not np.isfinite(table[c].to_numpy(float)).all()]
    if bad:
        raise NdaeError(f"internal: non-finite patient features {bad}")
    atomic_write_text(out / "patients.csv", table.to_csv(index=False, lineterminator="\n", float_format="%.8g"))

    _log(options, "cross-validated Cox models")
    t0 = time.perf_counter()
    sets = model_feature_sets(table, features, [c for c in features["covariates"] if not c.startswith("site_")])
    per_fold, failures, folds = _cross_validate(table, sets, options)
    timings["cross_validation_s"] = time.perf_counter() - t0
    summary = summarise(per_fold)
    atomic_write_text(out / "survival" / "cv_per_fold.csv", per_fold.to_csv(index=False, lineterminator="\n"))

    hazard = cosine_hazard_ratio(table, save_to=out / "survival")
    from ndae.survival.kaplan_meier import kaplan_meier_by_tertile

    km = kaplan_meier_by_tertile(table, "cosine", path=out / "km_cosine.png",
                                 title="Kaplan–Meier by tertile of the NDAE cosine score")
    from ndae.evaluation.report import c_index_figure, write_report

    c_index_figure(summary, oracle, out / "c_index.png")
    timings["total_s"] = time.perf_counter() - started

    result = {
        "manifest": str(manifest_path.resolve()),
        "truth": str(Path(truth_path).resolve()) if truth_path else None,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "options": asdict(options),
        "subjects": {"controls": int(controls.sum()), "patients": int(len(table)), "events": int(table["event"].sum()),
                     **{k: v for k, v in counts.items() if k != "patients_without_deviations"}},
        "dae": dae_summary,
        "oracle_c_index": oracle,
        "models": summary.to_dict(orient="records"),
        "failed_models": failures,
        "skipped_baselines": skipped,
        "baselines": baseline_info,
        "cosine_hazard_ratio": hazard,
        "kaplan_meier_cosine": km.to_json(),
        "folds": [list(map(int, f)) for f in folds],
        "timings": timings,
    }
    result = finite_or_null(result)
    atomic_write_json(out / "evaluation.json", result)
    write_report(result, out / "report.md")
    _log(options, f"done in {timings['total_s']:.0f} s: {out / 'report.md'}")
    return result


