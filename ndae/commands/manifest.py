"""`ndae manifest --bids DIR --out manifest.csv`: a BIDS dataset as the project's manifest."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="turn a BIDS dataset (participants.tsv + T1w images) into a manifest",
        description="Read participants.tsv (participant_id, age, sex, group; optional site, time in months, "
                    "event 0/1, onset) and sub-*/[ses-*/]anat/*_T1w.nii[.gz]; write the manifest CSV and name every "
                    "participant that cannot be used, with why (also in <out stem>_excluded.csv). Where a subject "
                    "has several T1w images, the first session's first run is used, and said.",
    )
    parser.add_argument("--bids", required=True, type=Path, help="root folder of the BIDS dataset")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--site", default=None,
                        help="site of every subject where participants.tsv has no site column "
                             "(default: the dataset folder's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.data.bids import bids_to_manifest
    from ndae.data.manifest import validate_manifest, write_manifest
    from ndae.errors import ManifestError
    from ndae.io import atomic_write_text

    out = Path(args.out)
    excluded_path = out.with_name(f"{out.stem}_excluded.csv")
    if out.exists() and not args.force:
        raise ManifestError(f"{out}: exists; give --force to replace it (or another --out)")
    if out.suffix.lower() != ".csv":
        raise ManifestError(f"--out {out}: a manifest is a .csv file")
    result = bids_to_manifest(args.bids, site=args.site)
    for subject, reason in result.excluded.itertuples(index=False):
        print(f"excluded {subject}: {reason}")
    for note in result.notes:
        print(f"note: {note}")
    if result.rows.empty:
        raise ManifestError(f"{args.bids}: no participant can be used ({len(result.excluded)} excluded, listed above); "
                            "nothing written")
    validate_manifest(result.rows, base_dir=out.parent.absolute(), source=f"manifest from {args.bids}")  # the contract
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(result.rows, out)
    atomic_write_text(excluded_path, result.excluded.to_csv(index=False, lineterminator="\n"))
    groups = result.rows["group"].value_counts()
    print(f"manifest: {out} ({len(result.rows)} subjects: {groups.get('control', 0)} controls, {groups.get('als', 0)} "
          f"patients; {len(result.excluded)} excluded, listed in {excluded_path})")
    return 0
