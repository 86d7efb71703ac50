"""Benchmark of the simulated ALS cohort generator on the shipped demo data (CPU).

Generates a 4-site cohort from all demo subjects (121 → ~120; one controls-only and one
patients-only site), for each `--patients-per-anatomy` K and each worker count: measures wall and
CPU time (per rendered subject: the cost of a larger cohort), checks that the runs of one K are
byte-identical across worker counts, and reports the survival summary (C*, censoring, KM
median), the injected effects and the site effect of the first K. Writes
`benchmarks/results/cohort.md`.

    python benchmarks/bench_cohort.py [--healthy MANIFEST] [--jobs 1 2] [--patients-per-anatomy 1 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ndae.cohort import CohortConfig, generate_cohort
from ndae.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".png" and p.name != "cohort.json"):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", default=None, help="healthy manifest (default: the shipped demo data)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--patients-per-anatomy", type=int, nargs="+", default=[1], metavar="K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep the last cohort in this folder")
    parser.add_argument("--results", default=str(RESULTS / "cohort.md"), help="where to write the report")
    args = parser.parse_args(argv)
    source = "the shipped demo data (`ndae.data.demo`)"
    if args.healthy is None:
        from ndae.data.demo import demo_manifest_path

        args.healthy = str(demo_manifest_path())
    else:
        source = f"`{args.healthy}`"
    n_healthy = len(pd.read_csv(args.healthy))

    timings, digests, summaries = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as scratch:
        for k in args.patients_per_anatomy:
            for jobs in args.jobs:
                out = Path(scratch) / f"k{k}-jobs{jobs}"
                config = CohortConfig(sites=4, seed=args.seed, controls_only_site="site4", patients_only_site="site3",
                                      jobs=jobs, patients_per_anatomy=k)
                cpu_before = _cpu_seconds()
                start = time.perf_counter()
                summaries[k] = generate_cohort(args.healthy, out, config)
                timings[k, jobs] = (time.perf_counter() - start, _cpu_seconds() - cpu_before)
                digests[k, jobs] = _digest(out)
                print(f"K={k} jobs={jobs}: {summaries[k]['subjects']} subjects, {timings[k, jobs][0]:.1f} s wall, "
                      f"{timings[k, jobs][1]:.1f} s CPU", flush=True)
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(out, args.keep)
    compared = len(args.jobs) > 1
    identical = all(len({digests[k, j] for j in args.jobs}) == 1 for k in args.patients_per_anatomy)
    summary = summaries[args.patients_per_anatomy[0]]
    cost_rows = []
    for (k, jobs), (wall, cpu) in timings.items():
        made = summaries[k]
        cost_rows.append(
            f"| {k} | {jobs} | {made['subjects']} | {made['patients']} | {wall:.1f} | {cpu:.1f} | "
            f"{cpu / made['subjects']:.2f} | {wall * jobs / made['subjects']:.2f} |"
        )

    survival = summary["survival"]
    effects = summary["injected_effects_mean_over_patients"]
    site_effect = summary["site_effect"]
    lines = [
        "# Cohort generator benchmark",
        "",
        f"`python benchmarks/bench_cohort.py` — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible (shared with other work), Python {sys.version.split()[0]}.",
        "",
        f"Input: {n_healthy} healthy scans from {source}. Output: 4 sites, seed {args.seed}, "
        "site4 controls-only, site3 patients-only, all images + label maps written (.nii.gz), figure included; "
        f"the cohort below is the one with {args.patients_per_anatomy[0]} patient(s) per anatomy.",
        "",
        "| patients per anatomy | worker processes | subjects rendered | patients | wall time (s) | "
        "CPU time, all processes (s) | CPU s per subject | wall s × workers per subject |",
        "|---|---|---|---|---|---|---|---|",
        *cost_rows,
        "",
        f"Load average when finished: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. On a shared machine the wall "
        "time is inflated; CPU time / worker count is what an otherwise idle machine would take.",
        "",
        (f"Outputs byte-identical across worker counts (images, label maps, manifests, truth): **{identical}**."
         if compared else "Byte-identity across worker counts not checked (one worker count run)."),
        "Target: under 120 s on 2 CPU cores.",
        "",
        "## Cohort",
        "",
        "| site | subjects | controls | patients | bulbar onset | mean age | gain | gamma | blur FWHM (mm) | noise sd |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, site in summary["sites"].items():
        scanner = site["scanner"]
        lines.append(
            f"| {name} | {site['subjects']} | {site['controls']} | {site['patients']} | {site['bulbar_onset']} | "
            f"{site['mean_age']:.1f} | {scanner['gain']:.0f} | {scanner['gamma']:.2f} | "
            f"{'/'.join(f'{v:.1f}' for v in scanner['blur_fwhm_mm'])} | {scanner['noise_sd']:.3f} |"
        )
    lines += [
        "",
        "## Survival (truth)",
        "",
        f"- patients: {survival['n_patients']}; censored: {survival['censoring_fraction']:.1%}",
        f"- Kaplan–Meier median: {survival['kaplan_meier_median_months']:.1f} months "
        f"(median true event time {survival['median_true_event_time_months']:.1f})",
        f"- oracle C* (true η, Harrell, censored data): {survival['oracle_c_index']:.3f}; "
        f"on uncensored true times: {survival['oracle_c_index_uncensored']:.3f}",
        "",
        "## Injected effects (mean over patients, from the written label maps vs the source)",
        "",
        f"- precentral volume: {effects['precentral_volume_change']:+.1%}; lateral ventricles: "
        f"{effects['ventricles_volume_change']:+.1%}; brain: {effects['brain_volume_change']:+.1%}",
        f"- {summary['patients']} patients; excluded scans (unusable label maps): "
        f"{', '.join(summary.get('excluded_subjects', {})) or 'none'}",
        f"- smallest Jacobian determinant of any patient's deformation: {effects['min_jacobian']:.2f} (> 0: no folding)",
        "",
        "## Site effect vs disease effect",
        "",
        f"Feature: {site_effect['feature']}.",
        f"- range of site means as delivered: {site_effect['between_site_range_delivered']:.3f}",
        f"- mean shift caused by the disease: {site_effect['disease_shift_mean']:+.3f}"
        + (f" (severity > 0.7: {site_effect['disease_shift_at_severity_above_0.7']:+.3f})"
           if site_effect.get("disease_shift_at_severity_above_0.7") is not None else ""),
        "- median brain intensity by site: "
        + ", ".join(f"{k} {v:.0f}" for k, v in site_effect["brain_intensity_median_by_site"].items()),
        "",
    ]
    atomic_write_text(args.results, "\n".join(lines))
    print("\n".join(lines))
    return 0 if identical or not compared else 1


if __name__ == "__main__":
    sys.exit(main())
