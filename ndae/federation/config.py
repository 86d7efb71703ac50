"""The federated run's configuration: the `[tool.flwr.app.config]` keys as one dataclass.

Flower passes run config as a flat mapping with dashed keys (`local-epochs`); `from_run_config`
reads it (unknown keys are refused, so a typo in `--run-config` is not silently ignored) and
`to_dict` gives the same keys back for `config.json`. The fault-injection keys are test hooks:
refused unless NDAE_TEST_HOOKS=1 (`test_hooks_enabled`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ndae.errors import NdaeError

STRATEGIES = ("fedavg", "fedadam", "fedprox")
SURVIVAL_MODES = ("auto", "pooled", "federated")  # auto: federated in a private run, else pooled
DP_MODES = ("hooks", "functorch", "ghost")
PHASES = ("site_info", "train", "normative_stats", "prior_residual_stats", "voxelwise_stats", "deviations",
          "cox_terms", "risk_summary")
# survival-features may name every prior residual region at once: "prior" = every z_prior_<region>
# (normative z_sem), "prior-own" = every z_prior_own_<region> (own z_sem); the regions are the
# atlas regions the DAE's slices cut, known once the sites have sent their statistics.
PRIOR_FEATURE_GROUPS = {"prior": "z_prior_", "prior-own": "z_prior_own_"}


@dataclass
class FederationConfig:
    run_dir: str = "runs/federated"  # where the server writes the run directory
    cohort_dir: str = ""  # simulation only: node i reads cohort_dir/sites/<i-th site>/manifest.csv
    # Simulated nodes only: their prepared-slice cache root ("" = the simulation cache shared by every
    # run, `ndae.data.cache.simulation_cache_root`; one folder per cohort site inside it). A real
    # site (node config names its manifest) ignores it: its node config's cache-dir decides.
    cache_dir: str = ""
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
    survival_mode: str = "auto"
    survival_features: str = "cosine,mahalanobis"  # deviation scores in the Cox model (+ age, sex)
    # The regional deviations from the diffusion prior (ndae.federation.site.prior_residuals): the
    # controls' residual region means as summed (in private runs noised) statistics, the patients'
    # z-scores as deviation scores (z_prior_<region>, z_prior_own_<region>; survival-features may
    # name them, or "prior" / "prior-own" for every region). Private runs: a Gaussian release like
    # the moments, with this noise multiplier and this L2 clip of each control's region-mean vector.
    prior_residuals: bool = True
    prior_residual_noise_multiplier: float = 5.0
    prior_residual_clip: float = 0.75  # demo controls (trained tiny): median norm 0.32, max 0.71
    # The voxel-wise normative baseline beside the NDAE scores (what the DAE must beat); non-private
    # runs only: its per-voxel moments are exact sums, not a DP release. Voxels: every `stride`-th.
    voxelwise_baseline: bool = True
    voxelwise_stride: int = 2
    voxelwise_regions: str = ""  # atlas regions in its Cox model, comma-separated ("" = every named region)
    seed: int = 0
    resume: bool = True  # continue from RUN/dae/checkpoint.pt when it exists
    device: str = "auto"
    # Differential privacy at the sites (ndae.federation.site.privacy). What a site allows is its
    # node config's (ndae.federation.site.policy): these keys are requests, which may only be
    # stricter; 0 = "the site's own value".
    privacy: bool = False
    noise_multiplier: float = 1.0  # DP-SGD sigma / max-grad-norm (used when target-epsilon = 0)
    max_grad_norm: float = 1.0  # per-sample gradient clip
    target_epsilon: float = 0.0  # > 0: solve the DP-SGD noise so this run (all rounds + moments) reaches it
    delta: float = 0.0  # a smaller delta than the site's (0 = the site's: 1e-5 by default)
    budget_epsilon: float = 0.0  # a smaller lifetime epsilon than the site's (0 = the site's: 10 by default)
    budget_delta: float = 0.0  # a smaller lifetime delta than the site's (0 = the site's)
    max_epsilon_per_run: float = 0.0  # a smaller per-run epsilon than the site's (0 = the site's)
    max_cox_queries: int = 0  # fewer Cox likelihood queries per site than the site allows (0 = the site's)
    dp_mode: str = "hooks"  # Opacus per-sample gradients: hooks (fastest on the tiny DAE), functorch, ghost
    moments_noise_multiplier: float = 5.0  # Gaussian noise on the moments, in units of their sensitivity
    moments_covariate_clip: float = 2.5  # L2 clip of each control's design row (intercept, age basis, sex): above its usual norm
    moments_latent_clip: float = 3.0  # L2 clip of each control's raw z_sem: above the tiny DAE's usual ‖z_sem‖ (docs/privacy.md); raise for paper
    audit_canaries: int = 0  # > 0: each site adds this many synthetic canaries (half trained on) for `ndae audit --canaries`
    # Test hooks, not for a consortium: make one site raise in one phase (and training round), or
    # stop the server right after a round's checkpoint as if it had been killed. Flower refuses
    # `--run-config` keys that `[tool.flwr.app.config]` does not declare, so they stay declared
    # there, but a non-default value is refused unless the environment sets NDAE_TEST_HOOKS=1.
    fault_site: str = ""
    fault_phase: str = ""
    fault_round: int = 0
    stop_after_round: int = 0

    def __post_init__(self) -> None:
        _refuse_test_hooks_outside_tests(self)
        for item in fields(self):  # NaN passes every "<= 0" test below, inf every upper bound
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise NdaeError(f"run config {item.name.replace('_', '-')!r} must be a finite number, got {value}")
        if self.strategy not in STRATEGIES:
            raise NdaeError(f"run config 'strategy' must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.survival_mode not in SURVIVAL_MODES:
            raise NdaeError(f"run config 'survival-mode' must be one of {SURVIVAL_MODES}, got {self.survival_mode!r}")
        if self.audit_canaries < 0:
            raise NdaeError(f"run config 'audit-canaries' must be >= 0, got {self.audit_canaries}")
        if self.rounds < 0 or self.local_epochs < 1:
            raise NdaeError(f"run config: rounds ({self.rounds}) must be >= 0 and local-epochs ({self.local_epochs}) >= 1")
        if self.voxelwise_region_names:
            from ndae.baselines.voxelwise import ATLAS_REGIONS

            known = [name for name, _ in ATLAS_REGIONS.values()]
            unknown = [r for r in self.voxelwise_region_names if r not in known]
            if unknown:
                raise NdaeError(f"run config 'voxelwise-regions': unknown region(s) {unknown}; known: {known}")
        if self.voxelwise_stride < 1:
            raise NdaeError(f"run config 'voxelwise-stride' must be >= 1, got {self.voxelwise_stride}")
        if self.min_sites < 1:
            raise NdaeError(f"run config 'min-sites' must be >= 1, got {self.min_sites}")
        if self.fault_phase and self.fault_phase not in PHASES:
            raise NdaeError(f"run config 'fault-phase' must be one of {PHASES}, got {self.fault_phase!r}")
        for name in ("delta", "budget_epsilon", "budget_delta", "max_epsilon_per_run", "max_cox_queries",
                     "target_epsilon"):
            value = getattr(self, name)
            if not value >= 0:  # also NaN
                raise NdaeError(f"run config {name.replace('_', '-')!r} must be >= 0 (0 = the site's), got {value}")
        if self.dp_mode not in DP_MODES:
            raise NdaeError(f"run config 'dp-mode' must be one of {DP_MODES}, got {self.dp_mode!r}")
        if self.privacy:
            if self.max_grad_norm <= 0 or self.noise_multiplier < 0 or self.moments_noise_multiplier < 0:
                raise NdaeError("run config: max-grad-norm must be > 0, noise multipliers >= 0")
            if not self.moments_covariate_clip > 1 or not self.moments_latent_clip > 0:
                raise NdaeError("run config: moments-covariate-clip must be > 1 (a design row keeps its intercept 1 "
                                "when clipped) and moments-latent-clip > 0")
            if self.strategy == "fedprox":
                raise NdaeError("run config: fedprox's proximal gradient term is not supported under DP-SGD "
                                "(it would bypass per-sample clipping); use fedavg or fedadam")
        if not self.features:
            raise NdaeError("run config 'survival-features' names no deviation score")
        if not self.prior_residuals and any(is_prior_feature(f) for f in self.features):
            raise NdaeError(f"run config 'survival-features' names prior residual features "
                            f"{[f for f in self.features if is_prior_feature(f)]}, but 'prior-residuals' = false")
        if self.prior_residuals and self.privacy and not (self.prior_residual_clip > 0
                                                          and self.prior_residual_noise_multiplier >= 0):
            raise NdaeError("run config: prior-residual-clip must be > 0 and prior-residual-noise-multiplier >= 0")

    @property
    def effective_survival_mode(self) -> str:
        if self.survival_mode != "auto":
            return self.survival_mode
        return "federated" if self.privacy else "pooled"

    @property
    def voxelwise_region_names(self) -> list[str]:
        return [r.strip() for r in self.voxelwise_regions.split(",") if r.strip()]

    @property
    def features(self) -> list[str]:
        return [f.strip() for f in self.survival_features.split(",") if f.strip()]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FederationConfig":
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        from ndae.federation.site.policy import SITE_ONLY_KEYS

        for key, value in run_config.items():
            if key in SITE_ONLY_KEYS:
                raise NdaeError(f"run config key {key!r} is the site's to set (node config of each SuperNode, "
                                "ndae.federation.site.policy), not the run's: remove it from the run config")
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


def is_prior_feature(name: str) -> bool:
    """A survival feature from the prior residual step: a group ("prior") or one z_prior_ column."""
    return name in PRIOR_FEATURE_GROUPS or name.startswith(PRIOR_FEATURE_GROUPS["prior"])


TEST_HOOKS = ("fault_site", "fault_phase", "fault_round", "stop_after_round")
TEST_HOOKS_ENV = "NDAE_TEST_HOOKS"


def test_hooks_enabled() -> bool:
    """Fault injection is honoured only in a test's processes: the tests set NDAE_TEST_HOOKS=1,
    which the simulation hands on to the SuperLink, the ServerApp and every ClientApp."""
    return os.environ.get(TEST_HOOKS_ENV) == "1"


def _refuse_test_hooks_outside_tests(config: "FederationConfig") -> None:
    if test_hooks_enabled():
        return
    defaults = FederationConfig.__dataclass_fields__
    for name in TEST_HOOKS:
        value = getattr(config, name)
        if value != defaults[name].default:
            raise NdaeError(f"run config {name.replace('_', '-')!r} = {value!r} is a test hook (fault injection), "
                            f"honoured only when the environment sets {TEST_HOOKS_ENV}=1 (the test suite does); "
                            "remove it from the run config")


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
