"""What every site handler reads first: the run config (a request) checked against the site's
policy, the site's data, its privacy ledger; and the keys of what a run keeps in the node state."""

from __future__ import annotations

import functools
import logging

from flwr.app import Context

from ndae.errors import NdaeError, PrivacyBudgetExceeded
from ndae.federation.config import FederationConfig
from ndae.federation.site.data import SiteData, load_site, site_cache_dir, site_manifest_path
from ndae.federation.site.policy import PolicyViolation, SitePolicy, is_deployed

_log = logging.getLogger("ndae.site")

STATE_KEY = "survival-table"
QUERIES_KEY = "queries"
FEATURES_KEY = "features"
PRIOR_SWAP_KEY = "prior-swap"  # the controls' swap test (non-private runs), sent with the patients'


def request(context: Context) -> tuple[FederationConfig, SitePolicy]:
    """The run config (a request) and the site's policy in force for it. Checked before any
    data is read: a request looser than the node config allows is refused, naming the key."""
    config = FederationConfig.from_run_config(context.run_config)
    return config, SitePolicy.from_node_config(context.node_config).enforce(config)


def site_of(context: Context) -> tuple[FederationConfig, SitePolicy, SiteData]:
    config, policy = request(context)
    from ndae.federation.default_cohort import simulated_node_cohort

    # A bare `flwr run .` names no cohort: its simulated nodes read the small demo cohort the ServerApp made.
    cohort_dir = simulated_node_cohort(context.node_config, config.cohort_dir, config.seed)
    manifest = site_manifest_path(context.node_config, cohort_dir)
    # The node config decides where the site writes its cache; the run config cannot (site_cache_dir).
    prepared = site_cache_dir(context.node_config, manifest, config.cache_dir)
    return config, policy, load_site(manifest, prepared_dir=prepared)


def site_privacy(config: FederationConfig, policy: SitePolicy, context: Context, site: SiteData):
    from ndae.federation.site.privacy import SitePrivacy

    return SitePrivacy.for_site(config, policy, site.name, int(site.controls.sum()), site.manifest_path,
                                flower_run_id=context.run_id)



def flag(settings, key: str) -> bool:
    """A boolean the server sends: only a real bool or 'true'/'false' (bool('false') is True)."""
    value = settings[key]
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "false"):
        return str(value).strip().lower() == "true"
    raise SiteRefusal(f"message field {key!r} must be true or false, got {str(value)[:40]!r}")


class SiteRefusal(NdaeError):
    """A refusal the site wrote for the server: it names keys, fields and what the server sent,
    never the site's data (no subject id, count, path or value of a record)."""


# What the server may read of an error: the site's own refusals, written for it.
_WRITTEN_FOR_THE_SERVER = (PolicyViolation, PrivacyBudgetExceeded, SiteRefusal)


def _withholds_error_text(context: Context) -> bool:
    """Any other error's text may hold the site's data (a subject id in a conversion error, the
    manifest's path, a count in an array shape): it stays in the site's log in a private run and
    on a deployed SuperNode (where the server is someone else). A simulation's errors, where one
    person runs every node and the server, keep their text."""
    try:
        config = FederationConfig.from_run_config(context.run_config)
    except Exception:  # noqa: BLE001 - the handler reports the run config's own error
        return is_deployed(context.node_config)
    return bool(config.privacy) or is_deployed(context.node_config)


def errors_without_data(handler):
    """Wrap a ClientApp handler: an error that is not one of the site's refusals reaches the
    server as its type only (the details go to the site's log), where `_withholds_error_text`."""

    @functools.wraps(handler)
    def answer(message, context: Context):
        try:
            return handler(message, context)
        except _WRITTEN_FOR_THE_SERVER:
            raise
        except Exception as error:
            if not _withholds_error_text(context):
                raise
            kind = message.metadata.message_type
            _log.warning("site could not answer %s", kind, exc_info=True)
            raise NdaeError(f"the site could not answer {kind} ({type(error).__name__}); the details are in the "
                            "site's log: an error's text may hold patients' data and does not leave the site") from None

    return answer
