"""How a federated run stops early: a real failure, or the test hook that plays a killed server."""

from __future__ import annotations

from ndae.errors import NdaeError

__all__ = ["FederationError", "SimulatedKill"]


class FederationError(NdaeError):
    """The federated run cannot go on (too few sites answered, inconsistent sites, ...)."""


class SimulatedKill(Exception):
    """Raised by the `stop-after-round` test hook, as if the server had been killed."""
