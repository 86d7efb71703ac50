"""Pipeline modes side by side: centralised vs federated (pooled / federated Cox) vs DP at several ε,
over several simulated cohorts, with one cross-validated survival evaluation; plus the normative
model's calibration on held-out controls. Writes benchmarks/results/modes.md (+ PNG figures and
per-seed / per-fold CSVs beside it).

    python -m benchmarks.bench_modes                       # full default (cohort seeds 0 1 2, 4 rounds × 5 epochs)
    python -m benchmarks.bench_modes --cohort-seeds 0 --rounds 1 --epochs 1 --work /tmp/bench-modes-smoke

For every cohort seed s: a 3-site ALS cohort simulated from the shipped IXI demo scans
(`ndae.cohort.generate_cohort`, cached under --work), then every mode runs through the real
federation code in process (`InProcessGrid` + `run_federation`, the ClientApp/ServerApp handlers
of a Flower deployment) with the same DAE schedule (R rounds × E local epochs, `tiny`, batch 8):

- centralised: the same subjects re-split as ONE site holding everyone (one site = centralised
  training through the identical code path);
- federated, pooled Cox: the cohort's 3 sites, FedAvg, survival-mode pooled;
- federated, federated Cox: survival-mode federated (no patient row leaves a site). Its DAE is the
  pooled run's (the checkpoint copied in, the server's resume path skips the finished rounds);
  normative fit, scoring and the Newton–Raphson Cox rounds are its own;
- DP ε = 1, 3, 8: DP-SGD + noised normative moments at every site (target ε per site), pooled
  survival with every site's policy allowing pooled scores (so deviations.csv exists).

Every mode's per-patient deviation scores (deviations.csv; for the federated-Cox mode recomputed
from its own checkpoint and normative model, as the sites hold them) go through the SAME 5-fold
cross-validated Cox evaluation (same folds for every mode of a cohort seed).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS_DIR, write_section

SCORES = ("cosine", "mahalanobis", "mean_abs_z")
CENTRAL, POOLED, FEDCOX = "centralised", "federated, pooled Cox", "federated, federated Cox"
ORACLE = "oracle (true risk)"


def dp_mode(epsilon: float) -> str:
    return f"DP ε={epsilon:g}"


# ---- one federated run (in a worker process) --------------------------------------------------
def run_mode(spec: dict) -> dict:
    """Run one mode through InProcessGrid + run_federation; returns what the report needs."""
    import torch

    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import run_federation

    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore")
    run_dir = Path(spec["run_dir"])
    done = run_dir / "bench_run.json"
    if spec["reuse"] and done.exists():
        saved = json.loads(done.read_text())
        if saved.get("spec_key") == spec["key"]:
            saved["reused"] = True
            return saved
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: no old checkpoint, no old privacy ledger
    if spec.get("resume_from"):
        (run_dir / "dae").mkdir(parents=True)
        shutil.copy2(spec["resume_from"], run_dir / "dae" / "checkpoint.pt")
    config = FederationConfig(run_dir=str(run_dir), **spec["config"])
    grid = InProcessGrid(spec["manifests"], config.to_run_config())
    for context in grid.contexts.values():  # the site's own policy (SuperNode node config)
        context.node_config.update(spec.get("node_config", {}))
    name = f"[seed {spec['cohort_seed']} | {spec['mode']}]"
    started = time.perf_counter()
    summary = run_federation(grid, config, log=lambda m: print(f"{name} {m}", flush=True))
    wall = time.perf_counter() - started
    survival = summary["survival"]
    result = {"mode": spec["mode"], "cohort_seed": spec["cohort_seed"], "run_dir": str(run_dir), "wall_s": wall,
              "spec_key": spec["key"], "timings": summary["timings"], "sites": summary["sites"],
              "coef": survival["coef"], "covariates": survival["covariates"],
              "c_within_site": survival["c_index_within_site"],
              "c_pooled": (survival.get("c_index_pooled") or {}).get("estimate"),
              "privacy": summary.get("privacy", {}), "resumed_from": spec.get("resume_from")}
    if config.privacy:
        sigmas = {}
        for site in summary.get("privacy", {}):
            first = (run_dir / "privacy" / f"{site}.jsonl").read_text().splitlines()[0]
            sigmas[site] = json.loads(first)["noise_multiplier"]
        result["dp_sgd_sigma"] = sigmas
    from ndae.io import atomic_write_json

    atomic_write_json(done, result)
    print(f"{name} done in {wall:.0f} s", flush=True)
    return result


# ---- cohorts and specs ------------------------------------------------------------------------
def make_cohort(work: Path, seed: int, jobs: int, max_subjects: int | None) -> Path:
    from ndae.cohort import CohortConfig, generate_cohort
    from ndae.data.demo import demo_manifest_path

    out = work / (f"cohort-seed{seed}" + (f"-max{max_subjects}" if max_subjects else ""))
    if not (out / "truth.csv").exists():
        print(f"[cohort] generating seed {seed} -> {out}", flush=True)
        generate_cohort(demo_manifest_path(), out, CohortConfig(sites=3, seed=seed, jobs=jobs, figure=False,
                                                                max_subjects=max_subjects))
    return out


def central_split(cohort: Path) -> Path:
    from benchmarks.bench_federation import split_cohort

    out = cohort.parent / (cohort.name + "-one-site")
    if not (out / "sites" / "site1" / "manifest.csv").exists():
        split_cohort(cohort, out, 1)
    return out


def site_manifests(cohort: Path) -> list[str]:
    return [str(p) for p in sorted((cohort / "sites").glob("*/manifest.csv"))]


def specs_for(args, seed: int, cohort: Path, central: Path) -> tuple[list[dict], dict]:
    """The independent runs of one cohort seed, and the federated-Cox run (needs the pooled DAE)."""
    runs = Path(args.work) / f"runs-seed{seed}"
    common = dict(cache_dir=str(Path(args.work) / "cache"), dae_preset=args.preset, rounds=args.rounds,
                  local_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, resume=False)
    schedule = f"{args.preset}-R{args.rounds}-E{args.epochs}-b{args.batch_size}-s{args.seed}"

    def spec(mode, folder, manifests, key, **config):
        return {"mode": mode, "cohort_seed": seed, "run_dir": str(runs / folder), "manifests": manifests,
                "config": {**common, **config}, "threads": args.threads, "reuse": args.reuse_runs,
                "key": f"{cohort}|{schedule}|{key}"}

    specs = []
    for epsilon in args.epsilons:  # longest first
        s = spec(dp_mode(epsilon), f"dp-eps{epsilon:g}", site_manifests(cohort), f"dp{epsilon:g}",
                 survival_mode="pooled", privacy=True, target_epsilon=epsilon, budget_epsilon=epsilon,
                 moments_noise_multiplier=max(2.0, 10.0 / epsilon))
        s["node_config"] = {"allow-pooled-scores": "true", "privacy-dir": str(runs / f"dp-eps{epsilon:g}" / "privacy")}
        specs.append(s)
    specs.append(spec(POOLED, "federated-pooled", site_manifests(cohort), "pooled", survival_mode="pooled"))
    specs.append(spec(CENTRAL, "centralised", site_manifests(central), "central", survival_mode="pooled", min_sites=1))
    fedcox = spec(FEDCOX, "federated-fedcox", site_manifests(cohort), "fedcox", survival_mode="federated")
    if not args.retrain_federated_cox:
        fedcox["config"]["resume"] = True
        fedcox["resume_from"] = str(runs / "federated-pooled" / "dae" / "checkpoint.pt")
        fedcox["key"] += "|resumed"
    return specs, fedcox


def prewarm(manifests: list[str], cache_dir: str) -> None:
    """Prepare every site's slice cache once here, not concurrently in the workers."""
    from ndae.federation.site.task import load_site

    for manifest in manifests:
        load_site(manifest, cache_dir)


