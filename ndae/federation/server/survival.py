"""The server's survival outputs: which covariates the Cox model takes, the pooled table and
its Cox fit, the `survival/` files of both modes and the Kaplan–Meier curves from summed counts;
and what the imaging adds over the nested covariates-only model (`survival/covariates_only/`):
in-sample within-site from the sites' paired concordance aggregates (both modes), cross-validated
where the server holds the rows (pooled mode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ndae.federation.server.errors import FederationError
from ndae.io import atomic_save_figure, atomic_write_json, atomic_write_text, finite_or_null

__all__ = ["CLINICAL", "covariates_only", "cross_validated_added_value", "cross_validated_added_value_or_reason",
           "fit_pooled_cox", "km_from_counts", "pooled_cox_coefficients", "pooled_survival_extras", "pooled_table", "save_federated_cox", "save_pooled_cox", "survival_covariates", "within_site_added_value"]

CLINICAL = ("age", "sex_female")
TERTILES = ("low", "middle", "high")


def survival_covariates(features: list[str], moments: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """The deviation scores and clinical covariates that vary across all answering sites, from
    their summed moments (n, sum, sum of squares); all candidates when no site sent moments
    (private runs). A constant deviation score is an error: the model could not estimate it."""
    candidates = [*features, *CLINICAL]
    if not moments:
        return candidates
    n = sum(float(m["n"]) for m in moments.values())
    if n < 2:
        raise FederationError(f"survival: {n:g} patients with deviation scores across sites {sorted(moments)}")
    total = sum(m["sum"] for m in moments.values())
    squares = sum(m["sum_of_squares"] for m in moments.values())
    variance = (squares - total**2 / n) / (n - 1)
    constant = [c for c, v in zip(candidates, variance) if not v > 1e-12]
    if any(c in features for c in constant):
        raise FederationError(f"survival: deviation score(s) {constant} are constant across patients")
    return [c for c in candidates if c not in constant]


def pooled_table(tables: list[pd.DataFrame], features: list[str], run_dir: Path) -> pd.DataFrame:
    """The sites' shared rows as one table (numbers as float); its score columns are written to
    `deviations.csv`."""
    table = pd.concat(tables, ignore_index=True)
    for column in ("age", "sex_female", "time", "event", *features):
        table[column] = table[column].astype(float)
    score_columns = [c for c in table.columns if c not in ("site", "age", "sex_female", "time", "event")]
    atomic_write_text(Path(run_dir) / "deviations.csv",
                      table[score_columns].to_csv(index=False, lineterminator="\n", float_format="%.10g"))
    return table


POOLED_FIT_OPTIONS = {"precision": 1e-13, "r_precision": 1e-15}


def fit_pooled_cox(table: pd.DataFrame, covariates: list[str]):
    """lifelines' stratified (by site) Efron Cox on the pooled rows, run to full convergence
    (its default stops ~1e-6 early), so pooled and federated modes agree to rounding."""
    from lifelines import CoxPHFitter

    from ndae.survival._validation import validate_survival_frame
    from ndae.survival.cox import lifelines_table

    validate_survival_frame(table, covariates, "time", "event", ["site"], where="pooled Cox fit")
    frame = lifelines_table(table, covariates, "time", "event", ["site"])
    return CoxPHFitter().fit(frame, "time", "event", strata=["site"], fit_options=POOLED_FIT_OPTIONS)


def pooled_cox_coefficients(table: pd.DataFrame, covariates: list[str]) -> np.ndarray:
    """`fit_pooled_cox(table, covariates).params_` in `covariates` order, by the same lifelines fit
    without what it computes for a person to read (`ndae.survival.refit`): for refits whose
    coefficients alone are used. Raises what `fit_pooled_cox` raises."""
    from ndae.survival._validation import validate_survival_frame
    from ndae.survival.refit import coefficients

    validate_survival_frame(table, covariates, "time", "event", ["site"], where="pooled Cox fit")
    return coefficients(table, "time", "event", covariates, strata=["site"], fit_options=POOLED_FIT_OPTIONS)[0]


def save_pooled_cox(out: Path, fitter, covariates: list[str]) -> None:
    from ndae.survival.cox import hazard_ratio_table

    coef, se = fitter.params_.reindex(covariates), fitter.standard_errors_.reindex(covariates)
    atomic_write_json(out / "cox.json", finite_or_null({
        "model": "cox_proportional_hazards", "ties": "efron", "fitted_by": "lifelines CoxPHFitter on pooled rows",
        "strata": ["site"], "covariates": covariates, "coef": dict(zip(covariates, coef.tolist())),
        "se": dict(zip(covariates, se.tolist())), "variance_matrix": fitter.variance_matrix_.to_numpy().tolist(),
        "means": dict(zip(covariates, fitter._norm_mean.reindex(covariates).tolist())),
        "n": int(fitter._n_examples), "events": int(fitter.event_observed.sum()),
        "log_likelihood": float(fitter.log_likelihood_), "concordance_index_train": float(fitter.concordance_index_)}))
    atomic_write_text(out / "hazard_ratios.csv", hazard_ratio_table(coef, se).to_csv(index=False))


def save_federated_cox(out: Path, fitter, covariates: list[str]) -> None:
    """`cox.json` + `hazard_ratios.csv`, the same files `CoxModel.save` writes for pooled mode."""
    from ndae.survival.cox import hazard_ratio_table

    atomic_write_json(out / "cox.json", finite_or_null({
        "model": "cox_proportional_hazards", "ties": "efron", "fitted_by": "federated Newton-Raphson",
        "strata": ["site"], "covariates": covariates,
        "coef": dict(zip(covariates, fitter.params_.tolist())),
        "se": dict(zip(covariates, fitter.standard_errors_.tolist())),
        "variance_matrix": fitter.variance_matrix_.to_numpy().tolist(),
        "n": fitter.n_, "events": fitter.events_, "log_likelihood": fitter.log_likelihood_,
        "message_rounds": fitter.n_rounds_, "sites": sorted(fitter.sites_)}))
    atomic_write_text(out / "hazard_ratios.csv",
                      hazard_ratio_table(fitter.params_, fitter.standard_errors_, fitter.alpha).to_csv(index=False))


def km_from_counts(rows: np.ndarray, path: Path, covariates: list[str] | None = None) -> dict[str, Any]:
    """Kaplan–Meier curves from summed (group, month, event, count) rows; writes the PNG (censor
    marks and at-risk table from the same counts). `covariates`: those of the Cox risk the sites
    split on, named in the figure."""
    from lifelines import KaplanMeierFitter

    from ndae.survival.figures import plot_kaplan_meier

    frame = pd.DataFrame(np.asarray(rows).reshape(-1, 4), columns=["group", "month", "event", "count"])
    result: dict[str, Any] = {"figure": path.name, "grouping": "tertiles of x·beta within each site",
                              "median_survival_months": {}, "group_sizes": {}}
    if frame.empty:
        return result
    risk = f"Cox risk x·β ({', '.join(covariates)})" if covariates else "Cox risk x·β"
    curves = []
    for index, label in enumerate(TERTILES):
        part = frame[frame["group"] == index]
        if part.empty:
            continue
        n = int(part["count"].sum())
        fitter = KaplanMeierFitter(label=f"{label} third (n={n})").fit(part["month"], part["event"], weights=part["count"])
        curves.append((fitter.label, fitter))
        median = float(fitter.median_survival_time_)
        result["median_survival_months"][label] = median if np.isfinite(median) else None
        result["group_sizes"][label] = n
    result["grouping"] = f"tertiles of the {risk} within each site"
    plot_kaplan_meier(curves, path, "Kaplan–Meier from the sites' summed counts", split_on=f"thirds within each site of the {risk}",
                      ci_show=False)
    return result


def pooled_survival_extras(table: pd.DataFrame, beta: np.ndarray, covariates: list[str], out: Path) -> dict:
    """Pooled mode only (the server holds the rows): global Harrell's C, validated by refitting the
    stratified Cox on bootstrap resamples (a bootstrap of the fixed in-sample risk would never see
    its optimism), and KM curves by global tertile of the Cox risk."""
    from ndae.survival.kaplan_meier import kaplan_meier_by_tertile
    from ndae.survival.validated_c import refit_bootstrap_c

    table = table.copy()
    table["risk"] = table[covariates].to_numpy(float) @ np.asarray(beta, float)
    validated = refit_bootstrap_c(table, covariates, strata=["site"], n_boot=100, seed=0)
    extras: dict[str, Any] = {"c_index_pooled": {"estimate": validated["apparent"], **validated}}
    if len(table) >= 6:
        km = kaplan_meier_by_tertile(table, "risk", path=out / "km_risk.png",
                                     title="Kaplan–Meier by tertile of Cox risk (pooled)",
                                     split_on=f"Cox risk x·β ({', '.join(covariates)})")
        extras["km_pooled"] = {**km.to_json(), "figure": "km_risk.png", "split_on": covariates}
    from ndae.survival.time_dependent import time_dependent_metrics

    reference = [c for c in covariates if c in CLINICAL]
    models = {"covariates only": reference, "full model": covariates} if reference else {"full model": covariates}
    extras["time_dependent"] = time_dependent_metrics(table, models, out, strata=["site"])
    return extras


def covariates_only(covariates: list[str], features: list[str]) -> list[str]:
    """The reference model's covariates: the full model's minus the deviation scores (nested)."""
    return [c for c in covariates if c not in features]


def within_site_added_value(site_aggregates: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Full − covariates-only Harrell's C on the within-site pairs of the training patients, with a
    95 % CI, from the sites' paired concordance aggregates (`paired_sums`, `paired_cross`)."""
    from ndae.federation.paired_concordance import combine

    result = combine([{"sums": a["paired_sums"], "cross": a["paired_cross"]} for a in site_aggregates.values()])
    variance = result.pop("variance")
    return {**result, "kind": "in-sample, within-site pairs", "ci": f"normal, {variance}", "sites": sorted(site_aggregates)}


