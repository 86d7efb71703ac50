"""`ndae evaluate`: the whole centralised pipeline on a manifest, with every baseline."""

from __future__ import annotations

import argparse

from ndae import cli_types
from ndae.cli_deprecated import add_deprecated_spelling
from ndae.presets import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="DAE → normative model → deviations → survival, plus seven baselines, on any manifest",
        description="Train the DAE on the manifest's controls, encode everyone, fit the normative model, score "
        "deviations, and cross-validate Cox models (Harrell's and Uno's C, the same folds for every model) for the "
        "NDAE scores (z_sem: the paper's cosine, z, Mahalanobis; image space: regional deviations from the diffusion "
        "prior) and seven baselines (covariates; regional normative z-scores; voxel-wise normative z, raw and "
        "high-passed; a "
        "convolutional autoencoder; PCA of z_sem; brain-age gap), folds grouped by source anatomy. A fraction of the "
        "controls is held out of every fit (AUROC, calibration). Writes OUT/report.md, OUT/evaluation.json, "
        "OUT/km_cosine.png, OUT/c_index.png and the run files. With --truth (a CSV with subject, risk; optional "
        "severity, source_subject), also C*, risk concordance and, with a cohort.json beside it, expected C "
        "(docs/evaluation.md).",
    )
    parser.add_argument("--manifest", required=True, help="manifest.csv (subject, site, image, age, sex, group, "
                        "time, event; optional mask = MUSE label map)")
    parser.add_argument("--truth", type=cli_types.csv_file, default=None,
                        help="truth.csv with subject, risk (true linear predictor)")
    parser.add_argument("--out", required=True, help="output folder (a run directory)")
    # dest "config": the key the run folder's settings (resume, rerun checks) have always used
    parser.add_argument("--preset", dest="config", metavar="PRESET", default="tiny",
                        help=f"DAE preset: {', '.join(PRESETS)} (tiny and tiny-ventricle "
                        "run on a CPU, the paper presets want a GPU; default tiny)")
    add_deprecated_spelling(parser, "--config", "--preset")
    parser.add_argument("--steps", type=cli_types.int_range(1), default=None,
                        help="DAE training steps (default: the preset's)")
    parser.add_argument("--inversion-steps", type=cli_types.int_range(1), default=None,
                        help="DDIM steps to invert x_T (default: preset's)")
    parser.add_argument("--folds", type=cli_types.int_range(2), default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=0,
                        help="seed of the DAE, the autoencoder and the folds")
    parser.add_argument("--penalizer", type=cli_types.finite_float(0.0), default=0.1,
                        help="Cox L2 penalty for every model (default 0.1)")
    parser.add_argument("--autoencoder-steps", type=cli_types.int_range(1), default=300,
                        help="autoencoder baseline steps (default 300)")
    parser.add_argument("--draws", type=cli_types.int_range(1), default=50,
                        help="fresh survival draws for expected C, from the survival "
                        "model in the cohort.json beside --truth (default 50)")
    parser.add_argument("--held-out-controls", type=cli_types.finite_float(0.0), default=0.25,
                        help="fraction of the controls (per site, "
                        "seeded) kept out of the DAE and every normative fit, for the AUROC and calibration (default 0.25)")
    parser.add_argument("--cache", default=None, help="prepared-subject cache folder (default: the manifest's, where `ndae prepare` writes)")
    parser.add_argument("--image-deviation-steps", type=cli_types.int_range(0), default=0, metavar="STEPS",
                        help="also the image-space NDAE features (the deviation map of the normative decode, mean z "
                        "per atlas region) with this many DDIM steps per inversion and decode (default 0: off; "
                        "50 on the tiny DAE; costs 3 x STEPS network passes per subject)")
    parser.add_argument("--no-prior-residuals", action="store_true",
                        help="skip the regional deviations from the diffusion prior (x − x̂₀ of the denoiser "
                        "conditioned on the normative z_sem, per atlas region; 18 network passes per subject)")
    parser.add_argument("--features", default=None, metavar="DIR",
                        help="score z_sem and prior residuals computed elsewhere (a GPU run's returned folder: "
                        "latents.npz, prior_residuals.csv, run.json; benchmarks/gpu_ndae.py) instead of training "
                        "a DAE here; everything else (baselines, folds, truth metrics) as always")
    parser.add_argument("--device", type=cli_types.device, default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    from ndae.run_folder import add_rerun_flags

    add_rerun_flags(parser, can_resume=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.evaluation import EvaluationOptions, evaluate

    options = EvaluationOptions(
        config=args.config, steps=args.steps, inversion_steps=args.inversion_steps, folds=args.folds, seed=args.seed,
        penalizer=args.penalizer, autoencoder_steps=args.autoencoder_steps, cache_dir=args.cache, device=args.device,
        progress=not args.quiet, draws=args.draws, held_out_controls=args.held_out_controls,
        image_deviation_steps=args.image_deviation_steps, prior_residuals=not args.no_prior_residuals,
        features_dir=args.features,
    )
    from ndae.run_folder import claim_output

    settings = {key: value for key, value in vars(args).items() if key not in ("func", "force", "quiet", "device")}
    with claim_output(args.out, command="evaluate", settings=settings, force=args.force, can_resume=False,
                      outputs=EVALUATE_OUTPUTS) as claim:
        result = evaluate(args.manifest, args.out, args.truth, options)
        claim.finish()
    oracle = result["oracle_c_index"]
    for model in result["models"]:
        if model["variant"] == "alone":
            print(f"{model['model']:<24} Harrell's C {model['harrell_c_mean']:.3f} ± {model['harrell_c_sd']:.3f}")
    if oracle is not None:
        print(f"{'oracle C*':<24} {oracle:.3f}")
    print(f"report: {args.out}/report.md")
    return 0


# What `ndae evaluate` writes into OUT (the prepared-subject cache is not among them: it is reused).
EVALUATE_OUTPUTS = ("report.md", "report.html", "evaluation.json", "*.png", "*.csv", "config.json", "dae", "latents.npz",
                    "normative", "survival", "baselines")