def run_all(args, cohorts: dict[int, Path], centrals: dict[int, Path]) -> dict[tuple[int, str], dict]:
    import multiprocessing

    results: dict[tuple[int, str], dict] = {}
    queue, waiting = [], {}
    for seed in args.cohort_seeds:
        specs, fedcox = specs_for(args, seed, cohorts[seed], centrals[seed])
        queue += specs
        waiting[seed] = fedcox
    # longest first across seeds: every DP run, then the plain ones
    queue.sort(key=lambda s: (not s["config"].get("privacy", False), s["cohort_seed"]))
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(run_mode, s): s for s in queue}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                spec = pending.pop(future)
                key = (spec["cohort_seed"], spec["mode"])
                try:
                    results[key] = future.result()
                except Exception as error:  # reported in the table, not hidden
                    results[key] = {"mode": spec["mode"], "cohort_seed": spec["cohort_seed"],
                                    "error": f"{type(error).__name__}: {str(error)[:300]}"}
                    print(f"[seed {key[0]} | {key[1]}] FAILED: {results[key]['error']}", flush=True)
                if spec["mode"] == POOLED:
                    fedcox = waiting.pop(spec["cohort_seed"])
                    if "error" in results[key] and fedcox.get("resume_from"):
                        results[(key[0], FEDCOX)] = {"mode": FEDCOX, "cohort_seed": key[0],
                                                     "error": "skipped: the pooled run it resumes from failed"}
                    else:
                        pending[pool.submit(run_mode, fedcox)] = fedcox
    return results


