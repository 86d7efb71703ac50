"""What the ServerApp checks before it sends the sites anything.

A bare `flwr run .` (Flower's default local SuperLink, a simulation) gives no cohort: every
simulated ClientApp would fail, one Ray traceback each. The ServerApp stops at its very start
instead, with one line naming the commands that work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from ndae.errors import NdaeError

HOW_TO_RUN = ("run `ndae demo` (it makes the demo cohort from the shipped scans and runs this app), or give a "
              "cohort from `ndae cohort`: flwr run . --run-config \"cohort-dir='/abs/cohort' run-dir='/abs/run'\" "
              "--federation-config \"num-supernodes=<number of sites>\"")


class NoCohortError(NdaeError):
    """A simulated federation without a cohort to simulate."""


def is_simulation(grid: Any) -> bool:
    """Flower's simulation engine hands the ServerApp an in-memory grid; a deployment a remote one."""
    return isinstance(grid, InMemoryGrid)


def check_simulation_cohort(grid: Any, run_config: Mapping[str, Any]) -> None:
    """Refuse a simulation whose run config names no usable cohort-dir (a deployment's sites name
    their manifests in their node configs, so there an empty cohort-dir is right)."""
    if not is_simulation(grid):
        return
    cohort_dir = str(run_config.get("cohort-dir", "") or "")
    if not cohort_dir:
        raise NoCohortError(f"ndae-fed: this simulation has no cohort (run config cohort-dir is empty): {HOW_TO_RUN}")
    sites = Path(cohort_dir).expanduser() / "sites"
    if not sites.is_dir():
        raise NoCohortError(f"ndae-fed: run config cohort-dir {cohort_dir!r} has no sites/ folder "
                            f"(seen from {Path.cwd()}; use an absolute path): {HOW_TO_RUN}")