GROUP_COLUMNS = ("source_subject",)  # patients drawn from one anatomy share a fold (ndae.evaluation.grouped_cv)


def cross_validated_added_value(table: pd.DataFrame, covariates: list[str], reference_covariates: list[str],
                                folds: int = 5, seed: int = 0, n_boot: int = 500) -> dict[str, Any]:
    """Pooled mode: out-of-fold risks of the full and the covariates-only Cox model (both
    stratified by site, refitted on each training fold), and the difference of their CV
    Harrell's C (mean over test folds, all pairs in a fold) with a paired bootstrap 95 % CI
    (`ndae.evaluation.truth_metrics.paired_bootstrap_c`). Folds are grouped by a grouping
    column where the table has one."""
    from ndae.evaluation.grouped_cv import fold_labels, grouped_folds
    from ndae.evaluation.truth_metrics import fold_concordance, paired_bootstrap_c

    table = table.reset_index(drop=True)
    group_column = next((c for c in GROUP_COLUMNS if c in table.columns), None)
    groups = table[group_column].astype(str).to_numpy() if group_column else None
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(float)
    test_folds = grouped_folds(event.astype(int), groups, folds, seed)
    labels = fold_labels(test_folds, len(table))
    risks = {"model": np.full(len(table), np.nan), "reference": np.full(len(table), np.nan)}
    for k in range(len(test_folds)):
        test = labels == k
        for name, columns in (("model", covariates), ("reference", reference_covariates)):
            risks[name][test] = table.loc[test, columns].to_numpy(float) @ pooled_cox_coefficients(table[~test], columns)
    if not all(np.isfinite(r).all() for r in risks.values()):
        raise FederationError("cross-validated added value: a fold's Cox fit gave non-finite risks")
    c_model = fold_concordance(time, event, risks["model"], test_folds, uno=False)["harrell_c"]
    c_reference = fold_concordance(time, event, risks["reference"], test_folds, uno=False)["harrell_c"]
    paired = paired_bootstrap_c(time, event, risks["model"], risks["reference"], test_folds, groups,
                                n_boot=n_boot, seed=seed)
    return {"kind": f"cross-validated ({len(test_folds)} folds, "
                    + (f"grouped by {group_column}" if group_column else "one patient per group") + ")",
            "ci": f"percentile, paired bootstrap over {'groups' if group_column else 'patients'} "
                  f"({paired['n_boot']} draws; models not refitted)",
            "c_model": float(c_model), "c_reference": float(c_reference), "difference": paired["difference"],
            "lower": paired["lower"], "upper": paired["upper"], "level": 0.95, "folds": len(test_folds),
            "n": int(len(table))}


def cross_validated_added_value_or_reason(table: pd.DataFrame, covariates: list[str], reference_covariates: list[str],
                                          seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """`cross_validated_added_value`, or why not: a table too small to cross-validate costs the
    report this estimate, not the run."""
    from lifelines.exceptions import ConvergenceError

    from ndae.errors import NdaeError

    try:
        return cross_validated_added_value(table, covariates, reference_covariates, seed=seed)
    except (NdaeError, ConvergenceError, np.linalg.LinAlgError) as error:
        log(f"[survival] cross-validated added value not computed: {error}")
        return {"not_computed": str(error).splitlines()[0][:300]}
