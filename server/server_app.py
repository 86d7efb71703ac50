"""Flower ServerApp of ndae-fed: drives the phases in `ndae.federation.server.phases`."""

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from ndae.federation.server.phases import run_federation
from ndae.federation.server.preflight import NoCohortError, check_simulation_cohort

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    try:
        check_simulation_cohort(grid, run_config)  # before any message reaches a site
    except NoCohortError as error:
        log(ERROR, "%s", error)  # the one line a `flwr run . --stream` user should read
        raise
    run_federation(grid, run_config)
