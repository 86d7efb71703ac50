"""`ndae deviations`: score every subject's z_sem against the run's normative model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deviations",
        help="deviation scores (cosine, z, Mahalanobis) of every subject",
        description="Write deviations.csv: one row per subject of the latents, column 'subject' first, "
        "then cosine (standardised z_sem vs normative expectation), mean_abs_z, max_abs_z, "
        "count_abs_z_gt_2 and mahalanobis.",
    )
    parser.add_argument("--run", required=True, help="run folder holding normative/ (model.npz, model.json)")
    parser.add_argument("--latents", default=None, help="latents.npz (default RUN/latents.npz)")
    parser.add_argument("--manifest", required=True, help="manifest.csv with subject, site, age, sex, group")
    parser.add_argument("--out", default=None, help="output CSV (default RUN/deviations.csv)")
    parser.add_argument("--include-z", action="store_true", help="also write one z_<feature> column per dimension")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.normative.files import write_deviations

    run_dir = Path(args.run)
    latents = args.latents or run_dir / "latents.npz"
    out = args.out or run_dir / "deviations.csv"
    table = write_deviations(run_dir, latents, args.manifest, out, include_z=args.include_z)
    print(f"deviation scores of {len(table)} subjects written to {out}")
    return 0
