"""Time-dependent accuracy of Cox risks, beside the C-index: cumulative/dynamic AUC(t), the Brier
score over time and its integral (scikit-survival), and calibration at a horizon (predicted vs
Kaplan–Meier observed survival, lifelines).

All from out-of-fold predictions: each patient's risk and S(t | x) come from a Cox model fitted
without that patient's fold, so the curves are not the in-sample optimism of the fit. The IPCW
censoring weights are the Kaplan–Meier of the censoring times of all patients (no model in them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.survival.metrics import _survival_array, evaluation_times, make_folds

CALIBRATION_FIGURE = "calibration.png"
AUC_FIGURE = "time_dependent_auc.png"
BRIER_FIGURE = "brier_score.png"


def out_of_fold_predictions(table: pd.DataFrame, feature_sets: Mapping[str, Sequence[str]], times: np.ndarray,
                            strata: Sequence[str] | None = None, folds: int = 5, seed: int = 0,
                            penalizer: float = 0.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model: (risk, survival n × len(times)) of every row from the Cox model of the other
    folds; NaN rows where a fold's model cannot predict (a stratum only in the test fold)."""
    from ndae.survival.cox import CoxModel

    event = table["event"].to_numpy(int)
    groups = table[list(strata)].astype(str).agg("|".join, axis=1).to_numpy() if strata else None
    test_folds = make_folds(event, folds, seed, groups)
    out = {name: (np.full(len(table), np.nan), np.full((len(table), len(times)), np.nan)) for name in feature_sets}
    for test in test_folds:
        train = np.setdiff1d(np.arange(len(table)), test)
        for name, columns in feature_sets.items():
            model = CoxModel(penalizer=penalizer, strata=strata).fit(table.iloc[train], "time", "event",
                                                                    covariates=list(columns))
            out[name][0][test] = model.predict_log_partial_hazard(table.iloc[test])
            try:
                out[name][1][test] = model.predict_survival_function(table.iloc[test], times)
            except NdaeError:
                pass  # no baseline for a stratum seen only in this fold: those rows stay NaN
    return out


def calibration_bins(predicted: np.ndarray, time: np.ndarray, event: np.ndarray, horizon: float,
                     groups: int) -> list[dict]:
    """Patients in `groups` equal-size groups of predicted S(horizon); per group the mean
    predicted survival and the Kaplan–Meier survival at the horizon with its 95 % CI."""
    from lifelines import KaplanMeierFitter

    order = np.argsort(predicted, kind="stable")
    bins = []
    for members in np.array_split(order, groups):
        if members.size == 0:
            continue
        fitter = KaplanMeierFitter().fit(time[members], event[members])
        interval = fitter.confidence_interval_survival_function_
        position = max(int(np.searchsorted(fitter.survival_function_.index.to_numpy(), horizon, side="right")) - 1, 0)
        bins.append({"n": int(members.size), "events": int(event[members].sum()),
                     "predicted": float(np.mean(predicted[members])),
                     "observed": float(fitter.survival_function_at_times(horizon).iloc[0]),
                     "observed_lower": float(interval.iloc[position, 0]),
                     "observed_upper": float(interval.iloc[position, 1])})
    return bins


