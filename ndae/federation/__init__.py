"""Federated NDAE with Flower: the task logic behind `client/client_app.py` and `server/server_app.py`.

- `config`: the run configuration (`[tool.flwr.app.config]` keys) as a dataclass.
- `records`: DAE weights, tables and normative models <-> Flower records.
- `site`: what a hospital computes (local training, sufficient statistics, deviation scores,
  Cox terms); called by the ClientApp and by nothing else.
- `server`: the phases the ServerApp drives (FedAvg rounds with checkpoint/resume, normative
  moments, deviations, pooled or federated survival) and the run directory they write.
- `report`: survival outputs and report.md.
- `inprocess`: a Grid that calls the real ClientApp in this process (tests, benchmarks).
- `simulation`: `flwr run` against a private, simulation-mode SuperLink (what `ndae demo` uses).
"""

from ndae.federation.config import FederationConfig

__all__ = ["FederationConfig"]
