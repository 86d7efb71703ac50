"""`ndae cohort`: simulate a multi-site ALS cohort with known survival risk from healthy scans."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ndae import cli_types
from ndae.errors import NdaeError

COHORT_FILES = ("cohort.json", "manifest.csv", "truth.csv", "images", "sites")
# What `ndae cohort` writes (deleted by --force): the files above and the example figure.
COHORT_OUTPUTS = (*COHORT_FILES, "cohort_example.png")


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cohort",
        help="simulate a multi-site ALS cohort (images, manifests, survival truth) from healthy scans",
        description="Each healthy scan becomes one control or the anatomy of --patients-per-anatomy patients. "
        "Writes manifest.csv, "
        "sites/<site>/manifest.csv, truth.csv, images/, cohort.json and cohort_example.png. See docs/cohort.md.",
    )
    parser.add_argument("--healthy", required=True, help="manifest CSV of healthy scans with a 'mask' (MUSE labels) column, or its folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sites", type=cli_types.int_range(1), default=4, help="number of sites (default 4)")
    parser.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=0)
    parser.add_argument("--patients", type=cli_types.int_range(0), default=None,
                        help="healthy scans used as patients' anatomies (default: half the subjects)")
    parser.add_argument("--patients-per-anatomy", type=cli_types.int_range(1, cli_types.MAX_PATIENTS_PER_ANATOMY),
                        default=1, metavar="K",
                        help="patients drawn from each patient anatomy, each with its own severity, onset, survival "
                        "and image (default 1; the cohort has K x --patients patients)")
    parser.add_argument("--site-sizes", type=_sizes, default=None, help="subjects per site, e.g. 40,30,30,20 (default: all, 3:1 largest to smallest)")
    parser.add_argument("--max-subjects", type=cli_types.int_range(1), default=None,
                        help="use a seeded subset of the healthy scans")
    parser.add_argument("--controls-only-site", default=None, help="a site with no patients, e.g. site4")
    parser.add_argument("--patients-only-site", default=None, help="a site with no controls, e.g. site3")
    parser.add_argument("--disease", default="als", metavar="SETTING",
                        help="disease setting: als (motor cortex, corticospinal tract, ventricles, global atrophy; "
                        "default), cortex-only (the precentral gyri alone) or mild (every effect at half size); "
                        "docs/cohort.md")
    parser.add_argument("--jobs", type=cli_types.jobs, default=1,
                        help=f"worker processes, 1 to {cli_types.max_jobs()} here (output does not depend on it)")
    parser.add_argument("--no-figure", action="store_true", help="skip cohort_example.png")
    parser.add_argument("--force", action="store_true", help="replace a cohort already in --out")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.cohort import CohortConfig, generate_cohort
    from ndae.cohort.disease import disease_setting

    from ndae.run_folder import claim_output

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NdaeError(f"--out {out}: exists and is not a folder")
    present = [name for name in COHORT_FILES if (out / name).exists()]
    if present and not args.force:
        raise NdaeError(f"--out {out} already holds a cohort ({', '.join(present)}): choose another folder, "
                        "or pass --force to replace it")
    disease = disease_setting(args.disease)  # before anything is written
    config = CohortConfig(
        disease=disease,
        disease_name=args.disease,
        sites=args.sites,
        seed=args.seed,
        patients=args.patients,
        patients_per_anatomy=args.patients_per_anatomy,
        site_sizes=args.site_sizes,
        controls_only_site=args.controls_only_site,
        patients_only_site=args.patients_only_site,
        max_subjects=args.max_subjects,
        jobs=args.jobs,
        figure=not args.no_figure,
    )
    # The folder's lock keeps a second `ndae cohort` (or any command) out until this one ends:
    # two cohorts written into one folder would mix their seeds' images and tables.
    settings = {key: value for key, value in vars(args).items() if key not in ("func", "force", "jobs", "no_figure")}
    with claim_output(out, command="cohort", settings=settings, outputs=COHORT_OUTPUTS, force=args.force,
                      can_resume=False) as claim:
        summary = generate_cohort(args.healthy, claim.folder, config)
        claim.finish()
    survival = summary["survival"]
    print(f"cohort: {summary['subjects']} subjects ({summary['controls']} controls, {summary['patients']} patients "
          f"from {summary['patient_anatomies']} anatomies) in {len(summary['sites'])} sites, disease setting "
          f"{args.disease} → {args.out}")
    for subject, reason in summary.get("excluded_subjects", {}).items():
        print(f"left out {subject}: {reason}")
    if survival:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in survival.items()}))
    return 0
