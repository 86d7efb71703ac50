"""Centralised vs federated: DAE training wall time (same data, same epochs), survival C-index, and
how time and peak memory grow when the number of sites doubles (2 → 4 → 8) and when subjects double.

One synthetic cohort; for each K the same subjects are split into K sites (round-robin within
controls and within patients, so every site has both). Then
- centralised: the DAE trained on the pooled controls for R × E epochs (same number of passes
  over the data as the federation), central normative fit, pooled site-stratified Cox;
- federated: R rounds × E local epochs of FedAvg through the real ClientApp/ServerApp code,
  either in process (`--engine inprocess`: federation overhead without process start-up) or
  through `flwr run` on a simulation SuperLink (`--engine flwr`: Ray, what `ndae demo` runs);
- subjects doubling: at K = `--subjects-sites`, half of every site's controls and half of its
  patients (the first half in manifest order: deterministic) against all of them.
Every run (central, federated pooled mode, federated survival mode) is its own fresh `spawn`
process with 1 torch thread, so its peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`) is its own and
not that of earlier runs. Prepared-slice caches are filled before any timed run.
Writes benchmarks/results/federation.md.

    python -m benchmarks.bench_federation [--sites 2 4 8] [--subjects-sites 4] [--rounds 3] [--epochs 2]
        [--engine inprocess flwr] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import write_section



def central(cohort: Path, cache: Path, rounds: int, epochs: int, batch_size: int, seed: int) -> dict:
    from ndae.data.dataset import load_slice_dataset
    from ndae.deviation.scores import deviation_table
    from ndae.federation.server.survival import fit_pooled_cox
    from ndae.federation.server.phases import dae_config_for
    from ndae.federation.config import FederationConfig
    from ndae.federation.site.training import local_steps
    from ndae.model import EMA, batch_iterator, build_model, encode, make_optimizer, prepare_images, train_steps
    from ndae.normative import NormativeModel
    from ndae.survival.analysis import patient_table
    from ndae.survival.metrics import harrell_c_index

    t_all, cpu_all = time.time(), time.process_time()
    data = load_slice_dataset(cohort / "manifest.csv", cache, progress=False)
    cfg = dae_config_for(FederationConfig(batch_size=batch_size, seed=seed), data.images.shape[1])
    control = data.groups == "control"
    t, cpu = time.time(), time.process_time()
    model = build_model(cfg, seed=seed)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    x = prepare_images(data.images[control], cfg)
    batches = batch_iterator(x, None, cfg.train.batch_size, torch.Generator().manual_seed(seed + 1))
    steps = local_steps(int(control.sum()), cfg.train.batch_size, rounds * epochs)
    train_steps(model, ema, make_optimizer(model, cfg), batches, steps, generator=torch.Generator().manual_seed(seed),
                grad_clip=cfg.train.grad_clip)
    seconds, train_cpu = time.time() - t, time.process_time() - cpu
    covariates = pd.DataFrame({"subject": data.subjects, "site": data.sites, "age": data.ages, "sex": data.sexes})
    z_sem = encode(ema.model, data.images).numpy().astype(np.float64)
    normative = NormativeModel().fit(covariates[control].reset_index(drop=True), z_sem[control])
    patients = data.groups == "als"
    scores = deviation_table(covariates["subject"][patients], covariates[patients].reset_index(drop=True),
                             z_sem[patients], normative)
    table, _ = patient_table(scores, data.manifest, ["cosine", "mahalanobis"])
    covariate_names = ["cosine", "mahalanobis", *[c for c in ("age", "sex_female") if table[c].nunique() > 1]]
    cox = fit_pooled_cox(table, covariate_names)
    risk = table[covariate_names].to_numpy(float) @ cox.params_.reindex(covariate_names).to_numpy()
    return {"train_s": seconds, "train_cpu_s": train_cpu, "wall_s": time.time() - t_all,
            "cpu_s": time.process_time() - cpu_all, "steps": steps,
            "c_index": harrell_c_index(table["time"], table["event"], risk),
            "c_index_within_site": float(cox.concordance_index_)}


def federated(cohort: Path, cache: Path, run_dir: Path, sites: int, rounds: int, epochs: int, batch_size: int,
              seed: int, engine: str, mode: str) -> dict:
    from ndae.federation.config import FederationConfig
    from ndae.federation.inprocess import InProcessGrid
    from ndae.federation.server.phases import run_federation
    from ndae.federation.simulation import run_simulation

    config = FederationConfig(run_dir=str(run_dir), cohort_dir=str(cohort), cache_dir=str(cache), rounds=rounds,
                              local_epochs=epochs, batch_size=batch_size, seed=seed, survival_mode=mode, resume=False)
    t, cpu = time.time(), time.process_time()
    if engine == "inprocess":
        manifests = sorted((cohort / "sites").glob("*/manifest.csv"))
        run_federation(InProcessGrid(manifests, config.to_run_config()), config, log=lambda _: None)
    else:
        run_simulation(config.to_run_config(), sites, timeout=3000, stream=True)
    wall, cpu = time.time() - t, time.process_time() - cpu
    summary = json.loads((run_dir / "summary.json").read_text())
    survival = summary["survival"]
    return {"train_s": summary["timings"]["dae_training_s"], "wall_s": wall, "cpu_s": cpu,
            "c_index_within_site": survival["c_index_within_site"],
            "c_index": (survival.get("c_index_pooled") or {}).get("estimate")}


def split_cohort(source: Path, out: Path, sites: int, fraction: float = 1.0) -> Path:
    """The same subjects re-split into `sites` sites, images shared.

    Round-robin within controls and within patients (manifest order), so every site holds both.
    `fraction` < 1 keeps, at every site, that first fraction of its controls and of its patients
    (manifest order: deterministic, and a subset of the full split)."""
    manifest = pd.read_csv(source / "manifest.csv", dtype={"subject": str})
    rank = manifest.groupby("group").cumcount()
    manifest["site"] = [f"site{1 + r % sites}" for r in rank]
    if fraction < 1:
        position = manifest.groupby(["site", "group"]).cumcount()
        size = manifest.groupby(["site", "group"])["subject"].transform("size")
        manifest = manifest[position < np.ceil(fraction * size)].reset_index(drop=True)
    for column in ("image", "mask"):
        manifest[column] = [str((source / p).resolve()) for p in manifest[column]]
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    for site, local in manifest.groupby("site"):
        (out / "sites" / site).mkdir(parents=True, exist_ok=True)
        local.to_csv(out / "sites" / site / "manifest.csv", index=False)
    return out


def warm_caches(cohort: Path, cache: Path) -> None:
    """Prepare every subject into the caches the central run and the sites read, before any timing."""
    from ndae.data.dataset import load_slice_dataset
    from ndae.federation.site.data import load_site

    load_slice_dataset(cohort / "manifest.csv", cache, progress=False)
    for manifest in sorted((cohort / "sites").glob("*/manifest.csv")):
        load_site(manifest, str(cache)).data  # `.data` prepares and loads the slices


# ---- one run in a fresh process ---------------------------------------------------------------
def _max_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _child(spec: dict, connection) -> None:
    try:
        torch.set_num_threads(spec["threads"])
        # Import what every run uses before reading the baseline, so "after imports" is comparable.
        import ndae.data.dataset  # noqa: F401
        import ndae.federation.site.handlers  # noqa: F401
        import ndae.federation.server.phases  # noqa: F401
        import ndae.model  # noqa: F401
        import ndae.survival.analysis  # noqa: F401

        after_imports = _max_rss_mib()
        paths = {k: Path(v) for k, v in spec["paths"].items()}
        if spec["job"] == "central":
            result = central(paths["cohort"], paths["cache"], spec["rounds"], spec["epochs"], spec["batch_size"], 0)
        else:
            result = federated(paths["cohort"], paths["cache"], paths["run_dir"], spec["sites"], spec["rounds"],
                               spec["epochs"], spec["batch_size"], 0, spec["engine"], spec["job"])
        result.update(rss_after_imports_mib=after_imports, peak_rss_mib=_max_rss_mib(),
                      children_peak_rss_mib=_max_rss_mib(resource.RUSAGE_CHILDREN))
        connection.send(result)
    except BaseException as error:  # report it to the parent, which raises
        connection.send({"error": f"{type(error).__name__}: {error}\n{traceback.format_exc()}"})
    finally:
        connection.close()


def in_fresh_process(spec: dict) -> dict:
    """Run one job in a new `spawn` process; its result plus the process's wall time (start-up included)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(spec, send))
    t = time.time()
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": f"process died (exit code {process.join() or process.exitcode})"}
    process.join()
    if "error" in result:
        raise RuntimeError(f"benchmark job {spec['job']} K={spec['sites']} failed: {result['error']}")
    result["process_s"] = time.time() - t
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--subjects-sites", type=int, default=4,
                        help="K at which half of the subjects is compared with all of them (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--per-site", type=int, default=8, help="synthetic subjects per site at the largest K (half controls)")
    parser.add_argument("--engine", nargs="+", default=["inprocess"], choices=("inprocess", "flwr"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="run every job this many times; keep the fastest")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # inherited by the spawned runs
    torch.set_num_threads(args.threads)
    from ndae.testing.synthetic_cohort import make_synthetic_cohort

    started, load_start = time.time(), os.getloadavg()[0]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-federation-"))
    base = work / "base"
    k_max = max(args.sites)
    if not (base / "manifest.csv").exists():
        make_synthetic_cohort(base, sites=k_max, controls_per_site=args.per_site // 2,
                              patients_per_site=args.per_site - args.per_site // 2, seed=0)
    n_all = len(pd.read_csv(base / "manifest.csv"))
    cache = work / "cache"
    # Configurations: (K, fraction of the subjects). Sites scaling at all subjects, then subjects doubling.
    configs = [(k, 1.0) for k in args.sites]
    if args.subjects_sites:
        if (args.subjects_sites, 1.0) not in configs:
            configs.append((args.subjects_sites, 1.0))
        configs.append((args.subjects_sites, 0.5))
    cohorts = {}
    for k, fraction in configs:
        name = f"k{k}" + ("" if fraction == 1 else f"_f{fraction:g}")
        cohorts[k, fraction] = split_cohort(base, work / name, k, fraction)
        warm_caches(cohorts[k, fraction], cache)

    runs = {}  # (K, fraction, engine or "central", job) -> result
    for repeat in range(args.repeats):  # repeats interleaved, so slow spells of the shared machine spread out
        for k, fraction in configs:
            cohort = cohorts[k, fraction]
            manifest = pd.read_csv(cohort / "manifest.csv")
            common = {"sites": k, "rounds": args.rounds, "epochs": args.epochs, "batch_size": args.batch_size,
                      "threads": args.threads}
            jobs = [("central", "central")] + [(e, mode) for e in args.engine for mode in ("pooled", "federated")]
            for engine, job in jobs:
                run_dir = work / f"run_{cohort.name}_{engine}_{job}"
                spec = {**common, "job": job, "engine": engine,
                        "paths": {"cohort": str(cohort), "cache": str(cache), "run_dir": str(run_dir)}}
                result = in_fresh_process(spec)
                result.update(K=k, fraction=fraction, subjects=len(manifest), repeat=repeat, engine=engine, job=job,
                              controls=int((manifest["group"] == "control").sum()))
                print(json.dumps(result), flush=True)
                runs[k, fraction, engine, job] = merge_repeat(runs.get((k, fraction, engine, job)), result)
    total_minutes, load_end = (time.time() - started) / 60, os.getloadavg()[0]
    write_report(args, runs, configs, n_all, total_minutes, load_start, load_end)


TIMES = ("train_s", "train_cpu_s", "wall_s", "cpu_s", "process_s")


def merge_repeat(kept: dict | None, new: dict) -> dict:
    """Timings: the fastest repeat (the least disturbed by other load); memory: the largest peak."""
    if kept is None:
        return new
    merged = dict(kept)
    for key in TIMES:
        if key in new:
            merged[key] = min(kept[key], new[key])
    for key in ("peak_rss_mib", "rss_after_imports_mib"):
        merged[key] = max(kept[key], new[key])
    return merged


def write_report(args, runs: dict, configs: list, n_all: int, total_minutes: float, load_start: float,
                 load_end: float) -> None:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    ratio = lambda a, b: f"{a:.1f} (×{a / b:.2f})"  # noqa: E731
    sites_rows = [(k, 1.0) for k in args.sites]
    single = "single runs" if args.repeats == 1 else f"the fastest of {args.repeats} runs (memory: the largest)"
    lines = [f"torch threads {args.threads}. Engines: `inprocess` delivers the same Message-API apps in one process "
             "(federation overhead without process start-up); `flwr` runs them through `flwr run` on a simulation "
             "SuperLink with Ray (what `ndae demo` runs; includes SuperLink and Ray start-up).",
             f"Data: synthetic on-grid cohort (`ndae.testing.synthetic_cohort`), {n_all} subjects "
             f"(half controls), the same subjects re-split into K sites (round-robin within controls and within "
             f"patients). DAE `tiny`, batch {args.batch_size}, "
             f"{args.rounds} rounds × {args.epochs} local epochs (federated) vs {args.rounds * args.epochs} epochs "
             "(centralised, same number of passes over the controls). Every run is a fresh process "
             f"(`multiprocessing` spawn); timings are {single}; the whole benchmark took {total_minutes:.1f} min on a "
             f"shared 2-core machine (1-minute load average {load_start:.1f} at the start, {load_end:.1f} at the end). "
             "CPU s (user + system time of the run's process, 1 thread) is far less sensitive to the other load than "
             "wall s, so the ratios below lead with it.", "",
             "| K | engine | central train s | federated train s | ratio fed/central | federated run wall s | "
             "central run CPU s | federated run CPU s | ratio fed/central (CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, fraction in sites_rows:
        c = runs[k, fraction, "central", "central"]
        for engine in args.engine:
            f = runs[k, fraction, engine, "pooled"]
            cpu = (f"{f['cpu_s']:.1f} | {f['cpu_s'] / c['cpu_s']:.2f}" if engine == "inprocess"
                   else f"{f['cpu_s']:.1f} (driver only) | –")
            lines.append(f"| {k} | {engine} | {c['train_s']:.1f} | {f['train_s']:.1f} | {f['train_s'] / c['train_s']:.2f} "
                         f"| {f['wall_s']:.1f} | {c['cpu_s']:.1f} | {cpu} |")

    def growth(rows: list[tuple[int, float]], label) -> list[str]:
        out = []
        for engine in args.engine:
            b_c, b_f = runs[(*rows[0], "central", "central")], runs[(*rows[0], engine, "pooled")]
            for k, fraction in rows:
                c, f = runs[k, fraction, "central", "central"], runs[k, fraction, engine, "pooled"]
                if engine == "inprocess":
                    cpu, memory = ratio(f["cpu_s"], b_f["cpu_s"]), ratio(f["peak_rss_mib"], b_f["peak_rss_mib"])
                    own = ratio(f["peak_rss_mib"] - f["rss_after_imports_mib"],
                                b_f["peak_rss_mib"] - b_f["rss_after_imports_mib"])
                else:  # the sites run in Ray workers: this process sees only the driver
                    cpu, memory, own = f"{f['cpu_s']:.1f} (driver only)", f"{f['peak_rss_mib']:.0f} (driver only)", "–"
                out.append(f"| {label(k, fraction)} | {engine} | {f['subjects']} ({f['controls']}) | {cpu} | "
                           f"{ratio(f['wall_s'], b_f['wall_s'])} | {ratio(f['train_s'], b_f['train_s'])} | {memory} | "
                           f"{own} | {ratio(c['cpu_s'], b_c['cpu_s'])} | {ratio(c['peak_rss_mib'], b_c['peak_rss_mib'])} |")
        return out

    header = ["| configuration | engine | subjects (controls) | federated run CPU s | federated run wall s | "
              "federated DAE train wall s | federated peak RSS MiB | federated RSS above imports MiB | "
              "central run CPU s | central peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["", "**Cost growth** (federated: pooled survival mode, the whole run: site info, DAE rounds, normative "
              "statistics, scores, Cox; × = ratio to the first row of the same engine in each block, the smallest "
              "configuration):", "", f"Sites doubling, same {n_all} subjects:", "", *header,
              *growth(sites_rows, lambda k, _: f"K = {k}")]
    if args.subjects_sites:
        k = args.subjects_sites
        lines += ["", f"Subjects doubling, K = {k} sites (half = the first half of every site's controls and of its "
                  "patients):", "", *header,
                  *growth([(k, 0.5), (k, 1.0)], lambda _, fraction: "half the subjects" if fraction < 1 else "all subjects")]
    low, high = (f(r["rss_after_imports_mib"] for r in runs.values()) for f in (min, max))
    imports_range = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}–{high:.0f}"
    lines += ["", "Peak RSS is the whole process (Python, torch, the code and, in process, every site's data and "
              "model: the `inprocess` engine holds all K sites in one process, so memory held per site adds up with K "
              f"there, where a real site holds only its own). The torch, Flower and ndae imports alone take "
              f"{imports_range} MiB of it; \"above imports\" is the peak minus the RSS that process had right after "
              "those imports. Under `flwr` the sites run in Ray worker processes outside this process's accounting, "
              "so only the driver's CPU time and RSS are shown.", "",
              "Every run (raw numbers; process s includes interpreter start-up and imports):", "",
              "| K | subjects | engine | run | train s | run wall s | run CPU s | process s | RSS after imports MiB | "
              "peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        lines.append(f"| {r['K']} | {r['subjects']} | {r['engine']} | {r['job']} | {r['train_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['process_s']:.1f} | {r['rss_after_imports_mib']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} |")

    lines += ["", "Survival C-index (Harrell, training data; within-site = pairs within the same site):", "",
              "| K | subjects | engine | central DAE: pooled C | central: within-site C | federated DAE, pooled mode: "
              "pooled C | pooled mode: within-site C | federated mode: within-site C |", "|---|---|---|---|---|---|---|---|"]
    for k, fraction in configs:
        c = runs[k, fraction, "central", "central"]
        for engine in args.engine:
            p, f = runs[k, fraction, engine, "pooled"], runs[k, fraction, engine, "federated"]
            lines.append(f"| {k} | {p['subjects']} | {engine} | {fmt(c['c_index'])} | {fmt(c['c_index_within_site'])} | "
                         f"{fmt(p['c_index'])} | {fmt(p['c_index_within_site'])} | {fmt(f['c_index_within_site'])} |")
    lines += ["", "Pooled and federated survival modes fit the same site-stratified Cox model (coefficients equal to "
              "1e-6, tests/test_federation.py), so their within-site C-index is identical; the centralised column "
              "differs because its DAE was trained centrally (different weights).", ""]
    print(write_section("federation", "Federation: centralised vs simulated federation", "\n".join(lines)))


if __name__ == "__main__":
    main()
