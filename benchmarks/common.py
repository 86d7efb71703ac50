"""Shared bits for benchmarks: where results go and how each section states its provenance."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ndae.io import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:
        gpu, torch_version = "no GPU", "not installed"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch_version}"


def provenance() -> dict[str, str]:
    """The machine, the command and the date of this run (UTC), as each section's header states them."""
    return {"machine": machine_description(),
            "command": "python -m benchmarks." + " ".join([Path(sys.argv[0]).stem, *sys.argv[1:]]),
            "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}


def append_raw_row(path: Path, row: dict) -> dict:
    """Append `row`, headed by this checkout's commit and the time (UTC), as one JSON line of the
    raw results file `path` (kept so that the next session can continue from them); returns it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS_DIR.parent, capture_output=True,
                            text=True).stdout.strip()
    row = {"commit": commit, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **row}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    return row


def write_section(name: str, title: str, body: str, run: dict[str, str] | None = None,
                  folder: Path = RESULTS_DIR) -> Path:
    """Write `<folder>/<name>.md` (default results/) with a header naming the machine, the command and
    the date (those of `run`, a saved `provenance()`, when a section is rendered again from saved numbers)."""
    run = run or provenance()
    header = (
        f"## {title}\n\n"
        f"*Machine:* {run['machine']}  \n"
        f"*Command:* `{run['command']}`  \n"
        f"*Date:* {run['date']}\n\n"
    )
    path = Path(folder) / f"{name}.md"
    atomic_write_text(path, header + body.rstrip() + "\n")
    return path
