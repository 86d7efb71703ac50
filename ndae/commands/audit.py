"""`ndae audit RUN_DIR`: verify the run's privacy ledgers and budgets (exit 1 on any failure)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="verify a run's privacy ledgers, recompute epsilon, check budgets",
        description="Verify every privacy/<site>.jsonl hash chain of a run, recompute epsilon with "
        "an independent accountant, check the budget; writes privacy/audit.json.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--budget-epsilon", type=float, default=None, help="per-site epsilon budget")
    parser.add_argument("--budget-delta", type=float, default=None, help="per-site delta (default: 1e-5)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.privacy.audit import audit_run, format_report

    budgets = None
    if args.budget_epsilon is not None:
        budgets = (args.budget_epsilon, args.budget_delta if args.budget_delta is not None else 1e-5)
    report = audit_run(args.run_dir, budgets)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0 if report["ok"] else 1
