"""Flower ServerApp of ndae-fed: drives the phases in `ndae.federation.server.phases`.

A bare `flwr run .` (a simulation with no `cohort-dir`) runs the small demo cohort, made once and
cached (`ndae.federation.default_cohort`); its last log lines name the report and how to stop the
local SuperLink that `flwr run` left running.
"""

import os
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from ndae.federation.server.phases import run_federation
from ndae.federation.server.preflight import NoCohortError, check_simulation_cohort, is_simulation

app = ServerApp()

# What `flwr run .` starts on a default (local) SuperLink and leaves running after the run.
# Only the local simulation SuperLink that `flwr run` starts matches this pattern, not a deployed
# SuperLink of the same user; its flower-superexec exits with it (Flower passes it --parent-pid).
STOP_HINT = ("`flwr run .` left Flower's local simulation SuperLink running (flower-superlink, with its "
             "flower-superexec) for the next run; stop it with: pkill -f 'flower-superlink --insecure --simulation'")


def _info(message: str) -> None:
    log(INFO, "%s", message)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    try:
        if is_simulation(grid) and not str(run_config.get("cohort-dir", "") or ""):
            from ndae.federation.default_cohort import ensure_small_cohort

            sites = len(list(grid.get_node_ids())) or 2
            run_config["cohort-dir"] = str(ensure_small_cohort(sites, int(run_config.get("seed", 0)), log=_info))
        check_simulation_cohort(grid, run_config)  # before any message reaches a site
    except NoCohortError as error:
        log(ERROR, "%s", error)  # the one line a `flwr run . --stream` user should read
        raise
    run_federation(grid, run_config, log=_info)
    run_dir = Path(str(run_config.get("run-dir", "runs/federated"))).expanduser().resolve()
    _info(f"ndae-fed: report: {run_dir / 'report.md'}")
    # `ndae demo` runs this app on a SuperLink of its own (a private FLWR_HOME) and stops it itself.
    if is_simulation(grid) and not Path(os.environ.get("FLWR_HOME", "")).name.startswith("ndae-flwr-home-"):
        _info(STOP_HINT)
