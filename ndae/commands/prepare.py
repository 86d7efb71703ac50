"""`ndae prepare`: preprocess every subject of a manifest into its cache folder (resumable).

One cache per manifest: without `--out` it writes where every other command reads by default
(`ndae.data.cache.default_cache_dir`), so nothing is prepared twice.
"""

from __future__ import annotations

from pathlib import Path

from ndae.cli_types import jobs
from ndae.data.prepare_pool import MAX_DEFAULT_JOBS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="validate a manifest and preprocess its images (RAS, mask, normalise, register to MNI)",
        description="Preprocess every subject of a manifest; finished subjects are skipped on re-runs. "
                    "By default the prepared subjects go to the manifest's own cache "
                    "($NDAE_CACHE/prepared/<key of the manifest's path>, NDAE_CACHE defaulting to ~/.cache/ndae), "
                    "which train, encode, evaluate, deviations --maps, audit --empirical and a SuperNode without "
                    "a cache-dir read by default: prepare once, then run them.",
    )
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV (subject, site, image, age, sex, group, ...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="another cache folder; then give the same folder to the other commands "
                             "(--cache DIR; audit --cache-dir DIR; SuperNode node config cache-dir=DIR)")
    parser.add_argument("--registration", choices=("auto", "affine", "none"), default="auto",
                        help="auto: register unless the image is already on the MNI output grid")
    parser.add_argument("--figure", action="store_true", help="also write <out>/<first subject>.png (three views + mask)")
    parser.add_argument("--jobs", type=jobs, default=None,
                        help="subjects prepared at once, each in its own process with one thread "
                             f"(default: the cores there are, at most {MAX_DEFAULT_JOBS}); the cache and the "
                             "errors reported do not depend on it")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.data.cache import default_cache_dir, load_prepared, prepare_manifest
    from ndae.data.figures import plot_prepared_subject
    from ndae.data.manifest import read_manifest
    from ndae.data.prepare_pool import default_prepare_jobs
    from ndae.data.preprocess import PrepareConfig
    from ndae.data.subject_ids import subject_file

    manifest = read_manifest(args.manifest)
    out = args.out if args.out is not None else default_cache_dir(args.manifest)
    workers = args.jobs if args.jobs is not None else default_prepare_jobs()
    counts = prepare_manifest(manifest, out, PrepareConfig(registration=args.registration), jobs=workers)
    print(f"prepared {counts['prepared']} subject(s), reused {counts['cached']} from the cache in {out}")
    if args.out is not None and args.out.resolve() != default_cache_dir(args.manifest).resolve():
        print(f"not the manifest's default cache: pass --cache {out} to train/encode/evaluate "
              f"(audit: --cache-dir; a SuperNode: node config cache-dir=\"{out}\")")
    if args.figure:
        path = subject_file(out, manifest["subject"].iloc[0], ".png")
        plot_prepared_subject(load_prepared(out, manifest["subject"].iloc[0]), path)
        print(f"figure: {path}")
    return 0
