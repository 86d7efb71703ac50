"""The site's policy: what a hospital allows, set by its administrator in the SuperNode's node config.

Runs AT THE SITE. The node config is law; the run config (written by the researcher, relayed by
the server) is a request that may only be stricter. `SitePolicy.from_node_config` reads only
the node config; `SitePolicy.enforce(request)` returns the settings this run gets at this site
(the stricter of policy and request) or raises `PolicyViolation` naming the run-config key that
asks for more than the site allows. Handlers call it before they read any data.

Node config keys (all optional; the defaults are what a careful site would choose):

| key | default | meaning |
|---|---|---|
| require-privacy | true on a deployed SuperNode (node config `site-dir`, or `NDAE_SITE_DIR` set by
  `deploy/start-supernode.sh`) or if the node config sets any other privacy key; else false (a
  simulated node) | refuse any run with privacy=false |
| budget-epsilon | 10 | lifetime ε over every run on this site's data |
| budget-delta | δ | lifetime δ |
| delta | 1e-5 | δ of every release (`ndae.privacy.delta`) |
| max-epsilon-per-run | = budget-epsilon | ε one run may spend |
| privacy-dir | <manifest folder>/privacy | the ledger, signing key and canary records |
| signing-key-file | <privacy-dir>/<site>.signing.key | the key that signs the ledger head |
| allow-pooled-scores | unset | true: patients' scores may leave (pseudonymised); false: never; unset: only in non-private runs |
| survival-modes | pooled,federated | the survival modes this site takes part in |
| max-cox-queries | 60 | Cox likelihood evaluations this site answers over its lifetime (private runs:
  counted in its ledger, refusals for the β bound included; non-private runs: per run) |
| min-dp-batch-size | 8 | DP-SGD batch at least this (the sample rate 1/ceil(n/B) then reveals n only to within B) |
| max-audit-canaries | 256 | canaries one run may ask the site to train on |
| public-counts | false | in a private run, send exact numbers of controls/patients/events |
| insecure-reproducible-seed | unset | TESTS ONLY: draw the privacy noise from this seed; the ledger says so |
| example-maps | true on a simulated node, false on a deployed SuperNode | write deviation maps of a few
  example patients into the site's own folder (`ndae.federation.site.example_maps`; never sent) |
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ndae.errors import NdaeError
from ndae.privacy.delta import DEFAULT_DELTA

__all__ = ["SitePolicy", "PolicyViolation", "SITE_ONLY_KEYS", "POLICY_KEYS", "is_deployed"]

SURVIVAL_MODES = ("pooled", "federated")
# Keys only the site sets: a run config naming one is refused (the server may not choose them).
SITE_ONLY_KEYS = ("privacy-dir", "signing-key-file", "allow-pooled-scores", "public-counts",
                  "insecure-reproducible-seed", "require-privacy", "survival-modes", "canary-secret", "example-maps")
POLICY_KEYS = ("require-privacy", "budget-epsilon", "budget-delta", "delta", "max-epsilon-per-run", "privacy-dir",
               "signing-key-file", "allow-pooled-scores", "survival-modes", "max-cox-queries", "public-counts",
               "insecure-reproducible-seed", "min-dp-batch-size", "max-audit-canaries", "example-maps")
# Node config keys that set no privacy policy by themselves (so they do not make a simulated node
# require privacy): require-privacy says it outright, example-maps is what the site draws on its own disk.
_LOCAL_KEYS = ("require-privacy", "example-maps")
# Flower's own node config keys (simulation), the data keys a SuperNode is started with, and what
# deploy/start-supernode.sh passes for the site's launch wrapper (site name, site folder, data root).
_OTHER_NODE_KEYS = ("manifest", "partition-id", "num-partitions", "cache-dir", "site", "site-dir", "data-root")


class PolicyViolation(NdaeError):
    """The run config asks this site for more than its policy allows."""


# `deploy/start-supernode.sh` names the site's folder in the node config and exports it for its
# launch wrapper (`ndae.deploy.approved_clientapp`), which every task of a deployed SuperNode
# passes through; a simulated node (Flower's simulation, `InProcessGrid`) has neither.
DEPLOYED_NODE_KEY = "site-dir"
DEPLOYED_ENV = "NDAE_SITE_DIR"


def is_deployed(node_config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> bool:
    """Whether this node serves a real site (started as deploy/README.md shows)."""
    environ = os.environ if environ is None else environ
    return bool(str(node_config.get(DEPLOYED_NODE_KEY, "") or "").strip() or environ.get(DEPLOYED_ENV, "").strip())


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise NdaeError(f"node config {key!r}: expected true or false, got {value!r}")


def _number(key: str, value: Any, *, positive: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NdaeError(f"node config {key!r}: expected a number, got {value!r}") from None
    if math.isnan(number) or (positive and not number > 0) or number < 0:
        raise NdaeError(f"node config {key!r}: expected a {'positive' if positive else 'non-negative'} number, "
                        f"got {value!r}")
    return number


@dataclass(frozen=True)
class SitePolicy:
    require_privacy: bool = False
    budget_epsilon: float = 10.0
    budget_delta: float = DEFAULT_DELTA
    delta: float = DEFAULT_DELTA
    max_epsilon_per_run: float = 10.0
    privacy_dir: str = ""  # "" = <manifest folder>/privacy
    signing_key_file: str = ""  # "" = <privacy-dir>/<site>.signing.key
    allow_pooled_scores: bool | None = None
    survival_modes: tuple[str, ...] = SURVIVAL_MODES
    max_cox_queries: int = 60
    min_dp_batch_size: int = 8
    max_audit_canaries: int = 256
    public_counts: bool = False
    insecure_seed: int | None = None
    deployed: bool = False  # a real site's SuperNode (`is_deployed`), not a simulated node
    example_maps: bool = False  # write example patients' maps at the site (`example_maps`); never sent

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "SitePolicy":
        """The policy from the node config alone (a key it lacks takes the default above)."""
        get = node_config.get
        unknown = [k for k in node_config if k not in POLICY_KEYS and k not in _OTHER_NODE_KEYS]
        if unknown:
            hint = " (canary coins now come from the site's own CSPRNG: remove it)" if "canary-secret" in unknown else ""
            raise NdaeError(f"node config: unknown key(s) {sorted(unknown)}{hint}; known: {sorted(POLICY_KEYS)}")
        delta = _number("delta", get("delta", DEFAULT_DELTA))
        budget_epsilon = _number("budget-epsilon", get("budget-epsilon", 10.0))
        budget_delta = _number("budget-delta", get("budget-delta", delta))
        max_run = _number("max-epsilon-per-run", get("max-epsilon-per-run", budget_epsilon))
        if delta > budget_delta:
            raise NdaeError(f"node config 'delta' ({delta:g}) exceeds 'budget-delta' ({budget_delta:g})")
        modes = tuple(m.strip() for m in str(get("survival-modes", ",".join(SURVIVAL_MODES))).split(",") if m.strip())
        bad = [m for m in modes if m not in SURVIVAL_MODES]
        if bad or not modes:
            raise NdaeError(f"node config 'survival-modes': {bad or 'empty'}; allowed: {list(SURVIVAL_MODES)}")
        allow = get("allow-pooled-scores")
        seed = get("insecure-reproducible-seed")
        whole = {}
        for key, default in (("max-cox-queries", 60), ("min-dp-batch-size", 8), ("max-audit-canaries", 256)):
            number = _number(key, get(key, default), positive=False)
            if not float(number).is_integer():
                raise NdaeError(f"node config {key!r}: expected a whole number, got {number:g}")
            whole[key] = int(number)
        # A site that sets any privacy key has a privacy policy: it must not be downgraded to a
        # non-private run by a run config saying privacy=false (it may still say so explicitly).
        # A deployed SuperNode holds real patients: private unless its administrator opts out.
        declares_policy = any(k in node_config for k in POLICY_KEYS if k not in _LOCAL_KEYS)
        deployed = is_deployed(node_config)
        if seed is not None and not str(seed).strip().lstrip("-").isdigit():
            raise NdaeError(f"node config 'insecure-reproducible-seed': expected an integer, got {seed!r}")
        return cls(require_privacy=_bool("require-privacy", get("require-privacy", declares_policy or deployed)),
                   deployed=deployed,
                   # A hospital decides whether patients' images are drawn on its disk: off unless it says so.
                   example_maps=_bool("example-maps", get("example-maps", not deployed)),
                   budget_epsilon=budget_epsilon, budget_delta=budget_delta, delta=delta,
                   max_epsilon_per_run=max_run, privacy_dir=str(get("privacy-dir", "") or ""),
                   signing_key_file=str(get("signing-key-file", "") or ""),
                   allow_pooled_scores=None if allow is None else _bool("allow-pooled-scores", allow),
                   survival_modes=modes, max_cox_queries=whole["max-cox-queries"],
                   min_dp_batch_size=max(1, whole["min-dp-batch-size"]), max_audit_canaries=whole["max-audit-canaries"],
                   public_counts=_bool("public-counts", get("public-counts", False)),
                   insecure_seed=None if seed is None else int(str(seed).strip()))

    # ---- the request -------------------------------------------------------------------------
    def enforce(self, request) -> "SitePolicy":
        """The policy in force for this run: the stricter of this policy and the run config
        `request` (a FederationConfig). Raises PolicyViolation naming the first looser key."""
        if self.require_privacy and not request.privacy:
            raise PolicyViolation("run config 'privacy' = false: this site's policy requires privacy=true "
                                  "(node config require-privacy)")
        limits = {"budget-epsilon": ("budget_epsilon", self.budget_epsilon),
                  "budget-delta": ("budget_delta", self.budget_delta), "delta": ("delta", self.delta),
                  "max-epsilon-per-run": ("max_epsilon_per_run", self.max_epsilon_per_run),
                  "max-cox-queries": ("max_cox_queries", self.max_cox_queries)}
        stricter: dict[str, Any] = {}
        for key, (name, allowed) in limits.items():
            value = getattr(request, name, 0)
            if not value:
                continue  # 0 = not asked: the site's own value holds
            if not value <= allowed:
                raise PolicyViolation(f"run config {key!r} = {value:g} is looser than this site allows "
                                      f"({allowed:g}, node config {key!r}): a run may only ask for less")
            stricter[name] = type(allowed)(value)
        if request.target_epsilon > 0 and request.privacy:
            per_run = stricter.get("max_epsilon_per_run", self.max_epsilon_per_run)
            if request.target_epsilon > per_run:
                raise PolicyViolation(f"run config 'target-epsilon' = {request.target_epsilon:g} exceeds the ε this "
                                      f"site allows per run ({per_run:g}, node config 'max-epsilon-per-run')")
        if request.audit_canaries > self.max_audit_canaries:
            raise PolicyViolation(f"run config 'audit-canaries' = {request.audit_canaries} exceeds what this site trains "
                                  f"on ({self.max_audit_canaries}, node config 'max-audit-canaries')")
        mode = request.effective_survival_mode
        if mode not in self.survival_modes:
            raise PolicyViolation(f"run config 'survival-mode' = {mode!r}: this site takes part only in "
                                  f"{list(self.survival_modes)} (node config survival-modes)")
        if mode == "pooled" and not self.pooled_scores_allowed(request.privacy):
            why = ("its policy forbids it (node config allow-pooled-scores=false)" if self.allow_pooled_scores is False
                   else "a private run needs the site's consent (node config allow-pooled-scores=true)")
            raise PolicyViolation(f"run config 'survival-mode' = 'pooled' would send patients' rows, and {why}; "
                                  "use survival-mode federated")
        return replace(self, **stricter)

    def pooled_scores_allowed(self, private: bool) -> bool:
        if self.allow_pooled_scores is None:
            return not private
        return self.allow_pooled_scores

    def resolve_privacy_dir(self, manifest: str | Path | None) -> Path:
        """Where the site's ledger lives: node config privacy-dir, else beside its manifest.
        Never the run config's choice: a server that chose it could hand the site a fresh ledger."""
        if self.privacy_dir:
            return Path(self.privacy_dir).expanduser()
        if manifest:
            return Path(str(manifest)).expanduser().resolve().parent / "privacy"
        raise NdaeError("no privacy-dir for this site: set node config privacy-dir='/path'")
