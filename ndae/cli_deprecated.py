"""Old option spellings kept for one release after a rename, so scripts written for the old one
still run; each use prints one line naming the new spelling. Hidden from `--help`, so the help
shows one vocabulary."""

from __future__ import annotations

import argparse
import sys


class _DeprecatedSpelling(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated, use {self.new} (same value)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """`old` as a hidden alias of the option `new` already on `parser`: same destination and type."""
    target = next(action for action in parser._actions if new in action.option_strings)
    # default SUPPRESS: the alias never overwrites the default (or the value) `new` set
    parser.add_argument(old, dest=target.dest, type=target.type, choices=target.choices, new=new,
                        action=_DeprecatedSpelling, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
