"""Orchestration of the pipeline-modes benchmark: the cohorts, one run spec per mode, and the runs
themselves (each through the real federation code in process, `InProcessGrid` + `run_federation`,
in a worker process). Nothing here evaluates a run; see `evaluation`."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from benchmarks.modes.names import CENTRAL, FEDCOX, POOLED, dp_mode


# ---- one federated run (in a worker process) ----
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
def make_cohort(work: Path, seed: int, jobs: int, max_subjects: int | None, patients_per_anatomy: int = 1) -> Path:
    from ndae.cohort import CohortConfig, generate_cohort
    from ndae.data.demo import demo_manifest_path

    out = work / (f"cohort-seed{seed}" + (f"-k{patients_per_anatomy}" if patients_per_anatomy != 1 else "")
                  + (f"-max{max_subjects}" if max_subjects else ""))
    if not (out / "truth.csv").exists():
        print(f"[cohort] generating seed {seed} -> {out}", flush=True)
        generate_cohort(demo_manifest_path(), out, CohortConfig(sites=3, seed=seed, jobs=jobs, figure=False,
                                                                max_subjects=max_subjects,
                                                                patients_per_anatomy=patients_per_anatomy))
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
    from ndae.federation.site.data import load_site

    for manifest in manifests:
        load_site(manifest, cache_dir).data  # `.data` prepares and loads the slices


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


# ---- what the report needs to know about the runs and cohorts (stored in the raw results) ----
def reuse_summary(results: dict) -> dict:
    """How many runs were taken over from an earlier invocation (`--reuse-runs`), and over what span of
    wall time all runs ran (from their own files' times)."""
    runs = [r for r in results.values() if "run_dir" in r]
    reused = [r for r in runs if r.get("reused")]
    if not runs or not reused:
        return {"runs": len(runs), "reused": len(reused), "span_min": None}
    ends = [Path(r["run_dir"], "bench_run.json").stat().st_mtime for r in runs]
    starts = [end - r["wall_s"] for end, r in zip(ends, runs)]
    return {"runs": len(runs), "reused": len(reused), "span_min": (max(ends) - min(starts)) / 60}


def cohort_summary(cohort: Path) -> dict:
    """Controls, and controls / patients per site, of one cohort (from its manifest)."""
    import pandas as pd

    manifest = pd.read_csv(cohort / "manifest.csv")
    by_site = manifest.groupby("site")["group"].value_counts().unstack(fill_value=0)
    return {"controls": int((manifest["group"] == "control").sum()),
            "per_site": {str(site): [int(row.get("control", 0)), int(row.get("als", 0))] for site, row in by_site.iterrows()}}


def source_scans() -> int:
    """The number of healthy scans the cohorts are simulated from (the shipped demo manifest)."""
    import pandas as pd

    from ndae.data.demo import demo_manifest_path

    return int(len(pd.read_csv(demo_manifest_path())))