# ---- evaluation (main process) ---------------------------------------------------------------
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
    table = table.merge(truth, on="subject", how="left")
    return table.sort_values("subject").reset_index(drop=True)


def site_scores(run_dir: Path, cohort: Path, cache_dir: str) -> pd.DataFrame:
    """The patients' deviation scores as the sites of a federated-Cox run hold them (that run
    writes no deviations.csv): its own checkpoint's EMA encoder and its own normative model."""
    from ndae.deviation.scores import deviation_table
    from ndae.federation.site.task import covariates, load_site
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


def cross_validate(table: pd.DataFrame, args) -> tuple[pd.DataFrame, list]:
    """Each score alone (and the true risk): one cross_validate_cox per feature, same seed, same folds."""
    from ndae.survival.metrics import cross_validate_cox

    frames, folds = [], None
    for feature in (*SCORES, "true_risk"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = cross_validate_cox(table, {feature: [feature]}, folds=args.folds, seed=args.cv_seed,
                                        penalizer=args.penalizer)
        these = [tuple(np.sort(t)) for t in result.test_indices[feature]]
        if folds is None:
            folds = these
        elif these != folds:
            raise RuntimeError("cross-validation folds differ between features")
        frames.append(result.per_fold)
    return pd.concat(frames, ignore_index=True), folds


def calibration(run_dir: Path, cohort: Path, cache_dir: str, folds: int, seed: int) -> dict:
    """K-fold over the controls (stratified by site): normative model fitted on the training
    folds, held-out controls z-scored; pooled over all held-out controls and latent dimensions."""
    from scipy.stats import chi2
    from sklearn.model_selection import StratifiedKFold

    from ndae.deviation.scores import mahalanobis
    from ndae.federation.site.task import covariates, load_site
    from ndae.model import encode, load_checkpoint
    from ndae.normative import NormativeModel
    from ndae.normative.calibration import calibration_table

    model = load_checkpoint(run_dir / "dae" / "checkpoint.pt").ema.model
    frames, latents = [], []
    for manifest in site_manifests(cohort):
        site = load_site(manifest, cache_dir)
        rows = site.controls
        frames.append(covariates(site, rows))
        latents.append(encode(model, site.data.images[rows]).numpy().astype(np.float64))
    frame, z_sem = pd.concat(frames, ignore_index=True), np.concatenate(latents)
    d = z_sem.shape[1]
    z = np.full_like(z_sem, np.nan)
    d2 = np.full(len(z_sem), np.nan)
    msll = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(z_sem, frame["site"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normative = NormativeModel().fit(frame.iloc[train].reset_index(drop=True), z_sem[train])
            held = frame.iloc[test].reset_index(drop=True)
            z[test] = normative.z_scores(held, z_sem[test])
            d2[test] = mahalanobis(normative, held, z_sem[test]) ** 2
            msll.append(float(calibration_table(normative, held, z_sem[test])["msll"].mean()))
    coverage_per_dim = (np.abs(z) < 1.96).mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = NormativeModel().fit(frame, z_sem)
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(full.residual_covariance), 0, None))[::-1]
    rank95 = int(np.searchsorted(np.cumsum(eigenvalues) / eigenvalues.sum(), 0.95) + 1)
    return {"rank95": rank95, "controls": int(len(z_sem)), "dims": int(d), "z_mean": float(z.mean()), "z_sd": float(z.std(ddof=1)),
            "coverage_95": float((np.abs(z) < 1.96).mean()), "coverage_min_dim": float(coverage_per_dim.min()),
            "coverage_max_dim": float(coverage_per_dim.max()), "d2_mean_over_d": float(d2.mean() / d),
            "d2_within_chi2_95": float((d2 <= chi2.ppf(0.95, d)).mean()), "msll": float(np.mean(msll))}


def evaluate_seed(args, seed: int, cohort: Path, results: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Per-fold CV results of every mode (same folds), oracle C*, the pooled-vs-federated checks."""
    from ndae.survival.oracle import oracle_c_index

    cache_dir = str(Path(args.work) / "cache")
    per_fold, checks, folds_seen = [], {}, None
    tables = {}
    for mode in [CENTRAL, POOLED, FEDCOX, *[dp_mode(e) for e in args.epsilons]]:
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
        frame, folds = cross_validate(table, args)
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


# ---- summary, figures, report ----------------------------------------------------------------
def t_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """mean, sd, and the 95 % t-interval over seeds (nan with one seed)."""
    from scipy.stats import t

    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if values.size == 0:
        return (math.nan,) * 4
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(values.std(ddof=1))
    half = float(t.ppf(0.975, values.size - 1) * sd / math.sqrt(values.size))
    return mean, sd, mean - half, mean + half


def cell(values, digits: int = 3) -> str:
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


def per_seed_table(per_fold: pd.DataFrame, results: dict, checks: dict, modes: list[str]) -> pd.DataFrame:
    """One row per (cohort seed, mode): CV means per feature and metric, in-sample C, ε, seconds."""
    rows = []
    means = per_fold.groupby(["cohort_seed", "mode", "model"])[["harrell_c", "uno_c"]].mean()
    for (seed, mode), run in sorted(results.items(), key=lambda kv: (kv[0][0], modes.index(kv[0][1]))):
        row = {"cohort_seed": seed, "mode": mode, "error": run.get("error", "")}
        for feature in (*SCORES, "true_risk"):
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


def figure_c_vs_epsilon(seeds: pd.DataFrame, epsilons: list[float], path: Path) -> None:
    from matplotlib.figure import Figure

    from ndae.io import atomic_save_figure

    finite = sorted(epsilons)
    x_inf = max(finite) * 3 if finite else 1.0
    figure = Figure(figsize=(4.2 * len(SCORES), 4))
    axes = figure.subplots(1, len(SCORES), sharey=True)
    for axis, score in zip(np.atleast_1d(axes), SCORES):
        column = f"{score}_harrell_c"
        xs, ms, ss = [], [], []
        for x, mode in [*[(e, dp_mode(e)) for e in finite], (x_inf, POOLED)]:
            mean, sd, _, _ = t_interval(seeds.loc[seeds["mode"] == mode, column].to_numpy(float))
            xs.append(x), ms.append(mean), ss.append(0.0 if not np.isfinite(sd) else sd)
        axis.errorbar(xs[:-1], ms[:-1], yerr=ss[:-1], marker="o", capsize=4, color="tab:blue", label="federated, DP at ε")
        axis.errorbar(xs[-1:], ms[-1:], yerr=ss[-1:], marker="s", capsize=4, color="tab:purple",
                      linestyle="none", label="federated, no DP (ε = ∞)")
        for mode, colour, style, label in ((CENTRAL, "tab:green", "--", "centralised"),):
            mean, sd, _, _ = t_interval(seeds.loc[seeds["mode"] == mode, column].to_numpy(float))
            if np.isfinite(mean):
                axis.axhline(mean, color=colour, linestyle=style, label=label)
                if np.isfinite(sd):
                    axis.axhspan(mean - sd, mean + sd, color=colour, alpha=0.12)
        oracle, _, _, _ = t_interval(seeds.loc[seeds["mode"] == POOLED, "true_risk_harrell_c"].to_numpy(float))
        if np.isfinite(oracle):
            axis.axhline(oracle, color="tab:red", linestyle=":", label="oracle (Cox on true risk, CV)")
        axis.axhline(0.5, color="grey", linewidth=0.8, label="chance")
        axis.set_xscale("log")
        axis.set_xticks(xs)
        axis.set_xticklabels([f"{e:g}" for e in finite] + ["∞"])
        axis.minorticks_off()
        axis.set_xlabel("ε per site (target)")
        axis.set_title(f"NDAE {score}")
        axis.set_ylim(0.2, 0.9)
    np.atleast_1d(axes)[0].set_ylabel("Harrell's C, 5-fold CV (mean ± sd over cohort seeds)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    atomic_save_figure(path, figure)


def write_report(args, seeds: pd.DataFrame, per_fold: pd.DataFrame, checks: dict, calib: pd.DataFrame,
                 cohorts: dict, results: dict, figures: dict, total_s: float, cohort_s: float) -> Path:
    modes = [CENTRAL, POOLED, FEDCOX, *[dp_mode(e) for e in args.epsilons]]
    n = len(args.cohort_seeds)
    sizes = []
    for seed, cohort in cohorts.items():
        manifest = pd.read_csv(cohort / "manifest.csv")
        by_site = manifest.groupby("site")["group"].value_counts().unstack(fill_value=0)
        per_site = ", ".join(f"{s} {int(r.get('control', 0))}/{int(r.get('als', 0))}" for s, r in by_site.iterrows())
        sizes.append(f"seed {seed}: {int((manifest['group'] == 'control').sum())} controls, "
                     f"{checks[seed]['patients']} patients, {checks[seed]['events']} events "
                     f"(controls/patients per site: {per_site})")
    lines = [
        f"Schedule: DAE preset `{args.preset}`, batch {args.batch_size}, **{args.rounds} rounds × {args.epochs} local "
        f"epochs** in every mode (the centralised run is the same code with one site holding everyone, so the same "
        f"R × E passes over all controls), FedAvg, DAE seed {args.seed}; runs in process (`InProcessGrid` + "
        f"`run_federation`, the ClientApp/ServerApp handlers of a Flower deployment), {args.workers} runs at a time "
        f"in separate processes, one torch thread each. Total {total_s / 60:.1f} min "
        f"(cohort generation and slice preparation {cohort_s / 60:.1f} min)." + reuse_note(results), "",
        f"Cohorts: {n} simulated 3-site ALS cohorts (`ndae.cohort.generate_cohort`, cohort seeds "
        f"{' '.join(map(str, args.cohort_seeds))}) from the {121 if not args.max_subjects else args.max_subjects} "
        "shipped IXI demo scans; " + "; ".join(sizes) + ".", "",
        f"Evaluation: for every mode, the run's per-patient deviation scores (`deviations.csv`) joined with the "
        f"cohort's follow-up and `truth.csv`; {args.folds}-fold CV (stratified by event, fold seed {args.cv_seed}; the "
        f"SAME folds for every mode and score of a cohort seed, checked) of a Cox model on each score alone "
        f"(L2 penalty {args.penalizer:g}, as `ndae evaluate`); per cohort seed the mean over folds, then **mean ± sd "
        f"over the {n} cohort seeds [95 % t-interval over seeds, t with {n - 1} df]**. Oracle: the same CV of a Cox "
        f"model on the true linear predictor, and C* = Harrell's C of the true risk on all patients (in sample).", "",
        "### Survival: Harrell's C (5-fold CV)", "",
        "| mode | NDAE cosine | NDAE Mahalanobis | NDAE mean abs z | in-sample C (run, within site) | accounted ε (max over sites; mean ± sd) | run wall s (mean ± sd) |",
        "|---|---|---|---|---|---|---|",
    ]

    def column(mode, name):
        return seeds.loc[(seeds["mode"] == mode) & (seeds["error"] == ""), name].to_numpy(float)

    for mode in modes:
        failed = seeds.loc[(seeds["mode"] == mode) & (seeds["error"] != ""), "error"]
        suffix = f" ({len(failed)} run(s) failed: {failed.iloc[0][:120]})" if len(failed) else ""
        eps = "–" if not mode.startswith("DP") else cell_sd(column(mode, "accounted_epsilon_max"), 2)
        lines.append(f"| {mode}{suffix} | {cell(column(mode, 'cosine_harrell_c'))} | "
                     f"{cell(column(mode, 'mahalanobis_harrell_c'))} | {cell(column(mode, 'mean_abs_z_harrell_c'))} | "
                     f"{cell(column(mode, 'c_in_sample_within_site'))} | {eps} | {cell_sd(column(mode, 'wall_s'))} |")
    oracle_cv = column(POOLED, "true_risk_harrell_c")
    lines.append(f"| {ORACLE}: Cox on true risk, CV | {cell(oracle_cv)} | | | C* = "
                 f"{cell(np.array([checks[s]['oracle_c'] for s in args.cohort_seeds]))} | | |")
    lines += ["", "### Survival: Uno's C (5-fold CV)", "",
              "| mode | NDAE cosine | NDAE Mahalanobis | NDAE mean abs z |", "|---|---|---|---|"]
    for mode in modes:
        lines.append(f"| {mode} | {cell(column(mode, 'cosine_uno_c'))} | {cell(column(mode, 'mahalanobis_uno_c'))} | "
                     f"{cell(column(mode, 'mean_abs_z_uno_c'))} |")
    lines.append(f"| {ORACLE} | {cell(column(POOLED, 'true_risk_uno_c'))} | | |")

    coef_diffs = [checks[s].get("coef_max_abs_diff") for s in args.cohort_seeds]
    score_diffs = [checks[s].get("score_max_abs_diff") for s in args.cohort_seeds]
    c_diffs = [checks[s].get("c_within_diff") for s in args.cohort_seeds]
    keys = next((checks[s]["coef_keys"] for s in args.cohort_seeds if "coef_keys" in checks[s]), [])
    fmt = lambda v: "–" if v is None or not np.isfinite(v) else f"{v:.1e}"  # noqa: E731
    dp_runs = [results[(s, dp_mode(e))] for s in args.cohort_seeds for e in args.epsilons
               if "error" not in results.get((s, dp_mode(e)), {"error": 1})]
    sigma = {e: [r.get("dp_sgd_sigma", {}) for r in dp_runs if r["mode"] == dp_mode(e)] for e in args.epsilons}
    lines += [
        "", "Checks and notes:", "",
        f"- Pooled vs federated Cox (same DAE, same normative sums; Cox on {', '.join(keys)}, stratified by site): "
        f"max |Δcoef| per cohort seed {', '.join(fmt(v) for v in coef_diffs)}; |Δ in-sample within-site C| "
        f"{', '.join(fmt(v) for v in c_diffs)}; max |Δ score| between the pooled run's deviations.csv and the "
        f"federated-Cox run's site-side scores {', '.join(fmt(v) for v in score_diffs)}.",
        "- The federated-Cox run " + ("reuses the pooled run's DAE: the pooled run's `dae/checkpoint.pt` (after "
        f"round {args.rounds}) is copied into its run directory and the server's resume path (`resume=true`) skips "
        "the finished rounds; its normative fit, scoring, Newton–Raphson Cox rounds and report are its own. Its CV "
        "rows therefore equal the pooled run's by construction (same scores)."
        if not args.retrain_federated_cox else "trains its own DAE (same seed and schedule as the pooled run); "
        "max |Δweight| between its final DAE (model and EMA) and the pooled run's, per cohort seed: "
        + ", ".join(fmt(checks[s].get("dae_max_abs_diff")) for s in args.cohort_seeds)
        + " (0 = training is deterministic given the seed)."),
        "- Centralised = one site: the normative model then has no site effect and the run's Cox model no site "
        "strata (the cohort's scanner differences are not modelled), unlike the 3-site runs; the CV evaluation "
        "is the same for all modes (scores alone, no strata).",
        "- DP rows: DP-SGD (Opacus, Poisson sampling) in every round and Gaussian-noised normative moments at every "
        "site; target ε = budget ε per site over the whole run (RDP accountant, δ = 1/(10·n_controls at the site)); "
        "the moments' noise multiplier is max(2, 10/ε) (as in bench_privacy), DP-SGD's σ is solved for the rest "
        "(σ per ε, max over sites and seeds: " + ", ".join(
            f"ε={e:g}: {max((max(d.values()) for d in v if d), default=math.nan):.2f}" for e, v in sigma.items()) + "). "
        "Survival is pooled here because every site's policy (node config `allow-pooled-scores=true`) was set to "
        "allow it for this benchmark, so that deviations.csv exists for the common CV evaluation; the scores "
        "themselves are not DP (a non-DP release the site consents to). Accounted ε is read from the run's "
        "privacy heads (`privacy/heads.json`).",
        f"- Run wall seconds are per run with {args.workers} runs sharing the 2 cores (and other work), so they "
        "include contention; DAE training is most of each.",
    ]
    lines += ["", "### Normative calibration on held-out controls", "",
              f"Per cohort seed, the DAE of the named run encodes every control's z_sem ({calib['dims'].iloc[0] if len(calib) else '?'} "
              f"dimensions); {args.folds}-fold CV over the controls (stratified by site): `NormativeModel` (age spline + "
              "sex + random site intercept, the cohort's true sites) fitted on the training folds, the held-out "
              "controls z-scored. Pooled over held-out controls and dimensions: mean and sd of z (calibrated: 0, 1), "
              "coverage of the central 95 % interval (|z| < 1.96; calibrated: 0.95; min–max over dimensions), "
              "MSLL (< 0: better than the training controls' mean and variance), squared Mahalanobis D² (OAS-shrunk "
              "residual covariance) over its χ²(d) expectation d, and the fraction of D² within χ²(d)'s 95 % quantile. "
              "Mean ± sd over cohort seeds.", "",
              "| DAE | controls | z mean | z sd | coverage 95 % | coverage min–max over dims | MSLL | D²/d | D² ≤ χ²₀.₉₅(d) | rank for 95 % of residual variance |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for source, group in calib.groupby("dae", sort=False):
        short = lambda c: cell(group[c].to_numpy(float))  # noqa: E731
        controls = sorted(set(group["controls"]))
        ranks = ", ".join(str(r) for r in group["rank95"])
        lines.append(f"| {source} | {'–'.join(map(str, controls))} | {short('z_mean')} | {short('z_sd')} | "
                     f"{short('coverage_95')} | {group['coverage_min_dim'].min():.2f}–{group['coverage_max_dim'].max():.2f} | "
                     f"{short('msll')} | {short('d2_mean_over_d')} | {short('d2_within_chi2_95')} | {ranks} (per seed) |")
    if len(calib):
        lines += ["", f"D² is compared with χ²(d), d = {calib['dims'].iloc[0]}, only as a reference: the last column is "
                  "the number of eigen-directions holding 95 % of the controls' residual covariance (normative model "
                  "fitted on all controls of the seed). Where it is far below d, the latent's residuals live in a few "
                  "directions, the OAS-shrunk covariance gives the others a variance floor the held-out residuals do "
                  "not fill, and D²/d falls well below 1: the Mahalanobis score is then conservative, not miscalibrated "
                  "per dimension (the per-dimension z above is the calibration check)."]
    lines += ["", "### Figures", "", f"![C-index vs ε]({figures['c_vs_eps']})", "",
              "Harrell's C (5-fold CV, mean ± sd over cohort seeds) of each NDAE score vs the per-site ε of the DP "
              "runs (∞: the non-private federated run); dashed: centralised (band ± sd); dotted: the CV Cox model on "
              "the true risk; grey: chance.", ""]
    if figures.get("km"):
        lines += [f"![Kaplan–Meier by risk tertile]({figures['km']})", "",
                  f"Kaplan–Meier by tertile of the in-sample Cox risk (cosine, Mahalanobis, age, sex), the "
                  f"federated pooled-Cox run of cohort seed {args.cohort_seeds[0]} (its own `survival/km_risk.png`).", ""]
    lines += ["### Per cohort seed", "",
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
    lines += ["", "### Reading", "", reading(args, seeds, checks, calib)]
    return write_section("modes", "Pipeline modes: centralised vs federated vs DP, over cohort seeds", "\n".join(lines))


def reuse_note(results: dict) -> str:
    """Say so when runs were taken over from an earlier invocation (`--reuse-runs`), and over what
    span of time the runs themselves ran (from their own files)."""
    runs = [r for r in results.values() if "run_dir" in r]
    reused = [r for r in runs if r.get("reused")]
    if not reused:
        return ""
    ends = [Path(r["run_dir"], "bench_run.json").stat().st_mtime for r in runs]
    starts = [end - r["wall_s"] for end, r in zip(ends, runs)]
    return (f" {len(reused)} of {len(runs)} runs were reused (`--reuse-runs`: finished runs of the same cohorts and "
            f"schedule, from an earlier invocation); their wall seconds are from that invocation, and all runs ran "
            f"within {(max(ends) - min(starts)) / 60:.1f} min of wall time, from the first run's start to the last "
            "run's end (file times). The total above is this invocation's.")


def reading(args, seeds: pd.DataFrame, checks: dict, calib: pd.DataFrame) -> str:
    """A plain-language reading computed from the numbers (nothing typed in by hand)."""
    ok = seeds[seeds["error"] == ""]
    n = len(args.cohort_seeds)
    per_fold = np.mean([checks[s]["patients"] for s in args.cohort_seeds]) / args.folds

    def stats(mode, column):
        return t_interval(ok.loc[ok["mode"] == mode, column].to_numpy(float))

    def verdict(mean, low, high):
        if not np.isfinite(low):
            return "one seed: no interval"
        return ("above chance" if low > 0.5 else "below chance" if high < 0.5 else
                "0.5 inside the 95 % interval: not distinguishable from chance")

    parts = []
    for mode in (CENTRAL, POOLED):
        scores = []
        for score in SCORES:
            mean, _, low, high = stats(mode, f"{score}_harrell_c")
            if np.isfinite(mean):
                scores.append(f"{score} {mean:.3f} ({verdict(mean, low, high)})")
        if scores:
            parts.append(f"{mode}: " + ", ".join(scores))
    oracle, _, oracle_low, _ = stats(POOLED, "true_risk_harrell_c")
    best = max((stats(m, f"{c}_harrell_c")[0] for m in (CENTRAL, POOLED) for c in SCORES), default=math.nan)
    text = (f"With {args.rounds} rounds × {args.epochs} local epochs of the `{args.preset}` DAE on CPU, the NDAE "
            f"scores' cross-validated Harrell's C over {n} cohort seed(s) is — " + "; ".join(parts) + ". "
            f"The Cox model on the true risk reaches {oracle:.3f} on the same folds, so the simulated signal is "
            f"there: the best NDAE mean ({best:.3f}) leaves {oracle - best:.3f} of it unused, the gap of a small, "
            "briefly trained DAE (the method's ceiling needs the `paper` preset on a GPU). ")
    dp = []
    reference = stats(POOLED, "cosine_harrell_c")
    for e in args.epsilons:
        mean = stats(dp_mode(e), "cosine_harrell_c")[0]
        if np.isfinite(mean):
            dp.append(f"ε={e:g}: {mean:.3f}")
    if dp:
        inside = all(reference[2] <= stats(dp_mode(e), "cosine_harrell_c")[0] <= reference[3]
                     for e in args.epsilons if np.isfinite(stats(dp_mode(e), "cosine_harrell_c")[0]))
        at_chance = np.isfinite(reference[2]) and reference[2] <= 0.5 <= reference[3]
        text += (f"DP runs, cosine C: " + ", ".join(dp) + f" (no DP: {reference[0]:.3f}); "
                 + ("every DP mean lies inside the non-private run's 95 % interval" if inside and np.isfinite(reference[2])
                    else "compare with the intervals above before reading a difference")
                 + ("; since the non-private run is itself not distinguishable from chance, this budget cannot show "
                    "what privacy costs in C (there is no signal to lose yet). " if at_chance else ". ")
                 + f"Folds hold ~{per_fold:.0f} patients, so one fold's C has sd ≈ 0.1. ")
    diffs = [checks[s].get("coef_max_abs_diff") for s in args.cohort_seeds if checks[s].get("coef_max_abs_diff") is not None]
    if diffs:
        text += (f"Pooled and federated Cox agree to max |Δcoef| = {max(diffs):.1e} "
                 f"({'within' if max(diffs) < 1e-5 else 'NOT within'} the expected ~1e-6). ")
    for source, group in calib.groupby("dae", sort=False):
        text += (f"Normative calibration ({source} DAE): held-out z mean {group['z_mean'].mean():+.3f}, sd "
                 f"{group['z_sd'].mean():.3f}, coverage {group['coverage_95'].mean():.3f} of the nominal 0.95. ")
    return text.strip()


# ---- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0, help="DAE / federation seed (the same for every mode)")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cv-seed", type=int, default=0)
    parser.add_argument("--penalizer", type=float, default=0.1)
    parser.add_argument("--max-subjects", type=int, default=None, help="smoke runs: a cohort from a subset of the scans")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="cohort generator processes")
    parser.add_argument("--retrain-federated-cox", action="store_true",
                        help="train the federated-Cox run's DAE afresh instead of resuming from the pooled run's")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="keep finished runs of the same cohort and schedule (development)")
    parser.add_argument("--work", default="/tmp/bench-modes")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cohorts, centrals = {}, {}
    for seed in args.cohort_seeds:
        cohorts[seed] = make_cohort(work, seed, args.jobs, args.max_subjects)
        centrals[seed] = central_split(cohorts[seed])
        prewarm(site_manifests(cohorts[seed]) + site_manifests(centrals[seed]), str(work / "cache"))
    cohort_s = time.perf_counter() - started
    print(f"[bench_modes] cohorts ready in {cohort_s:.0f} s", flush=True)

    results = run_all(args, cohorts, centrals)
    modes = [CENTRAL, POOLED, FEDCOX, *[dp_mode(e) for e in args.epsilons]]
    per_fold, checks, calib_rows = [], {}, []
    for seed in args.cohort_seeds:
        frame, checks[seed], _ = evaluate_seed(args, seed, cohorts[seed], results)
        per_fold.append(frame)
        for mode in (CENTRAL, POOLED):
            run = results.get((seed, mode), {})
            if "error" not in run and run:
                calib_rows.append({"dae": mode, "cohort_seed": seed,
                                   **calibration(Path(run["run_dir"]), cohorts[seed], str(work / "cache"),
                                                 args.folds, args.cv_seed)})
    per_fold = pd.concat(per_fold, ignore_index=True)
    seeds = per_seed_table(per_fold, results, checks, modes)
    calib = pd.DataFrame(calib_rows)

    from ndae.io import atomic_write_bytes, atomic_write_text

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS_DIR / "modes_per_seed.csv", seeds.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    atomic_write_text(RESULTS_DIR / "modes_per_fold.csv", per_fold.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    figures = {"c_vs_eps": "modes_c_vs_epsilon.png"}
    figure_c_vs_epsilon(seeds[seeds["error"] == ""], list(args.epsilons), RESULTS_DIR / figures["c_vs_eps"])
    first = results.get((args.cohort_seeds[0], POOLED), {})
    km = Path(first.get("run_dir", "/nonexistent")) / "survival" / "km_risk.png"
    if km.exists():
        figures["km"] = f"modes_km_risk_seed{args.cohort_seeds[0]}.png"
        atomic_write_bytes(RESULTS_DIR / figures["km"], km.read_bytes())
    total_s = time.perf_counter() - started
    path = write_report(args, seeds, per_fold, checks, calib, cohorts, results, figures, total_s, cohort_s)
    print(path.read_text())


if __name__ == "__main__":
    main()
