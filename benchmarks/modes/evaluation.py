"""Metrics on finished runs of the pipeline-modes benchmark.

Every mode's per-patient deviation scores (deviations.csv; for the federated-Cox mode recomputed from
its own checkpoint and normative model, as the sites hold them) go through the SAME K-fold
cross-validated Cox evaluation (same folds for every mode of a cohort seed, checked):
`cross_validate` runs every score through `ndae.survival.metrics.cross_validate_cox` (one row per
fold, feature and mode; the truth-aware metrics are `ndae.evaluation.truth_aware`'s, via
`benchmarks.truth_eval`), `per_seed_table` averages them over folds; `evaluate_seed` adds the oracle C*
and the pooled-vs-federated equality checks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.modes.names import FEATURES, FEDCOX, ORACLE, POOLED, SCORES, all_modes
from benchmarks.modes.runs import site_manifests


def relink_pseudonyms(deviations: pd.DataFrame, privacy_dir: Path) -> pd.DataFrame:
    """A private pooled run's rows carry per-run pseudonyms; every site keeps the key beside its
    ledger (here all sites' keys are in the run folder, as the benchmark plays every site)."""
    keys = sorted(privacy_dir.glob("*.pseudonyms.csv"))
    if not keys:
        return deviations
    key = pd.concat([pd.read_csv(k, dtype=str) for k in keys]).set_index("pseudonym")["subject"]
    relinked = deviations.copy()
    relinked["subject"] = relinked["subject"].astype(str).map(key)
    if relinked["subject"].isna().any():
        raise RuntimeError(f"{privacy_dir}: pseudonyms without a key in {[k.name for k in keys]}")
    return relinked


def patients(cohort: Path, deviations: pd.DataFrame) -> pd.DataFrame:
    """Patients of the cohort (true sites, follow-up) with the mode's scores and the true risk."""
    from ndae.data.manifest import read_manifest
    from ndae.evaluation.pipeline import read_truth
    from ndae.survival.analysis import patient_table

    manifest = read_manifest(cohort / "manifest.csv")
    table, counts = patient_table(deviations, manifest, list(SCORES), source=str(cohort / "manifest.csv"))
    if counts["patients_without_deviations"]:
        raise RuntimeError(f"patients without scores: {counts['patients_without_deviations']}")
    truth = read_truth(cohort / "truth.csv", table["subject"])
    table = table.merge(truth, on="subject", how="left").sort_values("subject").reset_index(drop=True)
    # the CV never splits patients drawn from one source anatomy (truth.csv `source_subject`)
    from ndae.evaluation.grouped_cv import subject_groups

    full = pd.read_csv(cohort / "truth.csv", dtype={"subject": str, "source_subject": str})
    table["cv_group"] = subject_groups(table["subject"], full)
    return table


def site_scores(run_dir: Path, cohort: Path, cache_dir: str) -> pd.DataFrame:
    """The patients' deviation scores as the sites of a federated-Cox run hold them (that run
    writes no deviations.csv): its own checkpoint's EMA encoder and its own normative model."""
    from ndae.deviation.scores import deviation_table
    from ndae.federation.site.data import load_site
    from ndae.federation.site.statistics import covariates
    from ndae.model import encode, load_checkpoint
    from ndae.normative import NormativeModel

    model = load_checkpoint(run_dir / "dae" / "checkpoint.pt").ema.model
    normative = NormativeModel.load(run_dir / "normative")
    frames = []
    for manifest in site_manifests(cohort):
        site = load_site(manifest, cache_dir)
        rows = site.patients
        z_sem = encode(model, site.data.images[rows]).numpy().astype(np.float64)
        frame = covariates(site, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames.append(deviation_table(frame["subject"], frame, z_sem, normative))
    return pd.concat(frames, ignore_index=True)


def cross_validate(table: pd.DataFrame, args) -> tuple[pd.DataFrame, list, dict[str, str]]:
    """Each score alone (and the true risk): one cross_validate_cox per feature, same seed, same folds.
    A feature the CV refuses (e.g. non-finite scores) is left out and its reason returned, so one bad
    score does not hide the others."""
    from ndae.errors import NdaeError
    from ndae.survival.metrics import cross_validate_cox

    from ndae.evaluation.grouped_cv import grouped_folds

    frames, folds, refused = [], None, {}
    # grouped by source anatomy, stratified by event: the same folds for every feature and mode
    test_folds = grouped_folds(table["event"].to_numpy(int), table["cv_group"].to_numpy(), args.folds, args.cv_seed)
    for feature in FEATURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = cross_validate_cox(table, {feature: [feature]}, folds=args.folds, seed=args.cv_seed,
                                            penalizer=args.penalizer, test_folds=test_folds)
        except NdaeError as error:
            refused[feature] = str(error)
            continue
        these = [tuple(np.sort(t)) for t in result.test_indices[feature]]
        if folds is None:
            folds = these
        elif these != folds:
            raise RuntimeError("cross-validation folds differ between features")
        frames.append(result.per_fold)
    if not frames:
        raise RuntimeError(f"no feature could be cross-validated: {refused}")
    return pd.concat(frames, ignore_index=True), folds, refused


def evaluate_seed(args, seed: int, cohort: Path, results: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Per-fold CV results of every mode (same folds), oracle C*, the pooled-vs-federated checks, and
    the features the CV refused per mode (`checks["refused"]`)."""
    from ndae.survival.oracle import oracle_c_index

    cache_dir = str(Path(args.work) / "cache")
    per_fold, checks, folds_seen = [], {}, None
    tables = {}
    for mode in all_modes(args.epsilons):
        run = results.get((seed, mode))
        if run is None or "error" in run:
            continue
        run_dir = Path(run["run_dir"])
        if mode == FEDCOX:
            deviations = site_scores(run_dir, cohort, cache_dir)
        else:
            from ndae.survival.analysis import read_deviations

            deviations = relink_pseudonyms(read_deviations(run_dir / "deviations.csv"), run_dir / "privacy")
        table = patients(cohort, deviations)
        tables[mode] = table
        frame, folds, refused = cross_validate(table, args)
        if refused:
            checks.setdefault("refused", {})[mode] = refused
        if folds_seen is None:
            folds_seen = folds
        elif folds != folds_seen:
            raise RuntimeError(f"seed {seed}: folds of {mode} differ from the first mode's")
        frame["mode"], frame["cohort_seed"] = mode, seed
        per_fold.append(frame)
    any_table = next(iter(tables.values()))
    checks["oracle_c"] = oracle_c_index(any_table["time"], any_table["event"], any_table["true_risk"])
    checks["patients"], checks["events"] = int(len(any_table)), int(any_table["event"].sum())
    pooled, fed = results.get((seed, POOLED), {}), results.get((seed, FEDCOX), {})
    if "coef" in pooled and "coef" in fed:
        checks["coef_max_abs_diff"] = max(abs(pooled["coef"][k] - fed["coef"][k]) for k in pooled["coef"])
        checks["coef_keys"] = list(pooled["coef"])
        checks["c_within_diff"] = abs(pooled["c_within_site"] - fed["c_within_site"])
    if "run_dir" in pooled and "run_dir" in fed and not fed.get("resumed_from"):
        checks["dae_max_abs_diff"] = checkpoint_difference(Path(pooled["run_dir"]), Path(fed["run_dir"]))
    if POOLED in tables and FEDCOX in tables:
        a, b = tables[POOLED].set_index("subject"), tables[FEDCOX].set_index("subject")
        checks["score_max_abs_diff"] = float(np.max(np.abs(a[list(SCORES)].to_numpy() - b.loc[a.index, list(SCORES)].to_numpy())))
    return pd.concat(per_fold, ignore_index=True), checks, tables


def truth_metrics_seed(args, seed: int, cohort: Path, tables: dict[str, pd.DataFrame],
                       held_out: dict[str, pd.DataFrame]) -> dict:
    """The truth-aware metrics (benchmarks/truth_eval.py) of every mode's scores on one cohort seed:
    one wide table (`<mode>: <score>` columns; every mode scores the same patients), plus the
    covariates-only model (age + sex + site), the voxel-wise baseline (fitted once per cohort on
    its controls, from the prepared MNI-grid images) and the oracle, all on the same grouped folds
    and the same survival draws. `held_out`: per mode, held-out controls' scores (calibration)."""
    from benchmarks.truth_eval import VOXELWISE, cohort_truth, evaluate_models, voxelwise_scores, with_site_indicators
    from ndae.data.manifest import read_manifest

    first = next(iter(tables.values()))
    wide = first[["subject", "time", "event", "site", "age", "sex_female", "true_risk"]].copy()
    models: dict[str, list[str]] = {}
    for mode, table in tables.items():
        if list(table["subject"]) != list(wide["subject"]):
            raise RuntimeError(f"cohort seed {seed}: {mode} scores other patients than {next(iter(tables))}")
        for score in SCORES:
            column = f"{mode}: {score}"
            wide[column] = table[score].to_numpy(float)
            models[column] = [column]
    wide, covariates = with_site_indicators(wide)
    manifest = read_manifest(cohort / "manifest.csv")
    controls = manifest.loc[manifest["group"].astype(str) == "control", "subject"].astype(str)
    voxel, voxel_held_out, info = voxelwise_scores(cohort, prepared_folders(cohort, str(Path(args.work) / "cache")),
                                                   controls, wide["subject"], seed=args.cv_seed)
    wide = wide.merge(voxel, on="subject", how="left")
    voxel_columns = [c for c in voxel.columns if c != "subject"]
    models.update({"covariates": covariates, VOXELWISE: voxel_columns,
                   f"{VOXELWISE} precentral": ["z_voxel_precentral"] if "z_voxel_precentral" in voxel_columns else [],
                   ORACLE: ["true_risk"]})
    models = {k: v for k, v in models.items() if v}
    controls_scored = voxel_held_out
    for mode, frame in held_out.items():
        renamed = frame.rename(columns={score: f"{mode}: {score}" for score in SCORES})
        controls_scored = controls_scored.merge(renamed[["subject", *[f"{mode}: {s}" for s in SCORES]]], on="subject", how="outer")
    truth, cohort_json = cohort_truth(cohort, wide["subject"])
    result = evaluate_models(wide, models, truth, cohort_json, folds=args.folds, seed=args.cv_seed, draws=args.draws,
                             penalizer=args.penalizer, references=("covariates", VOXELWISE), held_out=controls_scored)
    result["voxelwise"], result["covariates"] = info, covariates
    result["held_out_modes"] = sorted(held_out)
    return result


def prepared_folders(cohort: Path, cache_dir: str) -> dict[str, Path]:
    """Where each subject's prepared images are: its site's folder of the shared cache (a
    simulated node's `cache_dir/<key of its manifest>`, as the runs prepared them)."""
    from ndae.data.manifest import read_manifest
    from ndae.federation.site.data import site_cache_dir

    folders = {}
    for manifest in site_manifests(cohort):
        folder = site_cache_dir({}, manifest, cache_dir)
        folders.update({str(s): folder for s in read_manifest(manifest)["subject"]})
    return folders


def checkpoint_difference(a: Path, b: Path) -> float:
    """max |Δ| over every weight (model and EMA) of two runs' final DAE checkpoints."""
    import torch

    first, second = (torch.load(d / "dae" / "checkpoint.pt", map_location="cpu", weights_only=True) for d in (a, b))
    diff = 0.0
    for part in ("model", "ema"):
        flat_a, flat_b = _tensors(first[part]), _tensors(second[part])
        if flat_a.keys() != flat_b.keys():
            return math.inf
        for key in flat_a:
            diff = max(diff, float((flat_a[key].double() - flat_b[key].double()).abs().max()) if flat_a[key].numel() else 0.0)
    return diff


def _tensors(state, prefix: str = "") -> dict:
    import torch

    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out.update(_tensors(value, f"{prefix}.{key}"))
        return out
    return {}


def per_seed_table(per_fold: pd.DataFrame, results: dict, checks: dict, modes: list[str]) -> pd.DataFrame:
    """One row per (cohort seed, mode): CV means per feature and metric, in-sample C, ε, seconds."""
    rows = []
    means = per_fold.groupby(["cohort_seed", "mode", "model"])[["harrell_c", "uno_c"]].mean()
    for (seed, mode), run in sorted(results.items(), key=lambda kv: (kv[0][0], modes.index(kv[0][1]))):
        row = {"cohort_seed": seed, "mode": mode, "error": run.get("error", "")}
        for feature in FEATURES:
            for metric in ("harrell_c", "uno_c"):
                key = (seed, mode, feature)
                row[f"{feature}_{metric}"] = float(means.loc[key, metric]) if key in means.index else math.nan
        row["c_in_sample_within_site"] = run.get("c_within_site", math.nan)
        row["c_in_sample_pooled"] = run.get("c_pooled") if run.get("c_pooled") is not None else math.nan
        privacy = run.get("privacy") or {}
        epsilons = [h["epsilon"] for h in privacy.values()]
        row["accounted_epsilon_max"] = max((math.inf if e == "inf" else float(e)) for e in epsilons) if epsilons else math.nan
        row["dp_sgd_sigma"] = max(run.get("dp_sgd_sigma", {}).values(), default=math.nan)
        row["wall_s"] = run.get("wall_s", math.nan)
        row["dae_training_s"] = (run.get("timings") or {}).get("dae_training_s", math.nan)
        row["oracle_c"] = checks[seed]["oracle_c"]
        rows.append(row)
    return pd.DataFrame(rows)
