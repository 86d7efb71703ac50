"""The `ndae` command line: argument parsing only, the work is in the library.

Each subcommand lives in its own module under `ndae/commands/` and provides
`register(subparsers)`, which adds its parser and sets `func=run`. Modules are discovered
automatically, so adding a subcommand never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ndae import __version__
from ndae import commands
from ndae.errors import NdaeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndae",
        description="Federated, privacy-audited Normative Diffusion Autoencoders.",
    )
    parser.add_argument("--version", action="version", version=f"ndae {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"ndae.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NdaeError as error:
        print(f"ndae {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
