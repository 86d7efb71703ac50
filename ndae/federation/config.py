"""The federated run's configuration: the `[tool.flwr.app.config]` keys as one dataclass.

Flower passes run config as a flat mapping with dashed keys (`local-epochs`); `from_run_config`
reads it (unknown keys are refused, so a typo in `--run-config` is not silently ignored) and
`to_dict` gives the same keys back for `config.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ndae.errors import NdaeError

STRATEGIES = ("fedavg", "fedadam", "fedprox")
SURVIVAL_MODES = ("pooled", "federated")
PHASES = ("site_info", "train", "normative_stats", "deviations", "cox_terms", "risk_summary")


@dataclass
class FederationConfig:
    run_dir: str = "runs/federated"  # where the server writes the run directory
    cohort_dir: str = ""  # simulation only: node i reads cohort_dir/sites/<i-th site>/manifest.csv
    cache_dir: str = ""  # prepared-slice cache root at the sites ("" = per manifest, in $NDAE_CACHE)
    dae_preset: str = "tiny"
    rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 0  # 0 = the preset's
    learning_rate: float = 0.0  # 0 = the preset's
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx only
    server_learning_rate: float = 0.01  # FedAdam's eta
    min_sites: int = 2
    round_timeout: float = 900.0  # seconds the server waits for the sites' replies in one round
    survival_mode: str = "pooled"
    survival_features: str = "cosine,mahalanobis"  # deviation scores in the Cox model (+ age, sex)
    seed: int = 0
    resume: bool = True  # continue from RUN/dae/checkpoint.pt when it exists
    device: str = "auto"
    # Test hooks: make one site raise in one phase (and training round), or stop the server
    # right after a round's checkpoint as if it had been killed.
    fault_site: str = ""
    fault_phase: str = ""
    fault_round: int = 0
    stop_after_round: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise NdaeError(f"run config 'strategy' must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.survival_mode not in SURVIVAL_MODES:
            raise NdaeError(f"run config 'survival-mode' must be one of {SURVIVAL_MODES}, got {self.survival_mode!r}")
        if self.rounds < 0 or self.local_epochs < 1:
            raise NdaeError(f"run config: rounds ({self.rounds}) must be >= 0 and local-epochs ({self.local_epochs}) >= 1")
        if self.min_sites < 1:
            raise NdaeError(f"run config 'min-sites' must be >= 1, got {self.min_sites}")
        if self.fault_phase and self.fault_phase not in PHASES:
            raise NdaeError(f"run config 'fault-phase' must be one of {PHASES}, got {self.fault_phase!r}")
        if not self.features:
            raise NdaeError("run config 'survival-features' names no deviation score")

    @property
    def features(self) -> list[str]:
        return [f.strip() for f in self.survival_features.split(",") if f.strip()]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FederationConfig":
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise NdaeError(f"unknown run config key {key!r}; known: {sorted(k.replace('_', '-') for k in known)}")
            kind = type(known[name].default)
            try:
                values[name] = _coerce(value, kind)
            except (TypeError, ValueError) as error:
                raise NdaeError(f"run config {key!r}: expected {kind.__name__}, got {value!r}") from error
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def to_run_config(self) -> dict[str, Any]:
        return self.to_dict()


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        return bool(value)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    return kind(value)
