"""`ndae deviations`: score every subject's z_sem against the run's normative model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deviations",
        help="deviation scores (cosine, z, Mahalanobis) of every subject",
        description="Write deviations.csv: one row per subject of the latents, column 'subject' first, "
        "then cosine (the paper's: z_sem vs its normative expectation, both in units of the controls' sd, the "
        "shared mean kept), cosine_centred (the same after centring both: follows the age direction), "
        "mean_abs_z, max_abs_z, count_abs_z_gt_2 and mahalanobis.",
    )
    parser.add_argument("--run", required=True, help="run folder holding normative/ (model.npz, model.json)")
    parser.add_argument("--latents", default=None, help="latents.npz (default RUN/latents.npz)")
    parser.add_argument("--manifest", required=True, help="manifest.csv with subject, site, age, sex, group")
    parser.add_argument("--out", default=None, help="output CSV (default RUN/deviations.csv)")
    parser.add_argument("--include-z", action="store_true", help="also write one z_<feature> column per dimension")
    parser.add_argument("--maps", action="store_true",
                        help="also write image-space deviation maps (PNG, NIfTI on the MNI grid and in native space) "
                        "and regional means of the patients to RUN/deviation_maps/")
    parser.add_argument("--max-maps", type=int, default=None, help="map at most this many patients")
    from ndae.run_folder import add_rerun_flags

    add_rerun_flags(parser, can_resume=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.normative.files import write_deviations

    run_dir = Path(args.run)
    latents = args.latents or run_dir / "latents.npz"
    out = args.out or run_dir / "deviations.csv"
    from ndae.run_folder import claim_file

    settings = {key: str(value) for key, value in vars(args).items() if key not in ("func", "force")}
    with claim_file(out, command="deviations", settings=settings, force=args.force) as claim:
        table = write_deviations(run_dir, latents, args.manifest, out, include_z=args.include_z)
        claim.finish()
    print(f"deviation scores of {len(table)} subjects written to {out}")
    if args.maps:
        from ndae.deviation.image_maps import write_deviation_maps

        regions = write_deviation_maps(run_dir, args.manifest, max_subjects=args.max_maps)
        print(f"deviation maps of {regions['subject'].nunique()} patients written to {run_dir / 'deviation_maps'}")
    return 0
