"""The `ndae` command line: argument parsing only, the work is in the library.

Each subcommand lives in its own module under `ndae/commands/` and provides
`register(subparsers)`, which adds its parser and sets `func=run`. Modules are discovered
automatically, so adding a subcommand never touches this file.
"""

from __future__ import annotations

import argparse
import contextlib
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
    from ndae.run_folder import RunAlreadyFinished

    with _signals_end_the_command():
        try:
            return int(args.func(args) or 0)
        except RunAlreadyFinished as done:
            print(f"ndae {args.command}: {done}")
            return 0
        except NdaeError as error:
            print(f"ndae {args.command}: error: {error}", file=sys.stderr)
            return 1
        except OSError as error:  # a full or read-only disk, a vanished folder: the file and the reason
            where = f"{error.filename}: " if error.filename else ""
            print(f"ndae {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"ndae {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
            return 130
        except SystemExit as stopped:
            if isinstance(stopped.code, int) and stopped.code > 128:  # SIGTERM / SIGHUP (terminate_on_signals)
                print(f"ndae {args.command}: stopped by signal {stopped.code - 128}{_resume_hint(args)}",
                      file=sys.stderr)
            raise


def _resume_hint(args) -> str:
    return "; continue it with --resume" if hasattr(args, "resume") else ""


@contextlib.contextmanager
def _signals_end_the_command():
    """While a command runs, SIGTERM and SIGHUP unwind it like Ctrl-C does (its worker pools
    are stopped, its run folder marked interrupted and unlocked); the handlers before are restored."""
    import signal
    import threading

    from ndae.child_processes import terminate_on_signals

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.getsignal(signum) for signum in signals}
    terminate_on_signals(signals)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
