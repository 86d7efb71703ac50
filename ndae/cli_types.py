"""Argument checks shared by every `ndae` command: bounded integers, finite floats, devices, files.

Each check exists twice over one rule: `check_*` raises `NdaeError` naming the option (for the
library entry points, such as `run_demo`, that take the same values), and the factories below
wrap it as an argparse `type=`, so a bad value ends as argparse's one-line usage error before
any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Callable

from ndae.errors import NdaeError

# Simulated patients drawn from one anatomy: each is one more image to render and store.
MAX_PATIENTS_PER_ANATOMY = 100
# A seed every generator takes (NumPy's legacy seed is 32-bit, torch's 64-bit, Flower's run config
# int64), with room for the offsets the training adds to it.
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def cores() -> int:
    """CPU cores this process may run on (its affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_jobs() -> int:
    """Most worker processes a command may start: a few per core (workers wait on disk too),
    never so many that a typo exhausts the machine's process table."""
    return min(64, 4 * cores())


def check_int(option: str, value, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int within [low, high] (either may be None: unbounded), else NdaeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            number = int(str(value).strip())
        except ValueError:
            raise NdaeError(f"{option} {value!r}: expected a whole number") from None
    else:
        number = value
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (f"from {low} to {high}" if low is not None and high is not None
                  else f"at least {low}" if low is not None else f"at most {high}")
        raise NdaeError(f"{option} {number}: must be {bounds}")
    return number


def check_float(option: str, value, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """`value` as a finite float within the bounds (`low_open`: strictly above `low`)."""
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) or isinstance(value, bool) \
            else float(value)
    except ValueError:
        raise NdaeError(f"{option} {value!r}: expected a number") from None
    if not math.isfinite(number):
        raise NdaeError(f"{option} {value}: must be a finite number")
    if low is not None and (number <= low if low_open else number < low):
        raise NdaeError(f"{option} {number:g}: must be {'above' if low_open else 'at least'} {low:g}")
    if high is not None and number > high:
        raise NdaeError(f"{option} {number:g}: must be at most {high:g}")
    return number


def check_jobs(option: str, value) -> int:
    return check_int(option, value, 1, max_jobs())


def check_device(option: str, value: str) -> str:
    """auto, cpu, mps or cuda[:N]; a CUDA device must exist here (checked only when asked for one)."""
    text = str(value).strip()
    if not _DEVICE.match(text):
        raise NdaeError(f"{option} {value!r}: unknown device; use auto, cpu, mps or cuda[:N]")
    if text.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= count:
            raise NdaeError(f"{option} {text}: no such CUDA device here ({count} visible); use auto or cpu")
    return text


def check_csv_file(option: str, value) -> Path:
    """An existing, readable CSV file: a folder, a missing file or binary content is refused."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise NdaeError(f"{option} {path}: {'is a folder, not' if path.is_dir() else 'no such'} CSV file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as error:
        raise NdaeError(f"{option} {path}: unreadable ({error.strerror})") from None
    if not head.strip() or b"\0" in head or "," not in head.decode("utf-8", errors="replace").splitlines()[0]:
        raise NdaeError(f"{option} {path}: not a CSV file (expected a comma-separated header line)")
    return path


def check_folder(option: str, value) -> Path:
    """A path that is a folder or does not exist yet (it will be made): an existing file is refused."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise NdaeError(f"{option} {path}: is a file, not a folder")
    return path


# --- argparse types over the checks above ------------------------------------------------------

def _argparse_type(check: Callable, *bounds, **options) -> Callable[[str], object]:
    def parse(text: str):
        try:
            return check("", text, *bounds, **options)
        except NdaeError as error:
            raise argparse.ArgumentTypeError(str(error).lstrip()) from None

    parse.__name__ = check.__name__.removeprefix("check_")  # argparse names the type in some messages
    return parse


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number within [low, high]."""
    return _argparse_type(check_int, low, high)


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number (no nan/inf) within the bounds."""
    return _argparse_type(check_float, low, high, low_open=low_open)


jobs = _argparse_type(check_jobs)
device = _argparse_type(check_device)
csv_file = _argparse_type(check_csv_file)
folder = _argparse_type(check_folder)
