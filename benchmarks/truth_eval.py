"""The survival benchmarks' view of the truth-aware metrics (bench_survival, bench_modes).

The metrics themselves are `ndae evaluate`'s (`ndae.evaluation.truth_aware.model_metrics`, the
one place they are computed: out-of-fold ridge-Cox risk on folds grouped by source anatomy, the
SAME folds for every model of a cohort; observed CV Harrell's and Uno's C; `risk_concordance`;
expected C over R fresh survival draws, every model on the same draws; paired differences over
the draws and, against the first reference only since it is the slow part, on the observed C by
resampling source anatomies). This module lays them out per model of one cohort
(`evaluate_models`), with the single-score metrics a benchmark reports (ρ with the true severity,
AUROC of patients vs held-out controls), the references a benchmark compares with (the
covariates-only model, the voxel-wise baseline on the raw images and on their within-brain
high-pass, `voxelwise_scores(highpass_sigma=...)`), and pools cohort seeds (`summarise`: means over
seeds, and each paired difference's 95 % t-interval over the per-seed expected differences beside
the range one study's difference falls in, percentiles of all per-draw differences).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ndae.evaluation.paired import t_interval
from ndae.errors import NdaeError

COVARIATES = ["age", "sex_female"]  # + site indicators, added by `covariate_columns`
VOXELWISE = "voxel-wise normative z"
VOXELWISE_HIGHPASS = "voxel-wise normative z (high-pass)"  # NB: starts with VOXELWISE


class BenchmarkInputError(NdaeError):
    """A benchmark's tables cannot be evaluated against the truth (missing columns, subjects)."""


def cohort_truth(cohort: Path, subjects) -> tuple[pd.DataFrame, dict | None]:
    """The truth rows of `subjects` (in that order, every column of truth.csv) and cohort.json when
    it stores a survival model (None otherwise: expected C is then skipped)."""
    path = Path(cohort) / "truth.csv"
    truth = pd.read_csv(path, dtype={"subject": str, "source_subject": str}).drop_duplicates("subject").set_index("subject")
    subjects = pd.Series(np.asarray(subjects)).astype(str)
    missing = sorted(set(subjects) - set(truth.index))
    if missing:
        raise BenchmarkInputError(f"{path}: no truth row for {len(missing)} subject(s), e.g. {missing[:5]}")
    rows = truth.loc[subjects.to_numpy()].reset_index()
    meta = Path(cohort) / "cohort.json"
    cohort_json = json.loads(meta.read_text()) if meta.exists() else None
    if cohort_json is not None and "survival_model" not in cohort_json:
        cohort_json = None
    return rows, cohort_json


