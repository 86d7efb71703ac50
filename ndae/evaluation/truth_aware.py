"""The truth-aware metrics of survival models: the one place they are computed, for `ndae
evaluate` (step 5b) and for the survival benchmarks alike.

`model_metrics` does the work, per model on the SAME grouped folds (`ndae.evaluation.truth_metrics`):

- the out-of-fold risk (ridge Cox refitted per fold, the same penalty as the lifelines table), and
  on request its per-fold Harrell's and Uno's C;
- `risk_concordance`: that risk against the truth's `risk`;
- `expected_c`: the mean CV Harrell's C over R fresh survival draws from the cohort's survival
  model (cohort.json beside the truth), every model on the same draws and folds;
- `ModelMetrics.difference`: the paired difference to a reference model with a 95 % interval: over
  the draws when there is an expected C (`ndae.evaluation.paired.paired_difference`), else on the
  observed C by resampling source anatomies (`truth_metrics.paired_bootstrap_c`).

`truth_aware_metrics` is `ndae evaluate`'s view of it, per (model, variant): `expected_c` (+
`expected_c_sd`, `expected_c_mc_se`, `expected_c_draws`), single scores' `severity_spearman` (truth
with `severity`) and `auroc_patients_vs_held_out_controls`, and `vs_covariates` / `vs_best_baseline`.
The best baseline: the non-NDAE, non-oracle (model, variant) with the highest expected C (observed
C without one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ndae.evaluation import truth_metrics as tm
from ndae.evaluation.paired import paired_difference

ORACLE = "oracle (true risk)"


def is_baseline(model: str) -> bool:
    return not model.startswith("NDAE") and model != ORACLE


def row_key(model: str, variant: str) -> str:
    return f"{model} | {variant}"


@dataclass
class ModelMetrics:
    """What `model_metrics` computed, per model name (models it refused are in `refused` only)."""

    time: np.ndarray
    event: np.ndarray
    folds: list[np.ndarray]
    groups: np.ndarray
    risks: dict[str, np.ndarray] = field(default_factory=dict)
    concordance: dict[str, dict] = field(default_factory=dict)  # `fold_concordance`, when asked for
    risk_concordance: dict[str, float] = field(default_factory=dict)  # with a truth
    expected: dict[str, tm.ExpectedC] = field(default_factory=dict)  # with a survival model
    refused: dict[str, str] = field(default_factory=dict)

    def draws_difference(self, model: str, reference: str) -> dict:
        """Expected C of `model` − `reference`, draw by draw (`PairedDifference.over_draws`)."""
        return paired_difference(self.expected[model], self.expected[reference]).over_draws()

    def observed_difference(self, model: str, reference: str, n_boot: int, seed: int) -> dict:
        """Observed CV Harrell's C of `model` − `reference`, CI from resampling source anatomies."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tm.paired_bootstrap_c(self.time, self.event, self.risks[model], self.risks[reference], self.folds,
                                         self.groups, n_boot=n_boot, seed=seed)


def model_metrics(table: pd.DataFrame, models: dict[str, list[str]], truth: pd.DataFrame | None, cohort: dict | None,
                  *, folds: list[np.ndarray], groups, penalizer: float, draws: int, seed: int, n_folds: int,
                  concordance: bool = False) -> ModelMetrics:
    """The metrics above for every model `{name: feature columns of table}`.

    `table`: one row per patient (subject, time, event, the feature columns), in the row order of
    `folds` (test indices), `groups` (source anatomies) and `truth` (the patients' truth rows with
    `risk`; None: no risk concordance, no expected C). `cohort`: cohort.json with its survival model
    (None: no expected C); `draws` survival draws (0: none), `seed` for them and their folds,
    `n_folds` per draw. A model with non-finite features is refused, the others still computed."""
    folds = [np.asarray(fold, int) for fold in folds]
    fit_predict = tm.cox_fit_predict(penalizer)
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(int)
    result = ModelMetrics(time, event, folds, groups)
    usable: dict[str, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, columns in models.items():
            if not np.isfinite(table[columns].to_numpy(float)).all():
                result.refused[name] = "non-finite feature values"
                continue
            usable[name] = columns
            result.risks[name] = tm.cross_validated_risk(fit_predict, table[columns], time, event, folds)
            if concordance:
                result.concordance[name] = tm.fold_concordance(time, event, result.risks[name], folds)
            if truth is not None:
                result.risk_concordance[name] = tm.risk_concordance(
                    truth, pd.DataFrame({"subject": table["subject"], "risk": result.risks[name]}))
        if truth is not None and cohort is not None and draws > 0:
            from ndae.cohort.survival import redraw_survival

            truth_rows = truth[["subject", "risk"]].reset_index(drop=True)
            result.expected = tm.expected_c_models(
                {name: (fit_predict, table[columns]) for name, columns in usable.items()}, groups,
                lambda rng: redraw_survival(cohort, truth_rows, rng), R=draws, seed=seed, folds=n_folds)
    return result


def truth_aware_metrics(table: pd.DataFrame, sets: dict[str, dict], summary: pd.DataFrame, *,
                        folds: list[np.ndarray], groups, truth: pd.DataFrame | None, cohort: dict | None,
                        skip_reason: str | None, scores: pd.DataFrame, is_patient: np.ndarray,
                        options) -> dict[str, Any]:
    """Everything above, as {"per_model": {key: {...}}, "expected_c": {...}, "best_baseline": key,
    "score_metrics": {column: {...}}}. `table`: the patients (row order of `folds`, `groups`,
    `truth`); `scores`: `subject` + score columns of the patients and the held-out controls,
    `is_patient` its labels. `options`: `EvaluationOptions` (seed, folds, penalizer, draws, bootstrap)."""
    rows = [(name, variant, columns) for name, variants in sets.items() for variant, columns in variants.items()]
    in_summary = set(zip(summary["model"], summary["variant"]))
    rows = [r for r in rows if (r[0], r[1]) in in_summary]
    computed = model_metrics(table, {row_key(n, v): c for n, v, c in rows}, truth, cohort,
                             folds=folds, groups=groups, penalizer=options.penalizer, draws=options.draws,
                             seed=options.seed, n_folds=options.folds)
    expected = computed.expected
    per_model: dict[str, dict] = {row_key(n, v): {} for n, v, _ in rows}
    for key, value in computed.risk_concordance.items():
        per_model[key]["risk_concordance"] = value

    # expected C over fresh draws
    expected_info: dict[str, Any] = {"draws": 0, "skipped": skip_reason}
    if truth is None and skip_reason is None:
        expected_info["skipped"] = "no truth file (--truth): no survival model to redraw outcomes from"
    elif cohort is not None:
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
        out = (computed.draws_difference(key, reference) if expected else
               computed.observed_difference(key, reference, options.bootstrap, options.seed))
        return {"reference": reference, "basis": basis, **out}

    for key in per_model:
        if reference_covariates in per_model and key != reference_covariates and key.split(" | ")[0] != ORACLE:
            per_model[key]["vs_covariates"] = difference(key, reference_covariates)
        if best is not None and key != best and key.split(" | ")[0] != ORACLE:
            per_model[key]["vs_best_baseline"] = difference(key, best)
    return {"per_model": per_model, "expected_c": expected_info, "best_baseline": best, "difference_basis": basis,
            "score_metrics": score_metrics}
