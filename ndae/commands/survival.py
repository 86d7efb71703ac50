"""`ndae survival`: Cox model, metrics and Kaplan–Meier plots from deviation scores."""

from __future__ import annotations

import argparse

from ndae import cli_types


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "survival",
        help="fit a Cox model of patients' survival on deviation scores",
        description="Join deviation scores with the manifest's patients (group == als: time, event, age, "
        "sex, site), fit a Cox model and write cox.json, hazard_ratios.csv, metrics.json, km_<feature>.png "
        "(with at-risk tables) and the out-of-fold time_dependent_auc.png, brier_score.png and calibration.png.",
    )
    parser.add_argument("--deviations", required=True, help="deviations.csv: one row per subject, column 'subject'")
    parser.add_argument("--manifest", required=True, help="manifest.csv with time (months) and event (0/1) for patients")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--features", nargs="+", default=None, help="score columns to use (default: every numeric column)")
    parser.add_argument("--strata", nargs="+", default=None, help="stratify the baseline hazard, e.g. --strata site")
    parser.add_argument("--penalizer", type=cli_types.finite_float(0.0), default=0.0,
                        help="L2 penalty as in lifelines (default 0)")
    parser.add_argument("--folds", type=cli_types.int_range(2), default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=0,
                        help="seed for folds and bootstrap (default 0)")
    from ndae.run_folder import add_rerun_flags

    add_rerun_flags(parser, can_resume=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.run_folder import claim_output
    from ndae.survival.analysis import run_survival_analysis

    settings = {key: value for key, value in vars(args).items() if key not in ("func", "force")}
    claim = claim_output(args.out, command="survival", settings=settings, force=args.force, can_resume=False,
                         outputs=("cox.json", "hazard_ratios.csv", "metrics.json", "km_*.png", "time_dependent_auc.png",
                                  "brier_score.png", "calibration.png", "report.md", "report.html"))
    with claim:
        metrics = run_survival_analysis(args.deviations, args.manifest, args.out, features=args.features,
                                        strata=args.strata, penalizer=args.penalizer, folds=args.folds,
                                        seed=args.seed)
        from ndae.survival.report import survival_verdict, write_survival_report

        report = write_survival_report(args.out, metrics)
        claim.finish()
    c = metrics["harrell_c"]
    print(
        f"Cox model on {metrics['n']} patients ({metrics['events']} events): C in-sample {c['apparent']:.3f}, "
        f"optimism-corrected {c['corrected']:.3f} (95 % interval on left-out patients over {c['n_boot']} refits: "
        f"[{c['lower']:.3f}, {c['upper']:.3f}]); results in {args.out}"
    )
    for line in survival_verdict(metrics):
        print(line.replace("**", ""))
    print(f"report: {report}")
    return 0
