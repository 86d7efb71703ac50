"""Step 5b of `ndae evaluate`: per (model, variant), the metrics that average the survival noise
away or measure it (`ndae.evaluation.truth_metrics`), on the SAME grouped folds as the Cox table.

- `risk_concordance`: the out-of-fold risk (ridge Cox refitted per fold, the same penalty as the
  lifelines table) against the truth's `risk`;
- `expected_c` (+ `expected_c_sd`, `expected_c_mc_se`, `expected_c_draws`): the mean CV Harrell's
  C over R fresh survival draws from the cohort's survival model (cohort.json beside the truth),
  every model on the same draws and folds;
- single scores: `severity_spearman` (truth with `severity`) and `auroc_patients_vs_held_out_controls`;
- `vs_covariates` and `vs_best_baseline`: the paired difference with a 95 % interval: over the
  draws when there is an expected C (`truth_metrics.paired_difference`), else on the observed C
  by resampling source anatomies (`truth_metrics.paired_bootstrap_c`).
The best baseline: the non-NDAE, non-oracle (model, variant) with the highest expected C (observed
C without one).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

ORACLE = "oracle (true risk)"


def is_baseline(model: str) -> bool:
    return not model.startswith("NDAE") and model != ORACLE


def row_key(model: str, variant: str) -> str:
    return f"{model} | {variant}"


def truth_aware_metrics(table: pd.DataFrame, sets: dict[str, dict], summary: pd.DataFrame, folds: list[np.ndarray],
                        groups, truth: pd.DataFrame | None, cohort: dict | None, skip_reason: str | None,
                        scores: pd.DataFrame, is_patient: np.ndarray, options) -> dict[str, Any]:
    """Everything above, as {"per_model": {key: {...}}, "expected_c": {...}, "best_baseline": key,
    "score_metrics": {column: {...}}}. `table`: the patients (row order of `folds`, `groups`,
    `truth`); `scores`: `subject` + score columns of the patients and the held-out controls,
    `is_patient` its labels. `options`: `EvaluationOptions` (seed, folds, penalizer, draws, bootstrap)."""
    from ndae.evaluation import truth_metrics as tm

    folds = [np.asarray(fold, int) for fold in folds]  # cross_validate_models gives tuples
    fit_predict = tm.cox_fit_predict(options.penalizer)
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(int)
    rows = [(name, variant, columns) for name, variants in sets.items() for variant, columns in variants.items()]
    in_summary = set(zip(summary["model"], summary["variant"]))
    rows = [r for r in rows if (r[0], r[1]) in in_summary]
    per_model: dict[str, dict] = {row_key(n, v): {} for n, v, _ in rows}
    risks: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, variant, columns in rows:
            key = row_key(name, variant)
            risks[key] = tm.cross_validated_risk(fit_predict, table[columns], time, event, folds)
            if truth is not None:
                per_model[key]["risk_concordance"] = tm.risk_concordance(
                    truth, pd.DataFrame({"subject": table["subject"], "risk": risks[key]}))

    # expected C over fresh draws
    expected: dict[str, tm.ExpectedC] = {}
    expected_info: dict[str, Any] = {"draws": 0, "skipped": skip_reason}
    if truth is None and skip_reason is None:
        expected_info["skipped"] = "no truth file (--truth): no survival model to redraw outcomes from"
    elif cohort is not None:
        from ndae.cohort.survival import redraw_survival

        truth_rows = truth[["subject", "risk"]].reset_index(drop=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = tm.expected_c_models(
                {row_key(n, v): (fit_predict, table[c]) for n, v, c in rows}, groups,
                lambda rng: redraw_survival(cohort, truth_rows, rng), R=options.draws, seed=options.seed,
                folds=options.folds)
        expected_info = {"draws": options.draws, "seed": options.seed, "skipped": None,
                         "source": "cohort.json survival_model beside the truth file"}
        for key, value in expected.items():
            per_model[key].update({"expected_c": value.mean, "expected_c_sd": value.sd,
                                   "expected_c_mc_se": value.mc_se, "expected_c_draws": value.draws})

    # single scores
    lookup = scores.set_index(scores["subject"].astype(str))
    for name, variant, columns in rows:
        if variant != "alone" or len(columns) != 1 or name == ORACLE:
            continue
        column = columns[0]
        if truth is not None and "severity" in truth.columns:
            per_model[row_key(name, variant)]["severity_spearman"] = tm.severity_spearman(
                truth, table[["subject", column]], [column])[column]
        if column in lookup.columns and (~is_patient).any():
            per_model[row_key(name, variant)]["auroc_patients_vs_held_out_controls"] = tm.patient_control_auroc(
                lookup[column].to_numpy(float), is_patient)
    score_metrics = {}
    for column in [c for c in scores.columns if c != "subject"]:
        entry = {}
        if (~is_patient).any():
            entry["auroc_patients_vs_held_out_controls"] = tm.patient_control_auroc(scores[column].to_numpy(float), is_patient)
        if truth is not None and "severity" in truth.columns and column in table.columns:
            entry["severity_spearman"] = tm.severity_spearman(truth, table[["subject", column]], [column])[column]
        score_metrics[column] = entry

    # the paired differences
    observed = {row_key(m, v): c for m, v, c in zip(summary["model"], summary["variant"], summary["harrell_c_mean"])}
    basis = "expected_c" if expected else "observed_c"
    level = {k: (expected[k].mean if expected else observed[k]) for k in per_model}
    candidates = {k: c for k, c in level.items() if is_baseline(k.split(" | ")[0]) and np.isfinite(c)}
    best = max(candidates, key=candidates.get) if candidates else None
    reference_covariates = row_key("covariates", "alone")

    def difference(key: str, reference: str) -> dict:
        if expected:
            out = tm.paired_difference(expected[key], expected[reference])
        else:
            out = tm.paired_bootstrap_c(time, event, risks[key], risks[reference], folds, groups,
                                        n_boot=options.bootstrap, seed=options.seed)
        return {"reference": reference, "basis": basis, **out}

    for key in per_model:
        if reference_covariates in per_model and key != reference_covariates and key.split(" | ")[0] != ORACLE:
            per_model[key]["vs_covariates"] = difference(key, reference_covariates)
        if best is not None and key != best and key.split(" | ")[0] != ORACLE:
            per_model[key]["vs_best_baseline"] = difference(key, best)
    return {"per_model": per_model, "expected_c": expected_info, "best_baseline": best, "difference_basis": basis,
            "score_metrics": score_metrics}
