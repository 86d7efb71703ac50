"""`ndae train`: centralised DAE training on a manifest's healthy controls."""

from __future__ import annotations

import argparse
import json

from ndae import cli_types
from ndae.cli_deprecated import add_deprecated_spelling
from ndae.presets import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the diffusion autoencoder on the manifest's controls",
        description="Train the diffusion autoencoder (Diff-AE) on the healthy controls of a manifest. Writes "
        "RUN/config.json, RUN/dae/checkpoint.pt (model + EMA + optimiser; resumable), RUN/dae/loss.csv, "
        "RUN/dae/loss_curve.png and RUN/dae/reconstruction.png.",
    )
    parser.add_argument("--manifest", required=True, help="manifest.csv (subject, site, image, age, sex, group)")
    # dest "config": the key the run folder's settings (resume, rerun checks) have always used
    parser.add_argument("--preset", dest="config", metavar="PRESET", default="tiny",
                        help=f"DAE preset: {', '.join(PRESETS)} (tiny: CPU, 4 slices at "
                        "48x40; tiny-age: its decoder conditioned on age; tiny-native: the slices at 96x80; "
                        "tiny-ventricle: the lateral-ventricle slice at 64x56; paper, paper3d: GPU; default: tiny)")
    add_deprecated_spelling(parser, "--config", "--preset")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--steps", type=cli_types.int_range(1), default=None,
                        help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=None,
                        help="random seed (default: the preset's, 0)")
    parser.add_argument("--cache", default=None, help="prepared-subject cache folder (default: the manifest's, where `ndae prepare` writes)")
    parser.add_argument("--device", type=cli_types.device, default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN/dae/checkpoint.pt (same manifest, preset, seed and cache; "
                        "--steps may be raised)")
    parser.add_argument("--force", action="store_true",
                        help="start over: delete the run's earlier outputs (config.json, dae/, latents, normative, "
                        "deviations) first")
    parser.add_argument("--figure-steps", type=cli_types.int_range(1), default=None,
                        help="DDIM steps for the reconstruction figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ndae.model.run import train_run
    from ndae.run_folder import claim_output

    # --steps is not part of "the same run": resuming to more steps is what --resume is for.
    settings = {"manifest": str(Path(args.manifest).resolve()), "config": args.config, "seed": args.seed,
                "cache": str(Path(args.cache).resolve()) if args.cache else None}
    with claim_output(args.out, command="train", settings=settings, outputs=TRAIN_OUTPUTS, resume=args.resume,
                      force=args.force, resume_finished=True) as claim:  # --resume trains a finished run further
        summary = train_run(args.manifest, args.out, args.config, steps=args.steps, seed=args.seed,
                            cache_dir=args.cache, device=args.device, resume=args.resume, progress=not args.quiet,
                            figure_steps=args.figure_steps)
        claim.finish()
    print(json.dumps(summary, indent=2))
    return 0


# What `ndae train` writes, and what was derived from the model it would replace.
TRAIN_OUTPUTS = ("config.json", "dae", "latents.npz", "normative", "deviations.csv", "deviation_maps")
