"""The RESULTS section of the pipeline-modes benchmark, rendered from its raw results (`raw`): the
tables, the checks, and a reading whose every comparison is computed (`benchmarks.statements`):
a difference is called a difference only where its paired 95 % CI excludes 0."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import write_section
from benchmarks.modes.names import CENTRAL, FEDCOX, ORACLE, POOLED, SCORES, all_modes, dp_mode
from benchmarks.statements import compare, half_width, truth_reading, versus_chance
from ndae.evaluation.paired import paired_difference, select, t_interval

TITLE = "Pipeline modes: centralised vs federated vs DP, over cohort seeds"
COEF_TOLERANCE = 1e-6  # pooled and federated Cox solve the same likelihood; Newton–Raphson stops near 1e-9


def cell(values, digits: int = 3) -> str:
    """mean ± sd [95 % t-interval] over cohort seeds."""
    mean, sd, low, high = t_interval(values)
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def cell_sd(values, digits: int = 0) -> str:
    """mean ± sd (no interval: for seconds and accounted ε, where a t-interval says nothing)."""
    mean, sd, _, _ = t_interval(values)
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not np.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summary_cell(stat: dict, digits: int = 3) -> str:
    """A {mean, sd, low, high} summary as `cell` prints it."""
    mean, sd, low, high = (stat.get(k, math.nan) for k in ("mean", "sd", "low", "high"))
    mean, sd, low, high = (math.nan if v is None else v for v in (mean, sd, low, high))
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _e(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.1e}"


def render(raw: dict, seeds: pd.DataFrame, per_fold: pd.DataFrame) -> str:
    """The section body (without its provenance header)."""
    parts = [_setup(raw), _survival_tables(raw, seeds), _truth_aware(raw), _checks(raw, seeds, per_fold), _calibration(raw),
             _figures(raw), _per_seed(seeds), ["### Reading", "", reading(raw, seeds, per_fold)]]
    return "\n".join(line for part in parts for line in [*part, ""]).rstrip() + "\n"


def write(raw: dict, seeds: pd.DataFrame, per_fold: pd.DataFrame, folder: Path) -> Path:
    return write_section("modes", TITLE, render(raw, seeds, per_fold), run=raw["provenance"], folder=folder)


# ---- parts ----------------------------------------------------------------------------------
def _setup(raw: dict) -> list[str]:
    s, n = raw["settings"], len(raw["settings"]["cohort_seeds"])
    sizes = []
    for seed in s["cohort_seeds"]:
        cohort, check = raw["cohorts"][seed], raw["checks"][seed]
        per_site = ", ".join(f"{site} {c}/{p}" for site, (c, p) in cohort["per_site"].items())
        sizes.append(f"seed {seed}: {cohort['controls']} controls, {check['patients']} patients, {check['events']} events "
                     f"(controls/patients per site: {per_site})")
    threads = "one torch thread" if s["threads"] == 1 else f"{s['threads']} torch threads"
    return [
        f"Schedule: DAE preset `{s['preset']}`, batch {s['batch_size']}, **{s['rounds']} rounds × {s['epochs']} local "
        f"epochs** in every mode (the centralised run is the same code with one site holding everyone, so the same "
        f"R × E passes over all controls), FedAvg, DAE seed {s['seed']}; runs in process (`InProcessGrid` + "
        f"`run_federation`, the ClientApp/ServerApp handlers of a Flower deployment), {s['workers']} runs at a time "
        f"in separate processes, {threads} each. Total {raw['total_s'] / 60:.1f} min "
        f"(cohort generation and slice preparation {raw['cohort_s'] / 60:.1f} min)." + _reuse(raw["reuse"]), "",
        f"Cohorts: {n} simulated 3-site ALS cohorts (`ndae.cohort.generate_cohort`, cohort seeds "
        f"{' '.join(map(str, s['cohort_seeds']))}) from the {raw['source_scans']} shipped IXI demo scans; "
        + "; ".join(sizes) + ".", "",
        f"Evaluation: for every mode, the run's per-patient deviation scores (`deviations.csv`) joined with the "
        f"cohort's follow-up and `truth.csv`; {s['folds']}-fold CV (grouped by source anatomy, stratified by event, fold "
        f"seed {s['cv_seed']}; the "
        f"SAME folds for every mode and score of a cohort seed, checked) of a Cox model on each score alone "
        f"(L2 penalty {s['penalizer']:g}, as `ndae evaluate`); per cohort seed the mean over folds, then **mean ± sd "
        f"over the {n} cohort seeds [95 % t-interval over seeds, t with {n - 1} df]**. Oracle: the same CV of a Cox "
        f"model on the true linear predictor, and C* = Harrell's C of the true risk on all patients (in sample). "
        f"Differences in the reading are paired over the same folds: per cohort seed the mean of the per-fold "
        f"differences, then the 95 % t-interval over seeds.",
    ]


def _reuse(reuse: dict) -> str:
    if not reuse.get("reused"):
        return ""
    return (f" {reuse['reused']} of {reuse['runs']} runs were reused (`--reuse-runs`: finished runs of the same cohorts "
            f"and schedule, from an earlier invocation); their wall seconds are from that invocation, and all runs ran "
            f"within {reuse['span_min']:.1f} min of wall time, from the first run's start to the last run's end (file "
            "times). The total above is this invocation's.")


def _column(seeds: pd.DataFrame, mode: str, name: str) -> np.ndarray:
    return seeds.loc[(seeds["mode"] == mode) & (seeds["error"] == ""), name].to_numpy(float)


def _survival_tables(raw: dict, seeds: pd.DataFrame) -> list[str]:
    s, modes = raw["settings"], all_modes(raw["settings"]["epsilons"])
    lines = [f"### Survival: Harrell's C ({s['folds']}-fold CV)", "",
             "| mode | NDAE cosine | NDAE Mahalanobis | NDAE mean abs z | in-sample C (run, within site) | accounted ε (max over sites; mean ± sd) | run wall s (mean ± sd) |",
             "|---|---|---|---|---|---|---|"]
    for mode in modes:
        failed = seeds.loc[(seeds["mode"] == mode) & (seeds["error"] != ""), "error"]
        suffix = f" ({len(failed)} run(s) failed: {failed.iloc[0][:120]})" if len(failed) else ""
        eps = "–" if not mode.startswith("DP") else cell_sd(_column(seeds, mode, "accounted_epsilon_max"), 2)
        lines.append(f"| {mode}{suffix} | {cell(_column(seeds, mode, 'cosine_harrell_c'))} | "
                     f"{cell(_column(seeds, mode, 'mahalanobis_harrell_c'))} | {cell(_column(seeds, mode, 'mean_abs_z_harrell_c'))} | "
                     f"{cell(_column(seeds, mode, 'c_in_sample_within_site'))} | {eps} | {cell_sd(_column(seeds, mode, 'wall_s'))} |")
    oracle_c = [raw["checks"][seed]["oracle_c"] for seed in s["cohort_seeds"]]
    lines.append(f"| {ORACLE}: Cox on true risk, CV | {cell(_column(seeds, POOLED, 'true_risk_harrell_c'))} | | | C* = "
                 f"{cell(np.array(oracle_c, float))} | | |")
    lines += ["", f"### Survival: Uno's C ({s['folds']}-fold CV)", "",
              "| mode | NDAE cosine | NDAE Mahalanobis | NDAE mean abs z |", "|---|---|---|---|"]
    for mode in modes:
        lines.append(f"| {mode} | {cell(_column(seeds, mode, 'cosine_uno_c'))} | {cell(_column(seeds, mode, 'mahalanobis_uno_c'))} | "
                     f"{cell(_column(seeds, mode, 'mean_abs_z_uno_c'))} |")
    lines.append(f"| {ORACLE} | {cell(_column(seeds, POOLED, 'true_risk_uno_c'))} | | |")
    return lines


def _truth_aware(raw: dict) -> list[str]:
    """Expected C, risk concordance, ρ severity, AUROC and the paired differences (benchmarks/truth_eval.py)."""
    from benchmarks.truth_eval import VOXELWISE, table_lines

    rows, per_seed = raw.get("truth_summary"), raw.get("truth") or {}
    if not rows:
        return ["(These raw results predate the truth-aware metrics.)"]
    first = next(iter(per_seed.values()))
    voxel = first.get("voxelwise", {})
    held = first.get("held_out_modes", [])
    references = {"covariates": f"the covariates-only model ({', '.join(first.get('covariates', []))})",
                  VOXELWISE: "the voxel-wise baseline"}

    def reference_of(model: str):
        if model in ("covariates", ORACLE):
            return None, None
        return "covariates", (None if model.startswith(VOXELWISE) else VOXELWISE)

    return [
        "### Survival: truth-aware metrics", "",
        f"Per cohort seed ({len(per_seed)}: {', '.join(f'{first_key}' for first_key in per_seed)}): "
        f"{'/'.join(sorted({str(r['patients']) for r in per_seed.values()}))} patients from "
        f"{'/'.join(sorted({str(r['source_anatomies']) for r in per_seed.values()}))} source anatomies; every mode's "
        f"score and the reference models on the SAME {first['folds']}-fold CV grouped by source anatomy and the SAME "
        f"{first['draws']} fresh survival draws from the cohort's stored survival model (`benchmarks/truth_eval.py`, "
        "`ndae.evaluation.truth_metrics`; ridge Cox refitted per fold and draw). Columns: observed CV Harrell's / Uno's C; "
        "expected C = mean CV Harrell's C over the draws (sd per draw = how far one study's C moves); risk concordance "
        "of the out-of-fold risk with the true linear predictor; ρ severity = Spearman with the true severity; AUROC of "
        f"patients vs controls the score's normative model did not see (modes with held-out controls: "
        f"{', '.join(held) or 'none'}, from the calibration folds below; the DAE did see them; voxel-wise: "
        f"{voxel.get('held_out')}); Δ = paired difference in expected C, mean over cohort seeds [95 % t-interval over "
        f"seeds]. Voxel-wise baseline: `ndae.baselines.voxelwise` fitted on the cohort's {voxel.get('training_controls')} "
        f"controls ({voxel.get('voxels_modelled')} voxels, stride {voxel.get('stride')}), mean z per atlas region. "
        "Every value is the mean over cohort seeds.", "",
        *table_lines(rows, reference_of), "",
        "Reading (computed): " + truth_reading(rows, references),
    ]


def _same_rows(per_fold: pd.DataFrame, a: str, b: str) -> float:
    """max |Δ Harrell's C| between two modes' per-fold CV rows (nan when either is missing)."""
    key = ["cohort_seed", "model", "fold"]
    left = per_fold[per_fold["mode"] == a].set_index(key)["harrell_c"]
    right = per_fold[per_fold["mode"] == b].set_index(key)["harrell_c"]
    both = left.index.intersection(right.index)
    return float(np.max(np.abs(left.loc[both] - right.loc[both]))) if len(both) else math.nan


def _checks(raw: dict, seeds: pd.DataFrame, per_fold: pd.DataFrame) -> list[str]:
    s, checks, order = raw["settings"], raw["checks"], raw["settings"]["cohort_seeds"]
    keys = next((checks[seed]["coef_keys"] for seed in order if "coef_keys" in checks[seed]), [])
    sigma = {e: max(_column(seeds, dp_mode(e), "dp_sgd_sigma"), default=math.nan) for e in s["epsilons"]}
    ok = seeds[seeds["error"] == ""]
    dae_share = np.nanmedian(ok["dae_training_s"].to_numpy(float) / ok["wall_s"].to_numpy(float)) if len(ok) else math.nan
    if s["retrain_federated_cox"]:
        fedcox = ("trains its own DAE (same seed and schedule as the pooled run); max |Δweight| between its final DAE "
                  "(model and EMA) and the pooled run's, per cohort seed: "
                  + ", ".join(_e(checks[seed].get("dae_max_abs_diff")) for seed in order)
                  + " (0 = training is deterministic given the seed).")
    else:
        fedcox = ("reuses the pooled run's DAE: the pooled run's `dae/checkpoint.pt` (after "
                  f"round {s['rounds']}) is copied into its run directory and the server's resume path (`resume=true`) "
                  "skips the finished rounds; its normative fit, scoring, Newton–Raphson Cox rounds and report are its "
                  f"own. Max |Δ Harrell's C| between its per-fold CV rows and the pooled run's: {_e(_same_rows(per_fold, POOLED, FEDCOX))}.")
    return [
        "Checks and notes:", "",
        f"- Pooled vs federated Cox (same DAE, same normative sums; Cox on {', '.join(keys)}, stratified by site): "
        f"max |Δcoef| per cohort seed {', '.join(_e(checks[seed].get('coef_max_abs_diff')) for seed in order)}; "
        f"|Δ in-sample within-site C| {', '.join(_e(checks[seed].get('c_within_diff')) for seed in order)}; max |Δ score| "
        f"between the pooled run's deviations.csv and the federated-Cox run's site-side scores "
        f"{', '.join(_e(checks[seed].get('score_max_abs_diff')) for seed in order)}.",
        "- The federated-Cox run " + fedcox,
        "- Centralised = one site: the normative model then has no site effect and the run's Cox model no site "
        "strata (the cohort's scanner differences are not modelled), unlike the 3-site runs; the CV evaluation "
        "is the same for all modes (scores alone, no strata).",
        "- DP rows: DP-SGD (Opacus, Poisson sampling) in every round and Gaussian-noised normative moments at every "
        "site; target ε = budget ε per site over the whole run (RDP accountant, δ = 1/(10·n_controls at the site)); "
        "the moments' noise multiplier is max(2, 10/ε) (as in bench_privacy), DP-SGD's σ is solved for the rest "
        "(σ per ε, max over sites and seeds: " + ", ".join(f"ε={e:g}: {v:.2f}" for e, v in sigma.items()) + "). "
        "Survival is pooled here because every site's policy (node config `allow-pooled-scores=true`) was set to "
        "allow it for this benchmark, so that deviations.csv exists for the common CV evaluation; the scores "
        "themselves are not DP (a non-DP release the site consents to). Accounted ε is read from the run's "
        "privacy heads (`privacy/heads.json`).",
        f"- Run wall seconds are per run with {s['workers']} runs sharing the {raw['cores']} cores (and other work), so "
        f"they include contention; DAE training is a median {dae_share * 100:.0f} % of a run's wall time.",
    ] + [f"- Not cross-validated, cohort seed {seed}, {mode}: " + "; ".join(f"{feature} ({reason})" for feature, reason in refused.items())
         for seed in order for mode, refused in checks[seed].get("refused", {}).items()]


def _calibration(raw: dict) -> list[str]:
    s, summary = raw["settings"], raw["calibration"]
    dims = summary[0]["dims"] if summary else "?"
    lines = ["### Normative calibration on held-out controls", "",
             f"Per cohort seed, the DAE of the named run encodes every control's z_sem ({dims} dimensions); "
             f"{s['folds']}-fold CV over the controls (stratified by site): `NormativeModel` (age spline + "
             "sex + random site intercept, the cohort's true sites) fitted on the training folds, the held-out "
             "controls z-scored. Pooled over held-out controls and dimensions: mean and sd of z (calibrated: 0, 1), "
             "coverage of the central 95 % interval (|z| < 1.96; calibrated: 0.95; min–max over dimensions), "
             "MSLL (< 0: better than the training controls' mean and variance), squared Mahalanobis D² (OAS-shrunk "
             "residual covariance) over its χ²(d) expectation d, and the fraction of D² within χ²(d)'s 95 % quantile. "
             "Mean ± sd over cohort seeds.", "",
             "| DAE | controls | z mean | z sd | coverage 95 % | coverage min–max over dims | MSLL | D²/d | D² ≤ χ²₀.₉₅(d) | rank for 95 % of residual variance |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in summary:
        c = {k: summary_cell(entry[k]) for k in ("z_mean", "z_sd", "coverage_95", "msll", "d2_mean_over_d", "d2_within_chi2_95")}
        lines.append(f"| {entry['dae']} | {'–'.join(map(str, entry['controls']))} | {c['z_mean']} | {c['z_sd']} | "
                     f"{c['coverage_95']} | {entry['coverage_min_dim']:.2f}–{entry['coverage_max_dim']:.2f} | {c['msll']} | "
                     f"{c['d2_mean_over_d']} | {c['d2_within_chi2_95']} | {', '.join(map(str, entry['rank95']))} (per seed) |")
    if summary:
        lines += ["", _rank_reading(summary)]
    return lines


def _rank_reading(summary: list[dict]) -> str:
    """What D²/d says, given the rank of the residual covariance actually measured."""
    dims = summary[0]["dims"]
    ranks = [r for entry in summary for r in entry["rank95"]]
    ratios = [entry["d2_mean_over_d"]["mean"] for entry in summary]
    text = (f"D² is compared with χ²(d), d = {dims}, only as a reference: the last column is the number of "
            "eigen-directions holding 95 % of the controls' residual covariance (normative model fitted on all "
            f"controls of the seed), here {min(ranks)}–{max(ranks)} of {dims}; D²/d is "
            f"{min(ratios):.2f}–{max(ratios):.2f} (mean over seeds, per DAE).")
    if max(ranks) < dims / 2 and max(ratios) < 1:
        text += (" With the residuals in so few directions, the OAS-shrunk covariance gives the others a variance floor "
                 "the held-out residuals do not fill, which lowers D²/d below 1: the Mahalanobis score is then "
                 "conservative rather than miscalibrated per dimension (the per-dimension z above is the calibration check).")
    return text


def _figures(raw: dict) -> list[str]:
    s, figures = raw["settings"], raw["figures"]
    lines = ["### Figures", "", f"![C-index vs ε]({figures['c_vs_eps']})", "",
             f"Harrell's C ({s['folds']}-fold CV, mean ± sd over cohort seeds) of each NDAE score vs the per-site ε of the "
             "DP runs (∞: the non-private federated run); dashed: centralised (band ± sd); dotted: the CV Cox model on "
             "the true risk; grey: chance."]
    if figures.get("km"):
        keys = next((c["coef_keys"] for c in raw["checks"].values() if "coef_keys" in c), [])
        lines += ["", f"![Kaplan–Meier by risk tertile]({figures['km']})", "",
                  f"Kaplan–Meier by tertile of the in-sample Cox risk ({', '.join(keys)}), the federated pooled-Cox run "
                  f"of cohort seed {s['cohort_seeds'][0]} (its own `survival/km_risk.png`)."]
    return lines


def _per_seed(seeds: pd.DataFrame) -> list[str]:
    lines = ["### Per cohort seed", "",
             "CV Harrell's C per seed (mean over folds); full numbers in `modes_per_seed.csv` and "
             "`modes_per_fold.csv` beside this file.", "",
             "| cohort seed | mode | cosine | Mahalanobis | mean abs z | true risk | in-sample C (within site) | ε accounted | DAE train s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f3 = lambda v: "–" if v is None or not np.isfinite(v) else f"{v:.3f}"  # noqa: E731
    for row in seeds.itertuples():
        if row.error:
            lines.append(f"| {row.cohort_seed} | {row.mode} | failed: {row.error[:150]} | | | | | | | |")
            continue
        eps = "–" if not np.isfinite(row.accounted_epsilon_max) else f"{row.accounted_epsilon_max:.2f}"
        lines.append(f"| {row.cohort_seed} | {row.mode} | {f3(row.cosine_harrell_c)} | {f3(row.mahalanobis_harrell_c)} | "
                     f"{f3(row.mean_abs_z_harrell_c)} | {f3(row.true_risk_harrell_c)} | {f3(row.c_in_sample_within_site)} | "
                     f"{eps} | {row.dae_training_s:.0f} | {row.wall_s:.0f} |")
    return lines


# ---- the reading: every statement computed from the numbers ---------------------------------
def reading(raw: dict, seeds: pd.DataFrame, per_fold: pd.DataFrame) -> str:
    s = raw["settings"]
    ok = seeds[seeds["error"] == ""]
    n = len(s["cohort_seeds"])
    per_fold_patients = np.mean([raw["checks"][seed]["patients"] for seed in s["cohort_seeds"]]) / s["folds"]
    ok_fold = per_fold.merge(ok[["cohort_seed", "mode"]], on=["cohort_seed", "mode"])

    def stats(mode, column):
        return t_interval(ok.loc[ok["mode"] == mode, column].to_numpy(float))

    def diff(mode_a, model_a, mode_b, model_b):
        keys = ["cohort_seed", "fold"]
        return paired_difference(select(ok_fold, {"mode": mode_a, "model": model_a}, keys, "harrell_c"),
                                 select(ok_fold, {"mode": mode_b, "model": model_b}, keys, "harrell_c"),
                                 unit="cohort_seed").stated()

    measured = []  # every paired difference stated, for the resolution sentence at the end
    parts = []
    for mode in (CENTRAL, POOLED):
        scores = []
        for score in SCORES:
            mean, _, low, high = stats(mode, f"{score}_harrell_c")
            if np.isfinite(mean):
                scores.append(f"{score} {mean:.3f} ({versus_chance(mean, low, high)})")
        if scores:
            parts.append(f"{mode}: " + ", ".join(scores))
    text = (f"With {s['rounds']} rounds × {s['epochs']} local epochs of the `{s['preset']}` DAE, the NDAE scores' "
            f"cross-validated Harrell's C over {n} cohort seed(s) is — " + "; ".join(parts) + ". ")

    oracle = stats(POOLED, "true_risk_harrell_c")[0]
    candidates = [(stats(m, f"{c}_harrell_c")[0], m, c) for m in (CENTRAL, POOLED) for c in SCORES]
    candidates = [x for x in candidates if np.isfinite(x[0])]
    if candidates and np.isfinite(oracle):
        best, best_mode, best_score = max(candidates)
        gap = diff(POOLED, "true_risk", best_mode, best_score)
        measured.append(gap)
        text += (f"The Cox model on the true risk reaches {oracle:.3f} on the same folds; against the best NDAE mean "
                 f"({best_score}, {best_mode}, {best:.3f}): " + compare("the true risk", f"NDAE {best_score}", gap) + ". ")
    for score in SCORES:
        between = diff(POOLED, score, CENTRAL, score)
        if np.isfinite(between["d"]):
            measured.append(between)
            text += f"{score.capitalize()}, federated pooled vs centralised: " + compare("federated", "centralised", between) + ". "

    reference = stats(POOLED, "cosine_harrell_c")
    dp = []
    for e in s["epsilons"]:
        cost = diff(dp_mode(e), "cosine", POOLED, "cosine")
        if np.isfinite(cost["d"]):
            measured.append(cost)
            dp.append(f"ε={e:g}: " + compare(f"DP ε={e:g}", "no DP", cost))
    if dp:
        text += "Cosine C, DP vs the non-private federated run — " + "; ".join(dp) + "."
        if np.isfinite(reference[2]) and reference[2] <= 0.5 <= reference[3]:
            text += (" The non-private run is itself not distinguishable from chance, so these runs cannot show what "
                     "privacy costs in C (there is no measured signal to lose).")
        text += " "

    within = per_fold.groupby(["cohort_seed", "mode", "model"])["harrell_c"].std(ddof=1)
    resolution = half_width(measured)
    text += (f"Folds hold ~{per_fold_patients:.0f} patients; one fold's Harrell's C has sd {np.nanmedian(within):.2f} "
             "(median over seeds, modes and features)")
    text += (f", and the paired differences above resolve about ±{resolution:.3f} (median half-width of their 95 % CIs). "
             if np.isfinite(resolution) else ". ")

    diffs = [raw["checks"][seed].get("coef_max_abs_diff") for seed in s["cohort_seeds"]]
    diffs = [d for d in diffs if d is not None]
    if diffs:
        text += (f"Pooled and federated Cox agree to max |Δcoef| = {max(diffs):.1e} "
                 f"({'within' if max(diffs) < COEF_TOLERANCE else 'NOT within'} the tolerance {COEF_TOLERANCE:.0e}). ")
    for entry in raw["calibration"]:
        text += (f"Normative calibration ({entry['dae']} DAE): held-out z mean {entry['z_mean']['mean']:+.3f}, sd "
                 f"{entry['z_sd']['mean']:.3f}, coverage {entry['coverage_95']['mean']:.3f} of the nominal 0.95. ")
    return text.strip()
