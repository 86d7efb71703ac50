"""Flower ServerApp of ndae-fed: drives the phases in `ndae.federation.server.phases`."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ndae.federation.server.phases import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, dict(context.run_config))
