"""Metrics that use the simulated cohort's truth, and the resampling that gives them power.

One survival draw moves a cross-validated C-index by several hundredths, so two models are
compared here on quantities that average that noise away or measure it:

- `observed_c`: the CV Harrell's C and Uno's C of one model on the observed outcomes (the mean
  over folds of each test fold's C; folds grouped by source anatomy, `ndae.evaluation.grouped_cv`);
- `expected_c`: the mean of that CV Harrell's C over R fresh survival draws from the cohort's
  known survival model (`redraw(rng) -> (time, event)`). The model is refitted on each draw's
  training folds, since what it learns depends on the outcomes. `expected_c_models` runs several
  models on the SAME draws and folds, so `ndae.evaluation.paired.paired_difference` can compare
  them draw by draw;
- `risk_concordance`: the concordance of the CV-predicted risk with the true linear predictor
  (all pairs with distinct true risk; 1 = the true ordering, 0.5 = none). No survival noise;
- single scores: `severity_spearman` (against the true severity) and `patient_control_auroc`;
- `paired_bootstrap_c`: the paired difference in observed CV C between a model and a reference,
  with a percentile CI from resampling source anatomies (groups) with replacement.

Sign convention as everywhere in the project: a higher `risk` means an earlier expected death.
`fit_predict(X_train, time_train, event_train, X_test) -> risk_test` is the model; `cox_fit_predict`
gives a fast ridge-penalised Cox one (Newton-Raphson in numpy; its coefficients equal lifelines'
`CoxPHFitter(penalizer=...)` when times are untied, see tests/test_truth_metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.evaluation.grouped_cv import fold_labels, grouped_folds
from ndae.survival.ridge_cox import FitPredict, as_matrix, cox_fit_predict, fit_cox  # noqa: F401 (part of this API)

Redraw = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


class TruthMetricError(NdaeError):
    """Inputs the truth-aware metrics cannot use (mismatched rows, missing subjects, ...)."""


# -- a light Cox model ---------------------------------------------------------------------------
# -- cross-validated concordance -----------------------------------------------------------------
def harrell_c(time, event, risk) -> float:
    """Harrell's C (the project's one: `ndae.survival.metrics.harrell_c_index`); NaN when no pair is comparable."""
    from ndae.survival.metrics import harrell_c_index

    return harrell_c_index(time, event, risk)


def cross_validated_risk(fit_predict: FitPredict, X, time, event, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold risk of every subject: the model fitted on the other folds."""
    X = _matrix(X, "X")
    time, event = _outcomes(time, event, len(X))
    labels = fold_labels(folds, len(X))
    risk = np.full(len(X), np.nan)
    for k in range(len(folds)):
        test = labels == k
        predicted = np.asarray(fit_predict(X[~test], time[~test], event[~test], X[test]), float).reshape(-1)
        if predicted.shape != (int(test.sum()),):
            raise TruthMetricError(f"fit_predict returned {predicted.shape} risks for {int(test.sum())} test subjects")
        risk[test] = predicted
    if not np.all(np.isfinite(risk)):
        raise TruthMetricError("fit_predict returned non-finite risks")
    return risk


def fold_concordance(time, event, risk, folds: list[np.ndarray], uno: bool = True) -> dict:
    """Per-fold Harrell's C (and Uno's C, censoring weights from the other folds) of an out-of-fold
    risk, and their means over the folds where they are defined."""
    from ndae.survival.metrics import uno_c_index

    time, event = _outcomes(time, event, len(risk))
    risk = np.asarray(risk, float)
    labels = fold_labels(folds, len(risk))
    harrell, unos = [], []
    for k in range(len(folds)):
        test = labels == k
        harrell.append(harrell_c(time[test], event[test], risk[test]))
        if uno:
            unos.append(uno_c_index(time[~test], event[~test], time[test], event[test], risk[test]))
    out = {"harrell_c": _nanmean(harrell), "harrell_c_per_fold": harrell}
    if uno:
        out.update({"uno_c": _nanmean(unos), "uno_c_per_fold": unos})
    return out


def observed_c(fit_predict: FitPredict, X, time, event, groups=None, folds: int = 5, seed: int = 0) -> dict:
    """CV Harrell's and Uno's C on the observed outcomes, folds grouped by `groups`.
    Also returns the out-of-fold `risk` and the `folds` (test indices) used."""
    time, event = _outcomes(time, event, len(_matrix(X, "X")))
    test_folds = grouped_folds(event, groups, folds, seed)
    risk = cross_validated_risk(fit_predict, X, time, event, test_folds)
    return {**fold_concordance(time, event, risk, test_folds), "risk": risk, "folds": test_folds}


