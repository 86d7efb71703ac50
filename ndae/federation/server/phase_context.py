"""What a phase after site_info works with: the run's settings, the DAE config the sites agreed
on, the message rounds to the sites, the run folder, the log and the run's release policy (what a
private run changes at the server, `release_policy`).

The phases outside `phases.py` (`prior_residual_phase`, `voxelwise_phase`, `survival_phase`) take
this and the fitted models they need as arguments, never the `Federation` itself, so what each
reads is in its signature and a test can run one phase on a stand-in messenger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ndae.federation.config import FederationConfig
from ndae.federation.server.messaging import SiteMessenger
from ndae.federation.server.release_policy import ReleasePolicy
from ndae.federation.server.run_files import RunFiles

if TYPE_CHECKING:  # ndae.model imports torch; the server imports it only when a phase needs it
    from ndae.model.config import DAEConfig

__all__ = ["PhaseContext"]


@dataclass(frozen=True)
class PhaseContext:
    config: FederationConfig  # with the effective survival mode (auto resolved)
    dae_config: DAEConfig  # the DAE every site trains (`strategy.dae_config_for`)
    messenger: SiteMessenger
    files: RunFiles
    log: Callable[[str], None]
    releases: ReleasePolicy | None = None  # None: built from `config`

    def __post_init__(self):
        if self.releases is None:
            object.__setattr__(self, "releases", ReleasePolicy(self.config))

    @property
    def run_dir(self) -> Path:
        return self.files.run_dir
