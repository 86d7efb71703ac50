"""What `ndae evaluate` reads: the manifest (checked for what evaluation cannot do without) and
the optional truth file (`subject, risk`, e.g. the cohort generator's truth.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError


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


def read_truth_table(truth_path: str | Path, patients: pd.Series) -> pd.DataFrame:
    """The patients' rows of the truth CSV, in the order of `patients`, with every column it has
    (`risk`; optionally `severity`, `source_subject`, ...). Call after `read_truth` has checked it."""
    truth = pd.read_csv(truth_path, dtype={"subject": str, "source_subject": str})
    truth = truth.drop_duplicates("subject").set_index("subject")
    return truth.loc[patients.astype(str).to_numpy()].reset_index()


def cohort_survival_model(truth_path: str | Path) -> tuple[dict | None, str | None]:
    """(cohort.json, None) when the cohort.json beside the truth file holds a survival model to
    redraw outcomes from, else (None, the reason expected C is skipped)."""
    import json

    path = Path(truth_path).parent / "cohort.json"
    if not path.exists():
        return None, f"no survival model in cohort.json: {path} does not exist"
    try:
        cohort = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NdaeError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(cohort, dict) or "survival_model" not in cohort:
        return None, f"no survival model in cohort.json: {path} has no 'survival_model'"
    try:
        from ndae.cohort.survival import SurvivalModel
    except ImportError:  # pragma: no cover - the cohort package is part of the project
        return None, "no survival model in cohort.json: ndae.cohort.survival cannot redraw"
    SurvivalModel.from_dict(cohort["survival_model"], f"{path}: survival_model")  # a clear error if malformed
    return cohort, None