def time_dependent_metrics(table: pd.DataFrame, feature_sets: Mapping[str, Sequence[str]], out_dir: str | Path,
                           strata: Sequence[str] | None = None, folds: int = 5, seed: int = 0,
                           penalizer: float = 0.0, what: str = "out-of-fold Cox") -> dict:
    """AUC(t), Brier(t), integrated Brier score and calibration of each model's out-of-fold
    predictions; writes `time_dependent_auc.png`, `brier_score.png`, `calibration.png` (of the
    last model in `feature_sets`, the full one by convention) into `out_dir`. Returns the JSON
    dict; a table too small for it says why under `not_computed` instead of raising."""
    from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score

    from ndae.survival.figures import plot_brier, plot_calibration, plot_time_dependent_auc

    out_dir = Path(out_dir)
    table = table.reset_index(drop=True)
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(int)
    times = evaluation_times(time, time, event)
    if times.size < 2:
        return {"not_computed": "fewer than two event times inside the follow-up: no time grid"}
    # stratified folds need each fold to hold an event and a censored patient: fewer folds, not none
    folds = int(min(folds, event.sum(), (event == 0).sum()))
    if folds < 2:
        return {"not_computed": "out-of-fold predictions need at least two events and two censored patients"}
    try:
        predictions = out_of_fold_predictions(table, feature_sets, times, strata, folds, seed, penalizer)
    except (NdaeError, ValueError, np.linalg.LinAlgError) as error:  # too few events for K folds, a fold's fit
        return {"not_computed": str(error).splitlines()[0][:300]}
    usable = np.all([np.isfinite(s).all(axis=1) for _, s in predictions.values()], axis=0)
    if usable.sum() < 10 or event[usable].sum() < 2:
        return {"not_computed": "too few patients with out-of-fold predictions"}
    reference = _survival_array(time, event)  # censoring weights: KM of all patients' censoring
    target = _survival_array(time[usable], event[usable])
    result: dict = {"kind": f"{what} predictions ({folds} folds)", "times_months": times.tolist(), "models": {},
                    "n": int(usable.sum()), "events": int(event[usable].sum())}
    auc_curves, auc_means, brier_curves, integrated = {}, {}, {}, {}
    km_survival = _kaplan_meier_at(time, event, times)
    for name, (risk, survival) in [("Kaplan–Meier (no covariates)", (None, np.tile(km_survival, (usable.sum(), 1)))),
                                   *((n, (r[usable], s[usable])) for n, (r, s) in predictions.items())]:
        entry: dict = {}
        if risk is not None:
            auc, mean_auc = cumulative_dynamic_auc(reference, target, risk, times)
            entry.update(auc=auc.tolist(), mean_auc=float(mean_auc))
            auc_curves[name], auc_means[name] = auc, float(mean_auc)
        _, brier = brier_score(reference, target, survival, times)
        entry.update(brier=brier.tolist(), integrated_brier=float(integrated_brier_score(reference, target, survival, times)))
        brier_curves[name], integrated[name] = brier, entry["integrated_brier"]
        result["models"][name] = entry
    subtitle = f"{what}, {usable.sum()} patients"
    plot_time_dependent_auc(times, auc_curves, auc_means, out_dir / AUC_FIGURE, subtitle)
    plot_brier(times, brier_curves, integrated, out_dir / BRIER_FIGURE, subtitle)
    full = list(feature_sets)[-1]
    horizon = float(np.quantile(times, 0.5))
    column = int(np.argmin(np.abs(times - horizon)))
    horizon = float(times[column])
    groups = int(np.clip(usable.sum() // 15, 2, 5))
    bins = calibration_bins(predictions[full][1][usable, column], time[usable], event[usable], horizon, groups)
    plot_calibration(bins, horizon, out_dir / CALIBRATION_FIGURE, full, subtitle)
    result["calibration"] = {"model": full, "horizon_months": horizon, "groups": bins}
    result["figures"] = {"auc": AUC_FIGURE, "brier": BRIER_FIGURE, "calibration": CALIBRATION_FIGURE}
    return result


def _kaplan_meier_at(time: np.ndarray, event: np.ndarray, times: np.ndarray) -> np.ndarray:
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter().fit(time, event).survival_function_at_times(times).to_numpy()


def time_dependent_lines(result: dict | None, folder: str = "") -> list[str]:
    """Markdown: the table of mean AUC and integrated Brier score per model, the calibration at the
    horizon, and the three figures (paths relative to the report, under `folder`)."""
    if not result:
        return []
    lines = ["", "### Time-dependent AUC, Brier score and calibration", ""]
    if "not_computed" in result:
        return lines + [f"Not computed: {result['not_computed']}."]
    prefix = f"{folder.rstrip('/')}/" if folder else ""
    lines += [f"{result['kind']} of {result['n']} patients ({result['events']} events), evaluated at "
              f"{len(result['times_months'])} times ({result['times_months'][0]:.1f}–{result['times_months'][-1]:.1f} "
              "months; quantiles of the event times). AUC(t): cumulative/dynamic (who dies by t against who is alive "
              "after t); Brier: IPCW, lower is better; the Kaplan–Meier row gives every patient the same curve.", "",
              "| model | mean AUC(t) | integrated Brier score |", "|---|---|---|"]
    for name, entry in result["models"].items():
        auc = f"{entry['mean_auc']:.3f}" if "mean_auc" in entry else "–"
        lines.append(f"| {name} | {auc} | {entry['integrated_brier']:.3f} |")
    calibration = result["calibration"]
    lines += ["", f"Calibration of {calibration['model']} at {calibration['horizon_months']:.1f} months "
              "(groups of patients by predicted survival; observed = Kaplan–Meier):", "",
              "| group | patients | events | predicted survival | observed survival (95% CI) |", "|---|---|---|---|---|"]
    for k, b in enumerate(calibration["groups"], 1):
        lines.append(f"| {k} | {b['n']} | {b['events']} | {b['predicted']:.2f} | {b['observed']:.2f} "
                     f"({b['observed_lower']:.2f}–{b['observed_upper']:.2f}) |")
    figures = result["figures"]
    lines += ["", f"![Time-dependent AUC]({prefix}{figures['auc']})", "", f"![Brier score over time]({prefix}{figures['brier']})",
              "", f"![Calibration at {calibration['horizon_months']:.0f} months]({prefix}{figures['calibration']})"]
    return lines
