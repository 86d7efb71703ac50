"""`ndae site`: a site's approved Flower apps (approve / revoke / list / hash)."""

from __future__ import annotations

from pathlib import Path

from ndae import cli_types


def register(subparsers) -> None:
    parser = subparsers.add_parser("site", help="manage the Flower apps a site approves")
    actions = parser.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    approve = actions.add_parser("approve", help="add an app bundle hash to the site's approved list")
    approve.add_argument("app_hash", metavar="APP_HASH")
    approve.add_argument("--site-dir", type=cli_types.folder, required=True)
    approve.add_argument("--note", default="")
    revoke = actions.add_parser("revoke", help="remove an app bundle hash from the approved list")
    revoke.add_argument("app_hash", metavar="APP_HASH")
    revoke.add_argument("--site-dir", type=cli_types.folder, required=True)
    listing = actions.add_parser("list", help="print the approved app hashes")
    listing.add_argument("--site-dir", type=cli_types.folder, default=".")
    hashing = actions.add_parser("hash", help="print the sha256 of a Flower app bundle (.fab)")
    hashing.add_argument("fab_file", metavar="FAB_FILE")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ndae.errors import NdaeError
    from ndae.federation.site.app_approval import ApprovedApps, fab_hash

    if args.site_command == "hash":
        path = Path(args.fab_file)
        if not path.is_file():
            raise NdaeError(f"{path}: no such app bundle")
        print(fab_hash(path.read_bytes()))
        return 0
    policy = ApprovedApps(args.site_dir)
    if args.site_command == "approve":
        item = policy.approve(args.app_hash, args.note)
        print(f"approved {item['hash']} ({policy.path})")
    elif args.site_command == "revoke":
        if not policy.revoke(args.app_hash):
            raise NdaeError(f"{args.app_hash} is not on the approved list {policy.path}")
        print(f"revoked {args.app_hash.strip().lower()}")
    else:
        for item in policy.approved():
            print(f"{item['hash']}  {item['approved_at']}  {item.get('note', '')}".rstrip())
    return 0
