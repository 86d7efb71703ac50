"""The survival comparison of `ndae evaluate`: one cross-validated Cox model per feature set on
the SAME folds, grouped by source anatomy (each model alone and with exactly the covariates-only
model's covariates), its summary over folds
(Harrell's and Uno's C, time-dependent AUC, integrated Brier), and the hazard ratio of the NDAE
cosine score over all patients."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.errors import NdaeError


def model_feature_sets(table: pd.DataFrame, features: dict[str, list[str]], covariates: list[str]) -> dict[str, dict]:
    """Each model alone and, except the covariates-only model, with the clinical covariates.

    `covariates`: the covariates-only model's feature list, all of it (age, sex, onset, site), so
    every "with covariates" model nests the covariates-only model and their difference is what
    the imaging adds. Columns that are constant over the patients cannot enter a Cox model and are
    dropped (from the covariates too, for every model alike).
    """
    covariates = [c for c in covariates if table[c].nunique() > 1]
    sets = {}
    for name, columns in features.items():
        columns = [c for c in columns if table[c].nunique() > 1]
        if not columns:
            continue
        sets[name] = {"alone": columns}
        if name != "covariates" and name != "oracle (true risk)":
            sets[name]["with covariates"] = [*columns, *[c for c in covariates if c not in columns]]
    return sets


def cross_validate_models(table: pd.DataFrame, sets: dict[str, dict], options, groups=None):
    """One `cross_validate_cox` per (model, variant) on the same folds: grouped by `groups` (one
    source-anatomy label per row of `table`; None: each patient alone), stratified by event,
    seeded by `options.seed` (`ndae.evaluation.grouped_cv.grouped_folds`).
    A model whose Cox fit fails in some fold is reported with its error, the others go on.
    `options`: the run's `EvaluationOptions` (folds, seed, penalizer)."""
    from ndae.evaluation.grouped_cv import grouped_folds
    from ndae.survival.metrics import cross_validate_cox

    test_folds = grouped_folds(table["event"].to_numpy(int), groups, options.folds, options.seed)
    per_fold, failures, folds_seen = [], {}, None
    for name, variants in sets.items():
        for variant, columns in variants.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = cross_validate_cox(table, {name: columns}, folds=options.folds, seed=options.seed,
                                                penalizer=options.penalizer, test_folds=test_folds)
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
    hazard_ratios.csv of that model (fitted on the cosine standardised over the patients)."""
    from ndae.survival.cox import CoxModel, hazard_ratio_table

    # Fitted per SD: the paper's cosine keeps the latent's shared mean, so it sits near 1 with a
    # tiny spread across patients (docs/dae.md) and a fit per unit overflows. The
    # per-unit ratio follows as coef / sd and is reported as not finite where it overflows.
    sd = float(table["cosine"].std(ddof=1))
    mean = float(table["cosine"].mean())
    scaled = table.assign(cosine=(table["cosine"] - mean) / (sd if sd > 0 else 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoxModel(penalizer=penalizer).fit(scaled, "time", "event", covariates=["cosine"])
    if save_to is not None:
        model.save(save_to)
    row = hazard_ratio_table(model.params_, model.standard_errors_, model.alpha).iloc[0]
    coef_sd, se_sd = float(row["coef"]), float(row["se"])
    coef, se = (coef_sd / sd, se_sd / sd) if sd > 0 else (float("nan"), float("nan"))
    with np.errstate(over="ignore"):
        return {
            "per_unit": {"hazard_ratio": float(np.exp(coef)), "lower_95": float(np.exp(coef - 1.96 * se)),
                         "upper_95": float(np.exp(coef + 1.96 * se)), "p": float(row["p"])},
            "per_sd": {"sd": sd, "hazard_ratio": float(np.exp(coef_sd)), "lower_95": float(np.exp(coef_sd - 1.96 * se_sd)),
                       "upper_95": float(np.exp(coef_sd + 1.96 * se_sd))},
            "coef": coef, "se": se, "n": model.n_, "events": model.events_,
        }
