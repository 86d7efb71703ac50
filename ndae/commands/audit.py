"""`ndae audit --run RUN_DIR` (or `ndae audit RUN_DIR`): verify the run's privacy ledgers and
budgets; the first line is the verdict, OK, FAILED or NOT PRIVATE with its reason (exit 1 on any
failure and on noise drawn from the test-only seed; a run that config.json says is not private and
no site signed: NOT PRIVATE, exit 0); `--canaries`: also the one-run canary audit of the trained
DAE (runs trained with audit-canaries); `--empirical`: also a membership-inference test of the
trained DAE (run at a site: it reads data)."""

from __future__ import annotations

import json
from pathlib import Path

from ndae import cli_types


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="verify a run's privacy ledgers, recompute epsilon, check budgets",
        description="Verify every privacy/<site>.jsonl hash chain of a run, recompute epsilon with "
        "an independent accountant, check the budget; writes privacy/audit.json. Without "
        "--budget-epsilon, the budgets the sites reported (privacy/heads.json) are checked. Each "
        "site's ledger head must be signed by the site's key: pass --keys REGISTRY to check the "
        "signatures against the consortium's registered keys; every site of that registry must then have "
        "signed a head in this run.",
    )
    # --run as in every other command that reads a run; the positional form is the older one, kept
    parser.add_argument("--run", dest="run_dir", metavar="RUN_DIR", default=None, help="the run folder")
    parser.add_argument("run_dir_positional", metavar="RUN_DIR", nargs="?", default=None,
                        help="the run folder (the same as --run)")
    parser.add_argument("--budget-epsilon", type=float, default=None, help="per-site epsilon budget")
    parser.add_argument("--budget-delta", type=float, default=None,
                        help="per-site delta (default: the delta each site recorded in privacy/heads.json, "
                        "its policy; 1e-5 where none is recorded)")
    parser.add_argument("--keys", metavar="DIR", default=None,
                        help="the consortium's registry of ledger-signing public keys, one <site>.pub (PEM) "
                        "per site (deploy: consortium/registry); every site's head signature must verify "
                        "against it. Without it the keys the run folder reports are used, which proves "
                        "integrity only against someone who cannot write the run folder (a warning)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    canary = parser.add_argument_group("one-run canary audit (Steinke et al. 2023; runs trained with audit-canaries > 0)")
    canary.add_argument("--canaries", action="store_true",
                        help="score each site's canaries with the trained DAE and bound epsilon from below")
    canary.add_argument("--privacy-dir", default=None,
                        help="folder holding <site>.canaries.json (default RUN_DIR/privacy; a deployed site passes its own)")
    empirical = parser.add_argument_group("empirical audit (membership inference on the trained DAE)")
    empirical.add_argument("--empirical", action="store_true",
                           help="membership test: a site's training controls vs held-out controls")
    empirical.add_argument("--members", metavar="MANIFEST", help="manifest of the controls one site trained on")
    empirical.add_argument("--nonmembers", metavar="MANIFEST", help="manifest of held-out controls (not trained on)")
    empirical.add_argument("--cache-dir", default=None, help="prepared-slice cache of those manifests")
    empirical.add_argument("--weights", choices=("model", "ema"), default="model", help="which weights to attack")
    empirical.add_argument("--draws", type=cli_types.int_range(1, 1000), default=8, help="fixed (t, noise) draws per image")
    empirical.add_argument("--seed", type=cli_types.int_range(0, cli_types.MAX_SEED), default=0)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.errors import NdaeError
    from ndae.privacy.audit import audit_run, format_report

    from ndae.privacy.audit import reported_budgets

    args.run_dir = _run_folder(args.run_dir, args.run_dir_positional)
    if not Path(args.run_dir).is_dir():
        raise NdaeError(f"{args.run_dir}: run directory does not exist")
    _check_budget_flags(args.budget_epsilon, args.budget_delta)
    budgets = reported_budgets(args.run_dir, args.budget_epsilon, args.budget_delta)
    report = audit_run(args.run_dir, budgets, keys_dir=args.keys)
    ok = report["ok"]
    if args.empirical:
        from ndae.privacy.empirical import empirical_audit_run, format_empirical

        if not (args.members and args.nonmembers):
            raise NdaeError("--empirical needs --members MANIFEST and --nonmembers MANIFEST")
        result = empirical_audit_run(args.run_dir, args.members, args.nonmembers, cache_dir=args.cache_dir,
                                     weights=args.weights, seed=args.seed, draws=args.draws)
        report["empirical"] = result
        ok = ok and result["below_accounted"]
    if args.canaries:
        from ndae.privacy.canary_audit import canary_audit_run

        report["canaries"] = canary_audit_run(args.run_dir, privacy_dir=args.privacy_dir, weights=args.weights,
                                              seed=args.seed)
        ok = ok and report["canaries"]["ok"]
    if args.json:
        from ndae.io import finite_or_null

        print(json.dumps(finite_or_null(report), indent=2, sort_keys=True))
    else:
        print(format_report(report))
        if args.canaries:
            from ndae.privacy.canary_audit import format_canary_audit

            print(format_canary_audit(report["canaries"]))
        if args.empirical:
            print(format_empirical(report["empirical"]))
    return 0 if ok else 1


def _run_folder(flag: str | None, positional: str | None) -> str:
    """The run folder, given as --run or positionally (once)."""
    from ndae.errors import NdaeError

    if flag is None and positional is None:
        raise NdaeError("which run? give its folder: ndae audit --run RUN_DIR")
    if flag is not None and positional is not None and flag != positional:
        raise NdaeError(f"two run folders given, --run {flag} and {positional}: give one")
    return flag if flag is not None else positional


def _check_budget_flags(epsilon: float | None, delta: float | None) -> None:
    """Refuse, before anything is read, a budget no (ε, δ) guarantee can have."""
    import math

    from ndae.errors import NdaeError

    if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
        raise NdaeError(f"--budget-epsilon {epsilon:g}: must be a finite number > 0")
    if delta is not None and not 0 < delta < 1:
        raise NdaeError(f"--budget-delta {delta:g}: must be a number in (0, 1) (a probability of failure; "
                        f"typically 1e-5 or less)")
