"""`ndae prepare`: preprocess every subject of a manifest into a cache folder (resumable)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="validate a manifest and preprocess its images (RAS, mask, normalise, register to MNI)",
        description="Preprocess every subject of a manifest; finished subjects are skipped on re-runs.",
    )
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV (subject, site, image, age, sex, group, ...)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (the prepared-subject cache)")
    parser.add_argument("--registration", choices=("auto", "affine", "none"), default="auto",
                        help="auto: register unless the image is already on the MNI output grid")
    parser.add_argument("--figure", action="store_true", help="also write <out>/<first subject>.png (three views + mask)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.data.cache import load_prepared, prepare_manifest
    from ndae.data.figures import plot_prepared_subject
    from ndae.data.manifest import read_manifest
    from ndae.data.preprocess import PrepareConfig

    manifest = read_manifest(args.manifest)
    counts = prepare_manifest(manifest, args.out, PrepareConfig(registration=args.registration))
    print(f"prepared {counts['prepared']} subject(s), reused {counts['cached']} from the cache in {args.out}")
    if args.figure:
        subject = manifest["subject"].iloc[0]
        path = args.out / f"{subject}.png"
        plot_prepared_subject(load_prepared(args.out, subject), path)
        print(f"figure: {path}")
    return 0
