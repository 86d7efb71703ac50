"""Discrimination and calibration of survival predictions, and cross-validation (the validated C
with its interval is `validated_c.refit_bootstrap_c`).

Sign convention everywhere: `risk` is higher for subjects expected to die sooner (e.g. a Cox
log partial hazard). lifelines' concordance_index expects the opposite (a predicted survival
time), so we pass `-risk`.

The IPCW metrics from scikit-survival (Uno's C, cumulative/dynamic AUC, Brier score) estimate the
censoring distribution G on the *training* data and cannot extrapolate it past the training
follow-up. How we keep every call inside that range is explained in `_within_train_follow_up`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.survival._validation import validate_survival_frame


def _survival_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float))


# Above this many subjects the pair matrices of `_harrell_counts` would take too much memory;
# scikit-survival's loop is used instead (its per-call input checks matter only for small n).
_PAIRWISE_LIMIT = 2000
_TIED_RISK = 1e-8  # scikit-survival's `tied_tol`: risks closer than this count as a tie


def harrell_c_index(time: Sequence[float], event: Sequence[int], risk: Sequence[float]) -> float:
    """Harrell's C of a risk (higher = fails sooner), as scikit-survival's
    `concordance_index_censored` defines it: over pairs whose earlier time is an event (an event
    is also comparable to a censoring at the same time), the fraction the risk orders correctly
    (ties in risk count ½). NaN when no pair is comparable (e.g. no events) or an input is not
    finite. The project's one Harrell's C: every other caller uses it.

    Bootstraps call it thousands of times on tens of patients, where scikit-survival spends
    nearly all its time checking its inputs; below `_PAIRWISE_LIMIT` subjects the same counts are
    taken over the pair matrix in numpy (equal to scikit-survival's to the last bit: tests)."""
    time, risk = np.asarray(time, dtype=float), np.asarray(risk, dtype=float)
    event = np.asarray(event, dtype=float) > 0
    if not event.any():
        return float("nan")
    if len(time) > _PAIRWISE_LIMIT:
        return _harrell_c_scikit_survival(time, event, risk)
    if not (len(time) == len(event) == len(risk) >= 2) or not (np.isfinite(time).all() and np.isfinite(risk).all()):
        return float("nan")  # what scikit-survival's input checks refuse
    return _harrell_counts(time, event, risk)


def _harrell_counts(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    # pair (i, j) is comparable when i is an event and j outlived it (or was censored at its time)
    comparable = event[:, None] & ((time[:, None] < time[None, :])
                                   | ((time[:, None] == time[None, :]) & ~event[None, :]))
    pairs = int(comparable.sum())
    if pairs == 0:
        return float("nan")
    difference = risk[:, None] - risk[None, :]
    tied = np.abs(difference) <= _TIED_RISK
    concordant = int((comparable & (difference > 0) & ~tied).sum())
    ties = int((comparable & tied).sum())
    return float((concordant + 0.5 * ties) / pairs)


def _harrell_c_scikit_survival(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    from sksurv.metrics import concordance_index_censored

    try:
        return float(concordance_index_censored(event, time, risk, tied_tol=_TIED_RISK)[0])
    except ValueError:  # scikit-survival: no comparable pairs, or inputs it refuses
        return float("nan")


def _within_train_follow_up(train_time, test_time, test_event):
    """Make test data usable by sksurv's IPCW metrics; returns (tau, test_time, test_event).

    sksurv estimates the censoring survival G on the training data and raises when asked for G
    past the last training time (it is unknown there; and G may have dropped to 0 if the last
    training subject was censored). We set tau = the largest training time, evaluate only at
    t < tau, and administratively censor the test data at tau: a test time beyond tau becomes a
    censoring at tau. That changes no metric evaluated before tau: such a subject is still
    "alive at t" for every t < tau, which is all the Brier score and the dynamic AUC use of it,
    and Uno's C drops test times >= tau anyway.
    """
    tau = float(np.max(np.asarray(train_time, float)))
    test_time = np.asarray(test_time, float)
    beyond = test_time >= tau
    test_event = np.asarray(test_event).astype(bool) & ~beyond
    return tau, np.minimum(test_time, tau), test_event


def uno_c_index(train_time, train_event, test_time, test_event, risk, tau: float | None = None) -> float:
    """Uno's IPCW C-index on the test data, censoring weights from the training data.

    tau is truncated to the training follow-up (see `_within_train_follow_up`).
    """
    from sksurv.metrics import concordance_index_ipcw

    train_tau, test_time, test_event = _within_train_follow_up(train_time, test_time, test_event)
    tau = train_tau if tau is None else min(float(tau), train_tau)
    if not test_event[test_time < tau].any():
        return float("nan")
    estimate = concordance_index_ipcw(
        _survival_array(train_time, train_event), _survival_array(test_time, test_event), np.asarray(risk, float), tau=tau
    )
    return float(estimate[0])


def evaluation_times(train_time, test_time, test_event, quantiles: Sequence[float] = tuple(np.linspace(0.1, 0.9, 9))) -> np.ndarray:
    """Time grid valid for sksurv's dynamic AUC and Brier score: quantiles of the test event
    times, kept inside [first test event, min(train tau, last test time)) so that every t has at
    least one case (event by t) and one control (alive after t)."""
    tau, test_time, usable_event = _within_train_follow_up(train_time, test_time, test_event)
    upper = min(tau, float(test_time.max()))
    event_times = test_time[usable_event & (test_time < upper)]
    if event_times.size == 0:
        return np.array([])
    times = np.unique(np.quantile(event_times, quantiles))
    return times[(times >= event_times.min()) & (times < upper)]


def time_dependent_auc(train_time, train_event, test_time, test_event, risk, times: Sequence[float] | None = None):
    """Cumulative/dynamic AUC(t) (sksurv). Returns (times, auc(t), mean AUC); NaNs if no valid t."""
    from sksurv.metrics import cumulative_dynamic_auc

    _, test_time_truncated, test_event_truncated = _within_train_follow_up(train_time, test_time, test_event)
    times = evaluation_times(train_time, test_time, test_event) if times is None else np.asarray(times, float)
    if times.size == 0:
        return times, np.array([]), float("nan")
    auc, mean_auc = cumulative_dynamic_auc(
        _survival_array(train_time, train_event),
        _survival_array(test_time_truncated, test_event_truncated),
        np.asarray(risk, float),
        times,
    )
    return times, auc, float(mean_auc)


def integrated_brier(train_time, train_event, test_time, test_event, survival: np.ndarray, times: Sequence[float]) -> float:
    """Integrated Brier score (sksurv) of predicted S(t|x) (n × len(times)); lower is better."""
    from sksurv.metrics import integrated_brier_score

    times = np.asarray(times, float)
    if times.size < 2:
        return float("nan")  # sksurv integrates over the grid: needs at least two times
    _, test_time_truncated, test_event_truncated = _within_train_follow_up(train_time, test_time, test_event)
    return float(
        integrated_brier_score(
            _survival_array(train_time, train_event), _survival_array(test_time_truncated, test_event_truncated), survival, times
        )
    )


# -- cross-validation --------------------------------------------------------------------------
METRICS = ("harrell_c", "uno_c", "mean_auc", "integrated_brier")


@dataclass
class CrossValidationResult:
    per_fold: pd.DataFrame  # one row per (model, fold)
    test_indices: dict[str, list[np.ndarray]] = field(default_factory=dict)  # model -> test rows per fold

    def summary(self) -> pd.DataFrame:
        """Mean and sd across folds per model, plus a readable 'mean ± sd' column per metric."""
        grouped = self.per_fold.groupby("model", sort=False)[list(METRICS)]
        mean, sd = grouped.mean(), grouped.std(ddof=1)
        table = pd.DataFrame(index=mean.index)
        for metric in METRICS:
            table[f"{metric}_mean"] = mean[metric]
            table[f"{metric}_sd"] = sd[metric]
            table[metric] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[metric], sd[metric])]
        return table

    def to_json(self) -> dict:
        summary = self.summary()
        return {
            "folds": int(self.per_fold["fold"].nunique()),
            "per_fold": self.per_fold.to_dict(orient="records"),
            "summary": {model: {k: (float(v) if not isinstance(v, str) else v) for k, v in row.items()} for model, row in summary.iterrows()},
        }


def make_folds(event: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Test indices of stratified K folds: stratified by event (and by `groups`, e.g. site, when
    every event × group cell has at least `folds` members)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(event).astype(int).astype(str)
    if groups is not None:
        combined = pd.Series(labels) + "|" + pd.Series(np.asarray(groups).astype(str))
        if combined.value_counts().min() >= folds:
            labels = combined.to_numpy()
    if pd.Series(labels).value_counts().min() < folds:
        raise NdaeError(f"cross-validation: {folds} folds need at least {folds} events and {folds} censored subjects")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]


def cross_validate_cox(
    df: pd.DataFrame,
    feature_sets: Mapping[str, Sequence[str]],
    folds: int = 5,
    seed: int = 0,
    strata: Sequence[str] | None = None,
    penalizer: float = 0.0,
    duration_col: str = "time",
    event_col: str = "event",
    test_folds: Sequence[np.ndarray] | None = None,
) -> CrossValidationResult:
    """K-fold CV of one Cox model per feature set, all on the SAME folds (a paired comparison).

    Per fold and model: Harrell's C and Uno's C of the test log partial hazard, mean dynamic AUC
    and integrated Brier score on a time grid that depends on the fold's data only.
    `test_folds`: the folds' test row indices, given (e.g. grouped by source anatomy,
    `ndae.evaluation.grouped_cv.grouped_folds`) instead of made here from `folds` and `seed`.
    """
    from ndae.survival.cox import CoxModel

    if not feature_sets:
        raise NdaeError("cross-validation: no feature sets given")
    all_columns = sorted({c for columns in feature_sets.values() for c in columns})
    validate_survival_frame(df, all_columns, duration_col, event_col, strata, where="cross-validation table")
    df = df.reset_index(drop=True)
    time, event = df[duration_col].to_numpy(float), df[event_col].to_numpy(int)
    groups = df[list(strata)].astype(str).agg("|".join, axis=1).to_numpy() if strata else None
    if test_folds is not None:
        from ndae.evaluation.grouped_cv import fold_labels

        fold_labels(list(test_folds), len(df))  # a partition of the rows, or a clear error
        fold_test_indices = [np.sort(np.asarray(test, int)) for test in test_folds]
    else:
        fold_test_indices = make_folds(event, folds, seed, groups)

    rows, used = [], {name: [] for name in feature_sets}
    for fold, test_index in enumerate(fold_test_indices):
        train_index = np.setdiff1d(np.arange(len(df)), test_index)
        train, test = df.iloc[train_index], df.iloc[test_index]
        times = evaluation_times(time[train_index], time[test_index], event[test_index])
        for name, columns in feature_sets.items():
            used[name].append(test_index.copy())
            model = CoxModel(penalizer=penalizer, strata=strata).fit(train, duration_col, event_col, covariates=columns)
            risk = model.predict_log_partial_hazard(test)
            args = (time[train_index], event[train_index], time[test_index], event[test_index])
            _, _, mean_auc = time_dependent_auc(*args, risk, times=times)
            try:
                survival = model.predict_survival_function(test, times) if times.size >= 2 else None
            except NdaeError:
                survival = None  # a stratum seen only in this test fold: no baseline, no Brier score
            rows.append(
                {
                    "model": name,
                    "fold": fold,
                    "n_test": len(test_index),
                    "events_test": int(event[test_index].sum()),
                    "harrell_c": harrell_c_index(time[test_index], event[test_index], risk),
                    "uno_c": uno_c_index(*args, risk),
                    "mean_auc": mean_auc,
                    "integrated_brier": integrated_brier(*args, survival, times) if survival is not None else float("nan"),
                }
            )
    return CrossValidationResult(pd.DataFrame(rows), used)