# -- expected C over fresh survival draws --------------------------------------------------------
@dataclass
class ExpectedC:
    """CV Harrell's C of one model on each of R survival draws (same draws and folds for every
    model of one `expected_c_models` call)."""

    per_draw: np.ndarray
    uno_per_draw: np.ndarray | None = None
    seed: int = 0
    folds: int = 5
    extra: dict = field(default_factory=dict)

    @property
    def draws(self) -> int:
        return int(np.isfinite(self.per_draw).sum())

    @property
    def mean(self) -> float:
        return _nanmean(self.per_draw)

    @property
    def sd(self) -> float:
        """Spread of one study's CV C: what a single survival draw can move it by."""
        values = self.per_draw[np.isfinite(self.per_draw)]
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error of `mean` (sd / √R)."""
        return float(self.sd / np.sqrt(self.draws)) if self.draws > 1 else float("nan")

    def to_dict(self) -> dict:
        out = {"expected_c": self.mean, "sd_per_draw": self.sd, "mc_se": self.mc_se, "draws": self.draws,
               "folds": self.folds, "seed": self.seed}
        if self.uno_per_draw is not None:
            out["expected_uno_c"] = _nanmean(self.uno_per_draw)
        return out


def expected_c_models(
    models: Mapping[str, tuple[FitPredict, object]],
    groups,
    redraw: Redraw,
    R: int = 50,
    seed: int = 0,
    folds: int = 5,
    uno: bool = False,
) -> dict[str, ExpectedC]:
    """`expected_c` for several models, `{name: (fit_predict, X)}`, all on the same R draws and,
    within a draw, the same folds (grouped by `groups`, stratified by that draw's events).

    Draw r uses the generator seeded by `SeedSequence(seed).spawn(R)[r]` (for the outcomes) and
    fold seed derived from it: the result is a deterministic function of the inputs and `seed`."""
    if R < 1:
        raise TruthMetricError(f"expected C needs R >= 1 survival draws, got {R}")
    if not models:
        raise TruthMetricError("expected C: no models given")
    matrices = {name: _matrix(X, f"X of model {name!r}") for name, (_, X) in models.items()}
    n = {len(X) for X in matrices.values()}
    if len(n) != 1:
        raise TruthMetricError(f"expected C: the models' feature tables have different row counts {sorted(n)}")
    n = n.pop()
    if groups is not None and len(groups) != n:
        raise TruthMetricError(f"expected C: {len(groups)} group labels for {n} subjects")
    harrell = {name: np.full(R, np.nan) for name in models}
    unos = {name: np.full(R, np.nan) for name in models} if uno else None
    for r, child in enumerate(np.random.SeedSequence(seed).spawn(R)):
        outcome_rng, fold_seed = np.random.default_rng(child), int(child.generate_state(1)[0])
        drawn = redraw(outcome_rng)
        if not (isinstance(drawn, tuple) and len(drawn) == 2):
            raise TruthMetricError("redraw(rng) must return a (time, event) pair")
        time, event = _outcomes(*drawn, n, where=f"redraw (draw {r})")
        test_folds = grouped_folds(event, groups, folds, fold_seed)
        for name, (fit_predict, _) in models.items():
            risk = cross_validated_risk(fit_predict, matrices[name], time, event, test_folds)
            result = fold_concordance(time, event, risk, test_folds, uno=uno)
            harrell[name][r] = result["harrell_c"]
            if uno:
                unos[name][r] = result["uno_c"]
    return {
        name: ExpectedC(harrell[name], None if unos is None else unos[name], seed=seed, folds=folds)
        for name in models
    }


def expected_c(fit_predict: FitPredict, X, groups, redraw: Redraw, R: int = 50, seed: int = 0,
               folds: int = 5, uno: bool = False) -> ExpectedC:
    """Mean CV Harrell's C of one model over R fresh survival draws (see `expected_c_models`)."""
    return expected_c_models({"model": (fit_predict, X)}, groups, redraw, R, seed, folds, uno)["model"]


def paired_bootstrap_c(time, event, risk, reference_risk, folds: list[np.ndarray], groups=None,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Observed CV Harrell's C of `risk` minus that of `reference_risk` (both out-of-fold, same
    folds), with a percentile CI from resampling groups (source anatomies) with replacement;
    each resampled subject keeps its fold. The models are not refitted: this is the uncertainty
    from which patients were sampled, given the fitted out-of-fold risks."""
    risk, reference_risk = np.asarray(risk, float), np.asarray(reference_risk, float)
    time, event = _outcomes(time, event, len(risk))
    if reference_risk.shape != risk.shape:
        raise TruthMetricError(f"paired bootstrap: {len(risk)} risks vs {len(reference_risk)} reference risks")
    labels = fold_labels(folds, len(risk))
    groups = np.arange(len(risk)).astype(str) if groups is None else np.asarray(groups).astype(str)
    names, members = np.unique(groups, return_inverse=True)
    index_of = [np.flatnonzero(members == g) for g in range(len(names))]

    def difference(rows: np.ndarray) -> float:
        values = []
        for k in range(len(folds)):
            fold = rows[labels[rows] == k]
            values.append(harrell_c(time[fold], event[fold], risk[fold])
                          - harrell_c(time[fold], event[fold], reference_risk[fold]))
        return _nanmean(values)

    estimate = difference(np.arange(len(risk)))
    rng = np.random.default_rng(seed)
    draws = np.array([
        difference(np.concatenate([index_of[g] for g in rng.integers(0, len(names), len(names))]))
        for _ in range(n_boot)
    ])
    draws = draws[np.isfinite(draws)]
    alpha = 1 - level
    lower, upper = np.quantile(draws, [alpha / 2, 1 - alpha / 2]) if draws.size else (np.nan, np.nan)
    return {"difference": float(estimate), "lower": float(lower), "upper": float(upper), "n_boot": int(draws.size)}


# -- truth-only metrics ----------------------------------------------------------------------------
def risk_concordance(truth: pd.DataFrame, predicted: pd.DataFrame, truth_column: str = "risk",
                     predicted_column: str = "risk") -> float:
    """Concordance of a predicted risk with the true linear predictor over the subjects of
    `predicted`: the fraction of pairs with distinct true risk that the prediction orders the same
    way (ties in the prediction count ½). Both frames need `subject` and their risk column."""
    merged = _merge_on_subject(truth, predicted, truth_column, predicted_column, "risk concordance")
    true, guess = merged["_truth"].to_numpy(float), merged["_value"].to_numpy(float)
    if len(true) < 2 or np.unique(true).size < 2:
        return float("nan")
    # Harrell's C with every subject an "event" at time −η: comparable = distinct true risk
    return harrell_c(-true, np.ones(len(true), bool), guess)


def severity_spearman(truth: pd.DataFrame, scores: pd.DataFrame, columns=None) -> dict[str, float]:
    """Spearman ρ of each score column with the true `severity`, over subjects with a finite
    severity (the patients). `scores`: `subject` + score columns (default: all but `subject`)."""
    from scipy.stats import spearmanr

    if "severity" not in truth.columns:
        raise TruthMetricError("severity Spearman: the truth table has no 'severity' column")
    columns = [c for c in scores.columns if c != "subject"] if columns is None else list(columns)
    out = {}
    for column in columns:
        merged = _merge_on_subject(truth, scores, "severity", column, "severity Spearman")
        usable = merged[np.isfinite(merged["_truth"].to_numpy(float)) & np.isfinite(merged["_value"].to_numpy(float))]
        if len(usable) < 3 or usable["_value"].nunique() < 2:
            out[column] = float("nan")
            continue
        out[column] = float(spearmanr(usable["_truth"], usable["_value"]).statistic)
    return out


def patient_control_auroc(score, is_patient) -> float:
    """AUROC of a score for patients vs controls (higher score = more patient-like; a score that
    falls with disease gives < 0.5). Pass only controls the score's normative model did not see."""
    from sklearn.metrics import roc_auc_score

    score, is_patient = np.asarray(score, float), np.asarray(is_patient).astype(bool)
    if score.shape != is_patient.shape:
        raise TruthMetricError(f"AUROC: {len(score)} scores for {len(is_patient)} labels")
    keep = np.isfinite(score)
    if is_patient[keep].all() or not is_patient[keep].any():
        return float("nan")
    return float(roc_auc_score(is_patient[keep], score[keep]))


# -- helpers -------------------------------------------------------------------------------------
def _matrix(X, name: str) -> np.ndarray:
    return as_matrix(X, name, TruthMetricError)


def _outcomes(time, event, n: int, where: str = "survival outcomes"):
    time, event = np.asarray(time, float).reshape(-1), np.asarray(event).reshape(-1)
    if len(time) != n or len(event) != n:
        raise TruthMetricError(f"{where}: {len(time)} times and {len(event)} events for {n} subjects")
    if not np.all(np.isfinite(time)) or np.any(time <= 0):
        raise TruthMetricError(f"{where}: times must be finite and positive")
    if not np.isin(event, (0, 1)).all():
        raise TruthMetricError(f"{where}: events must be 0 or 1")
    return time, event.astype(int)


def _merge_on_subject(truth, values, truth_column, value_column, what) -> pd.DataFrame:
    for frame, column, name in ((truth, truth_column, "truth"), (values, value_column, "predictions")):
        missing = [c for c in ("subject", column) if c not in frame.columns]
        if missing:
            raise TruthMetricError(f"{what}: the {name} table lacks column(s) {missing}")
    left = pd.DataFrame({"subject": truth["subject"].astype(str), "_truth": pd.to_numeric(truth[truth_column], errors="coerce")})
    right = pd.DataFrame({"subject": values["subject"].astype(str), "_value": pd.to_numeric(values[value_column], errors="coerce")})
    missing = sorted(set(right["subject"]) - set(left["subject"]))
    if missing:
        raise TruthMetricError(f"{what}: {len(missing)} subject(s) are not in the truth table: {missing[:10]}")
    return right.merge(left.drop_duplicates("subject"), on="subject", how="left")


def _nanmean(values) -> float:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")
