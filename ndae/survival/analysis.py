"""The `ndae survival` pipeline: deviation scores + patients' follow-up -> Cox, metrics, KM plots.

Inputs follow the data contracts: `deviations.csv` (one row per subject, column `subject` plus
score columns) and the manifest (patients are `group == als`, with `time`, `event`, `age`,
`sex`, `site`). Outputs in `out_dir`: `cox.json`, `hazard_ratios.csv`, `metrics.json`,
`km_<feature>.png`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ndae.data.sex import sex_female
from ndae.errors import NdaeError
from ndae.io import atomic_write_json, finite_or_null
from ndae.survival.cox import CoxModel
from ndae.survival.kaplan_meier import kaplan_meier_by_tertile
from ndae.survival.metrics import cross_validate_cox
from ndae.survival.validated_c import refit_bootstrap_c

CLINICAL_COVARIATES = ("age", "sex_female")


def read_deviations(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise NdaeError(f"{path}: deviation scores file does not exist")
    try:
        frame = pd.read_csv(path, dtype={"subject": str})
    except Exception as error:
        raise NdaeError(f"{path}: not a readable CSV ({error})") from error
    if "subject" not in frame.columns:
        raise NdaeError(f"{path}: missing column 'subject' (one row per subject expected)")
    duplicated = frame["subject"][frame["subject"].duplicated()].tolist()
    if duplicated:
        raise NdaeError(f"{path}: subject(s) listed more than once: {duplicated[:5]}")
    return frame


def patient_table(deviations: pd.DataFrame, manifest: pd.DataFrame, features: Sequence[str], source: str = "manifest") -> tuple[pd.DataFrame, dict]:
    """Join patients (`group == als`) with their deviation scores; code sex as `sex_female`."""
    for column in ("time", "event"):
        if column not in manifest.columns:
            raise NdaeError(f"{source}: missing column {column!r}, needed for the patients' survival")
    patients = manifest[manifest["group"].astype(str).str.lower() == "als"].copy()
    if patients.empty:
        raise NdaeError(f"{source}: no patients (no row with group == 'als')")
    patients["subject"] = patients["subject"].astype(str)
    sex = pd.Series(sex_female(patients["sex"]), index=patients.index)
    if sex.isna().any():
        raise NdaeError(f"{source}: column 'sex' must be M/F, found {sorted(set(patients['sex'][sex.isna()].astype(str)))[:5]}")
    patients["sex_female"] = sex.astype(float)
    scores = deviations[["subject", *features]].copy()
    scores["subject"] = scores["subject"].astype(str)
    table = patients[["subject", "site", "age", "sex_female", "time", "event"]].merge(scores, on="subject", how="inner")
    without_scores = sorted(set(patients["subject"]) - set(table["subject"]))
    counts = {
        "patients_in_manifest": int(len(patients)),
        "patients_with_deviations": int(len(table)),
        "patients_without_deviations": without_scores[:20],
    }
    if table.empty:
        raise NdaeError(f"{source}: none of the {len(patients)} patients has a row in the deviation scores (column 'subject')")
    table["event"] = pd.to_numeric(table["event"], errors="coerce")
    table["time"] = pd.to_numeric(table["time"], errors="coerce")
    return table.reset_index(drop=True), counts


def default_features(deviations: pd.DataFrame) -> list[str]:
    """Every numeric score column of the deviation table (not `subject`)."""
    return [c for c in deviations.columns if c != "subject" and pd.api.types.is_numeric_dtype(deviations[c])]


def run_survival_analysis(
    deviations_path: str | Path,
    manifest_path: str | Path,
    out_dir: str | Path,
    features: Sequence[str] | None = None,
    strata: Sequence[str] | None = None,
    penalizer: float = 0.0,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 100,  # refits of the Cox model (each a lifelines fit)
) -> dict:
    """Fit the Cox model on patients, evaluate it, plot KM curves; returns the metrics dict."""
    from ndae.data.manifest import read_manifest

    out_dir = Path(out_dir)
    deviations = read_deviations(deviations_path)
    features = list(features) if features else default_features(deviations)
    if not features:
        raise NdaeError(f"{deviations_path}: no numeric deviation score columns")
    missing = [f for f in features if f not in deviations.columns]
    if missing:
        raise NdaeError(f"{deviations_path}: missing feature column(s) {missing}; available: {list(deviations.columns)}")
    manifest = read_manifest(manifest_path, check_files=False)
    table, counts = patient_table(deviations, manifest, features, source=str(manifest_path))
    strata = list(strata) if strata else None

    # Clinical covariates that do not vary (e.g. one sex only) cannot be fitted: leave them out.
    clinical = [c for c in CLINICAL_COVARIATES if table[c].nunique() > 1]
    covariates = [*features, *clinical]
    model = CoxModel(penalizer=penalizer, strata=strata).fit(table, "time", "event", covariates=covariates)
    model.save(out_dir)

    metrics: dict = {
        **counts,
        "n": model.n_,
        "events": model.events_,
        "covariates": covariates,
        "strata": strata,
        "penalizer": penalizer,
        # In-sample C is optimistic: validated by refitting the model on each bootstrap resample.
        "harrell_c": refit_bootstrap_c(table, covariates, penalizer=penalizer, strata=strata, n_boot=n_boot, seed=seed),
    }

    feature_sets = {"deviation": list(features)}
    if clinical:
        feature_sets = {"clinical": clinical, "deviation": list(features), "clinical+deviation": covariates}
    try:
        result = cross_validate_cox(table, feature_sets, folds=folds, seed=seed, strata=strata, penalizer=penalizer)
        metrics["cross_validation"] = result.to_json()
    except NdaeError as error:
        # Too few events or censored patients for K folds: the fit above still stands.
        metrics["cross_validation"] = {"skipped": str(error)}

    from ndae.survival.time_dependent import time_dependent_metrics

    # the same models and folds as the cross-validation: AUC(t), Brier score, calibration figures
    metrics["time_dependent"] = time_dependent_metrics(table, feature_sets, out_dir, strata=strata, folds=folds,
                                                       seed=seed, penalizer=penalizer)
    metrics["kaplan_meier"] = {}
    for feature in features:
        path = out_dir / f"km_{_file_safe(feature)}.png"
        km = kaplan_meier_by_tertile(table, feature, path=path, split_on=f"the deviation score {feature} alone")
        metrics["kaplan_meier"][feature] = {**km.to_json(), "figure": path.name}

    atomic_write_json(out_dir / "metrics.json", finite_or_null(metrics))
    return metrics


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "score"


