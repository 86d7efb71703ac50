"""`ndae demo`: the shipped demo end to end, on one machine.

Unpack the demo scans → simulate a multi-site ALS cohort (seeded) → run the federated app with
Flower's simulation engine (`flwr run`, one simulated SuperNode per site) → print the report.
"""

from __future__ import annotations

import argparse

from ndae import cli_types
from ndae.federation.config import STRATEGIES, SURVIVAL_MODES
from ndae.federation.demo import DEFAULT_LOCAL_EPOCHS, DEFAULT_PATIENTS_PER_ANATOMY, DEFAULT_ROUNDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole federated pipeline on the shipped demo data (simulated hospitals)",
        description="Unpacks the demo scans, simulates a multi-site ALS cohort, trains the DAE by federated "
        "averaging over simulated hospitals (Flower simulation engine), fits the normative model from summed "
        "statistics, scores the patients and fits the survival model; writes RUN/report.md.",
    )
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--sites", type=int, default=3, help="simulated hospitals (default 3)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"federated DAE rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--local-epochs", type=int, default=DEFAULT_LOCAL_EPOCHS,
                        help=f"local epochs per round (default {DEFAULT_LOCAL_EPOCHS})")
    parser.add_argument("--strategy", default="fedavg", choices=STRATEGIES)
    parser.add_argument("--survival-mode", default="auto", choices=SURVIVAL_MODES,
                        help="auto: federated in a private run, pooled otherwise")
    parser.add_argument("--privacy", action="store_true",
                        help="privacy-audited run: DP-SGD at every site, noised normative moments, per-site ledgers "
                        "(check afterwards with `ndae audit --run RUN`)")
    parser.add_argument("--target-epsilon", type=float, default=None,
                        help="with --privacy: the epsilon this run may spend per site (default 8)")
    parser.add_argument("--audit-canaries", type=int, default=0, metavar="M",
                        help="every site also trains on M synthetic canaries (each with probability 1/2), "
                        "for the one-run audit `ndae audit --run RUN --canaries` (default 0: none)")
    parser.add_argument("--preset", default="tiny", help="DAE preset: tiny (CPU, default) or paper (GPU)")
    parser.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=0)
    parser.add_argument("--max-subjects", type=int, default=None, help="use a seeded subset of the demo scans")
    parser.add_argument("--patients-per-anatomy", type=int, default=DEFAULT_PATIENTS_PER_ANATOMY, metavar="K",
                        help=f"simulated patients per patient anatomy of the demo data (default {DEFAULT_PATIENTS_PER_ANATOMY}: "
                             "240 patients from the 60 patient anatomies)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for cohort generation (default 2)")
    parser.add_argument("--cohort", default=None, metavar="DIR",
                        help="use this existing cohort (from `ndae cohort` or a demo's RUN/cohort) instead of the "
                        "demo's; without it the demo's cohort is simulated once and kept in $NDAE_CACHE/cohorts "
                        "(default ~/.cache/ndae/cohorts), keyed by its parameters, for every later run")
    parser.add_argument("--survival-features", default=None, metavar="LIST",
                        help="deviation scores in the Cox model, comma-separated (default: prior = every region of the "
                        "prior residuals; e.g. prior,cosine or cosine,mahalanobis)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the same apps in this process instead of Flower's (Ray) simulation engine")
    from ndae.run_folder import add_rerun_flags

    add_rerun_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.errors import NdaeError
    from ndae.federation.demo import run_demo
    from ndae.run_folder import RunAlreadyFinished

    if args.target_epsilon is not None and not args.privacy:
        raise NdaeError(f"--target-epsilon {args.target_epsilon:g} sets a private run's budget: add --privacy "
                        "(without it the run is not private)")
    args.target_epsilon = 8.0 if args.target_epsilon is None else args.target_epsilon
    try:
        report = run_demo(args.out, sites=args.sites, rounds=args.rounds, local_epochs=args.local_epochs,
                          strategy=args.strategy, survival_mode=args.survival_mode, preset=args.preset, seed=args.seed,
                          max_subjects=args.max_subjects, jobs=args.jobs,
                          patients_per_anatomy=args.patients_per_anatomy, in_process=args.in_process,
                          privacy=args.privacy, target_epsilon=args.target_epsilon,
                          audit_canaries=args.audit_canaries, resume=args.resume, force=args.force,
                          survival_features=args.survival_features, cohort=args.cohort)
    except RunAlreadyFinished as done:
        print(f"ndae demo: {done}")
        from pathlib import Path

        print(f"report: {Path(args.out).expanduser().resolve() / 'report.md'}")
        return 0
    for line in report_verdict(report):
        print(line)
    print(f"report: {report}")
    return 0


def report_verdict(report) -> list[str]:
    """The verdict the report opens with (its lines up to the first blank one after the title),
    markdown emphasis dropped: what the run found, on the console."""
    from pathlib import Path

    path = Path(report)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[2:]
    verdict = lines[:lines.index("")] if "" in lines else lines[:1]
    if not verdict or not verdict[0].startswith("**Verdict"):
        return []
    return [line.replace("**", "") for line in verdict]
