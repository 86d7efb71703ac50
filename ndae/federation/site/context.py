"""What every site handler reads first: the run config (a request) checked against the site's
policy, the site's data, its privacy ledger; and the keys of what a run keeps in the node state."""

from __future__ import annotations

from flwr.app import Context

from ndae.federation.config import FederationConfig
from ndae.federation.site import task as site_task
from ndae.federation.site.policy import SitePolicy

STATE_KEY = "survival-table"
QUERIES_KEY = "queries"
FEATURES_KEY = "features"
PRIOR_SWAP_KEY = "prior-swap"  # the controls' swap test (non-private runs), sent with the patients'


def request(context: Context) -> tuple[FederationConfig, SitePolicy]:
    """The run config (a request) and the site's policy in force for it. Checked before any
    data is read: a request looser than the node config allows is refused, naming the key."""
    config = FederationConfig.from_run_config(context.run_config)
    return config, SitePolicy.from_node_config(context.node_config).enforce(config)


def site_of(context: Context) -> tuple[FederationConfig, SitePolicy, site_task.SiteData]:
    config, policy = request(context)
    manifest = site_task.site_manifest_path(context.node_config, config.cohort_dir)
    # The node config decides where the site writes its cache; the run config cannot (site_cache_dir).
    prepared = site_task.site_cache_dir(context.node_config, manifest, config.cache_dir)
    return config, policy, site_task.load_site(manifest, prepared_dir=prepared)


def site_privacy(config: FederationConfig, policy: SitePolicy, context: Context, site: site_task.SiteData):
    from ndae.federation.site.privacy import SitePrivacy

    return SitePrivacy.for_site(config, policy, site.name, int(site.controls.sum()), site.manifest_path,
                                flower_run_id=context.run_id)



def flag(settings, key: str) -> bool:
    """A boolean the server sends: only a real bool or 'true'/'false' (bool('false') is True)."""
    from ndae.errors import NdaeError

    value = settings[key]
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "false"):
        return str(value).strip().lower() == "true"
    raise NdaeError(f"message field {key!r} must be true or false, got {value!r}")
