"""`ndae encode`: z_sem and x_T of every subject in a manifest, with a trained run's DAE."""

from __future__ import annotations

import argparse

from ndae import cli_types


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode", help="encode a manifest's subjects to z_sem and x_T (latents.npz)",
        description="Encode every subject of a manifest with the EMA weights of RUN/dae/checkpoint.pt: z_sem from "
        "the semantic encoder and x_T by deterministic DDIM inversion. Writes an .npz with arrays subject, "
        "z_sem [n, d] and x_T [n, C, H, W].",
    )
    parser.add_argument("--run", required=True, help="run folder with dae/checkpoint.pt")
    parser.add_argument("--manifest", required=True, help="manifest.csv")
    parser.add_argument("--out", default=None, help="output .npz (default RUN/latents.npz)")
    parser.add_argument("--steps", type=cli_types.int_range(1), default=None,
                        help="DDIM inversion steps (default: the config's)")
    parser.add_argument("--cache", default=None, help="prepared-subject cache folder (default: the manifest's, where `ndae prepare` writes)")
    parser.add_argument("--device", type=cli_types.device, default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.model.run import encode_run

    out = encode_run(args.run, args.manifest, args.out, cache_dir=args.cache, steps=args.steps, device=args.device,
                     progress=not args.quiet)
    print(f"wrote {out}")
    return 0
