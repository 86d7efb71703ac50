"""Federated NDAE with Flower: the task logic behind `client/client_app.py` and `server/server_app.py`.

- `site/`: what runs at a hospital (Flower handlers, the site's policy and private releases, the
  computations on its rows); see `ndae.federation.site`.
- `server/`: what runs at the server (the phases, aggregation, the Newton loop, the run directory
  and report); see `ndae.federation.server`.
- Both ends: `config` (the run configuration, `[tool.flwr.app.config]` keys, as a dataclass),
  `records` (DAE weights, tables and normative models <-> Flower records), `site_reasons` (a site's
  refusal as one line), `inprocess` (a Grid that calls the real ClientApp in this process: tests,
  benchmarks), `simulation` (`flwr run` against a private simulation-mode SuperLink: `ndae demo`),
  `demo` (`ndae demo` in library form). The small synthetic cohort of the tests and benchmarks is
  `ndae.testing.synthetic_cohort`.
"""

from ndae.federation.config import FederationConfig

__all__ = ["FederationConfig"]