def with_site_indicators(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`table` with one 0/1 column per site but the first (sorted), and the covariate columns
    age + sex + those indicators: the covariates-only model."""
    sites = sorted(table["site"].astype(str).unique())
    out = table.copy()
    names = []
    for site in sites[1:]:
        name = f"site_{site}"
        out[name] = (out["site"].astype(str) == site).astype(float)
        names.append(name)
    missing = [c for c in COVARIATES if c not in out.columns]
    if missing:
        raise BenchmarkInputError(f"patients' table lacks covariate column(s) {missing}")
    return out, [*COVARIATES, *names]


def voxelwise_scores(cohort: Path, cache_dir: Path, training_controls, patients, held_out_folds: int = 5,
                     seed: int = 0, held_out=None, highpass_sigma: float | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The voxel-wise normative baseline of one cohort (`ndae.baselines.voxelwise`), from the
    prepared MNI-grid images in `cache_dir` (one folder, or {subject: folder}): fitted on `training_controls` (subjects) only, the
    patients scored by that fit. `held_out`: controls no fit saw (e.g. the ones `ndae evaluate` held
    out), scored by that fit; without them every training control is scored out of sample by K-fold
    cross-fitting (fitted on the other folds). Either way the AUROC compares patients with controls
    the scoring model did not see. `highpass_sigma` (voxels): the high-pass variant, on each image's
    within-brain high-pass (`z_highpass_voxel_<region>` columns); None: the raw images.
    Returns (patients' features, held-out controls' features, info)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline
    from ndae.data.cache import load_prepared
    from ndae.data.manifest import read_manifest

    manifest = read_manifest(Path(cohort) / "manifest.csv")
    frame = pd.DataFrame({"subject": manifest["subject"].astype(str), "site": manifest["site"].astype(str),
                          "age": manifest["age"].astype(float), "sex": manifest["sex"].astype(str),
                          "group": manifest["group"].astype(str)})
    controls = frame[frame["subject"].isin(set(map(str, training_controls)))].reset_index(drop=True)
    patients = frame[frame["subject"].isin(set(map(str, patients)))].reset_index(drop=True)
    held_out = [] if held_out is None else [str(s) for s in held_out]
    overlap = sorted(set(held_out) & set(controls["subject"]))
    if overlap:
        raise BenchmarkInputError(f"voxel-wise baseline: held-out controls among the training controls: {overlap[:5]}")

    def image(subject: str) -> np.ndarray:
        folder = cache_dir[subject] if isinstance(cache_dir, dict) else cache_dir
        return load_prepared(folder, subject).image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VoxelwiseNormativeBaseline(highpass_sigma=highpass_sigma).fit(controls, image)
        patient_features = model.features(patients, image)
        held = []
        if held_out:
            held.append(model.features(frame[frame["subject"].isin(set(held_out))].reset_index(drop=True), image))
            held_out_folds = 0
        # stratified by site where every site has a control per fold (a small cohort may not)
        per_site = controls["site"].value_counts()
        splitter = (StratifiedKFold if per_site.min() >= held_out_folds else KFold)(
            n_splits=max(held_out_folds, 2), shuffle=True, random_state=seed)
        for train, test in (splitter.split(controls, controls["site"]) if held_out_folds else ()):
            fold = VoxelwiseNormativeBaseline(highpass_sigma=highpass_sigma).fit(
                controls.iloc[train].reset_index(drop=True), image)
            held.append(fold.features(controls.iloc[test].reset_index(drop=True), image))
    info = {"training_controls": int(len(controls)), "voxels_modelled": int(len(model.voxels)), "stride": model.stride,
            "highpass_sigma": highpass_sigma,
            "held_out": (f"the {len(held_out)} controls the run held out of every fit" if held_out else
                         f"{held_out_folds}-fold cross-fit over the training controls")}
    return patient_features, pd.concat(held, ignore_index=True), info


def evaluate_models(table: pd.DataFrame, models: dict[str, list[str]], truth: pd.DataFrame, cohort_json: dict | None,
                    *, folds: int = 5, seed: int = 0, draws: int = 50, penalizer: float = 0.1,
                    references: tuple[str, ...] = (), held_out: pd.DataFrame | None = None, n_boot: int = 100) -> dict:
    """The metrics above for every model `{name: feature columns}` of one cohort.

    `table`: one row per patient (subject, time, event and every feature column), in the order of
    `truth` (the patients' truth rows: risk; optionally severity, source_subject). `held_out`:
    subject + score columns of controls the scores' normative models did not see (AUROC).
    `references`: model names every other model is compared with."""
    from ndae.evaluation import truth_metrics as tm
    from ndae.evaluation.grouped_cv import grouped_folds, subject_groups
    from ndae.evaluation.truth_aware import model_metrics

    if list(table["subject"].astype(str)) != list(truth["subject"].astype(str)):
        raise BenchmarkInputError("patients' table and truth rows are not in the same subject order")
    columns = sorted({c for cols in models.values() for c in cols})
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise BenchmarkInputError(f"patients' table lacks feature column(s) {absent}")
    time, event = table["time"].to_numpy(float), table["event"].to_numpy(int)
    groups = subject_groups(table["subject"], truth)
    test_folds = grouped_folds(event, groups, folds, seed)
    computed = model_metrics(table, models, truth, cohort_json, folds=test_folds, groups=groups, penalizer=penalizer,
                             draws=draws, seed=seed, n_folds=folds, concordance=True)
    out: dict[str, dict] = {}
    for name, cols in models.items():
        if name in computed.refused:
            out[name] = {"features": cols, "refused": computed.refused[name]}
            continue
        risk, concordance = computed.risks[name], computed.concordance[name]
        row = {"features": cols, "harrell_c": concordance["harrell_c"], "uno_c": concordance["uno_c"],
               "harrell_c_per_fold": concordance["harrell_c_per_fold"],
               "risk_concordance": computed.risk_concordance[name]}
        if "severity" in truth.columns:
            # every model, also multi-feature ones (regional z, all NDAE scores): how its
            # out-of-fold risk orders the patients' true severity
            row["risk_severity_spearman"] = tm.severity_spearman(
                truth, pd.DataFrame({"subject": table["subject"], "risk": risk}))["risk"]
        if len(cols) == 1:
            if "severity" in truth.columns:
                row["severity_spearman"] = tm.severity_spearman(truth, table[["subject", cols[0]]])[cols[0]]
            if held_out is not None and cols[0] in held_out.columns:
                controls = held_out[cols[0]].to_numpy(float)
                row["auroc_vs_held_out_controls"] = tm.patient_control_auroc(
                    np.concatenate([table[cols[0]].to_numpy(float), controls]),
                    np.concatenate([np.ones(len(table), bool), np.zeros(len(controls), bool)]))
                row["held_out_controls"] = int(np.isfinite(controls).sum())
        out[name] = row
    expected = computed.expected
    for name, result in expected.items():
        out[name].update({k: v for k, v in result.to_dict().items() if k not in ("folds", "seed")})
        out[name]["per_draw"] = [float(v) for v in result.per_draw]
    for reference in references:
        if reference not in computed.risks:
            continue
        for name in computed.risks:
            if name == reference:
                continue
            entry = {"risk_concordance": _difference(out[name]["risk_concordance"], out[reference]["risk_concordance"])}
            if expected:
                entry["draws"] = computed.draws_difference(name, reference)
                entry["per_draw"] = [float(v) for v in expected[name].per_draw - expected[reference].per_draw]
            if reference == references[0]:
                # the resampling CI of the observed C is slow (scikit-survival's input checks run per fold
                # and resample; docs/evaluation.md): against the first reference only
                entry["observed"] = computed.observed_difference(name, reference, n_boot, seed)
            out[name].setdefault("versus", {})[reference] = entry
    oracle = tm.harrell_c(time, event, truth["risk"].to_numpy(float))
    return {"models": out, "patients": int(len(table)), "events": int(event.sum()),
            "source_anatomies": int(len(np.unique(groups))), "folds": folds, "fold_seed": seed,
            "draws": draws if expected else 0, "expected_c_skipped": None if expected else
            ("the cohort stores no survival model" if cohort_json is None else "draws = 0"),
            "oracle_c_observed": oracle, "test_folds": [list(map(int, f)) for f in test_folds]}


METRICS = ("harrell_c", "uno_c", "expected_c", "sd_per_draw", "risk_concordance", "severity_spearman",
           "risk_severity_spearman", "auroc_vs_held_out_controls")


def _difference(a, b) -> float:
    return float(a - b) if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) else math.nan


def summarise(per_cohort: dict) -> list[dict]:
    """Pool cohort seeds, `{seed: evaluate_models(...)}`: per model, each metric's mean and sd over
    seeds, and per reference the paired expected difference: mean over seeds with its 95 %
    t-interval over seeds, the share of draws where the model is higher, and the range one
    study's difference falls in (2.5–97.5 % of all per-draw differences); plus the observed
    difference's per-seed bootstrap CIs."""
    names: list[str] = []
    for result in per_cohort.values():
        names += [n for n in result["models"] if n not in names]
    rows = []
    for name in names:
        entries = [r["models"][name] for r in per_cohort.values() if name in r["models"]]
        row = {"model": name, "features": entries[0]["features"], "cohort_seeds": len(entries),
               "refused": sorted({e["refused"] for e in entries if "refused" in e})}
        for metric in METRICS:
            values = [e.get(metric) for e in entries]
            values = np.asarray([v for v in values if v is not None], float)
            values = values[np.isfinite(values)]
            row[metric] = float(values.mean()) if values.size else math.nan
            row[f"{metric}_seeds_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        row["draws"] = int(sum(e.get("draws", 0) or 0 for e in entries))
        versus = {}
        references = sorted({ref for e in entries for ref in e.get("versus", {})})
        for reference in references:
            pairs = [e["versus"][reference] for e in entries if reference in e.get("versus", {})]
            per_seed = [p["draws"]["difference"] for p in pairs if "draws" in p]
            pooled = np.asarray([v for p in pairs for v in p.get("per_draw", [])], float)
            pooled = pooled[np.isfinite(pooled)]
            d, _, low, high = t_interval(per_seed)
            concordance = [p["risk_concordance"] for p in pairs if "risk_concordance" in p]
            rc_d, _, rc_low, rc_high = t_interval(concordance)
            versus[reference] = {
                "d": d, "low": low, "high": high, "n": len(per_seed), "over": f"{len(per_seed)} cohort seeds",
                "per_seed": per_seed,
                # the paired difference in risk concordance, 95 % t-interval over the cohort seeds
                "risk_concordance": {"d": rc_d, "low": rc_low, "high": rc_high, "per_seed": concordance},
                "fraction_positive": float(np.mean(pooled > 0)) if pooled.size else math.nan,
                "one_study_low": float(np.quantile(pooled, 0.025)) if pooled.size else math.nan,
                "one_study_high": float(np.quantile(pooled, 0.975)) if pooled.size else math.nan,
                "observed": [p["observed"] for p in pairs if "observed" in p],
            }
        row["versus"] = versus
        rows.append(row)
    return rows


def jsonable(value):
    """Numbers as JSON can hold them (nan → None), recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _difference_cell(row: dict, reference: str | None) -> str:
    entry = row.get("versus", {}).get(reference) if reference else None
    if not entry or entry.get("d") is None or not np.isfinite(entry["d"]):
        return "–"
    if entry.get("low") is None or not np.isfinite(entry["low"]):
        return f"{entry['d']:+.3f}"
    return f"{entry['d']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"


def table_lines(rows: list[dict], reference_of, label=lambda name: name) -> list[str]:
    """The truth-aware table in Markdown. `reference_of(model) -> (covariates reference, voxel-wise
    reference[, high-pass voxel-wise reference])`: the model names its difference columns compare
    with (None: no column entry). With a third reference the table has the "Δ vs high-pass
    voxel-wise" column (a row without that difference, e.g. from results saved before it: "–")."""
    references = {row["model"]: tuple(reference_of(row["model"])) for row in rows}
    highpass = any(len(r) > 2 for r in references.values())
    lines = ["| model | observed Harrell's C | Uno's C | expected C (sd per draw) | risk concordance | ρ severity "
             "| AUROC vs held-out controls | Δ expected C vs covariates [95 % CI] | Δ vs voxel-wise [95 % CI] |"
             + (" Δ vs high-pass voxel-wise [95 % CI] |" if highpass else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if highpass else "")]
    for row in rows:
        covariates, voxelwise, *rest = references[row["model"]]
        lines.append(
            f"| {label(row['model'])} | {_fmt(row['harrell_c'])} | {_fmt(row['uno_c'])} | {_fmt(row['expected_c'])} "
            f"({_fmt(row['sd_per_draw'])}) | {_fmt(row['risk_concordance'])} | {_fmt(row['severity_spearman'], 2)} | "
            f"{_fmt(row['auroc_vs_held_out_controls'])} | {_difference_cell(row, covariates)} | {_difference_cell(row, voxelwise)} |"
            + (f" {_difference_cell(row, rest[0] if rest else None)} |" if highpass else ""))
    return lines
