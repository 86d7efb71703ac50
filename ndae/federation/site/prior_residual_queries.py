"""The ClientApp's prior residual handlers (`ndae.federation.site.prior_residuals` does the work).

- `handle_prior_residual_stats` (query `prior_residual_stats`): the controls' residual region
  means as summable sufficient statistics; in a private run the noised, accounted release of
  `private_releases`. A query asking for anything else (rows, subjects) is refused: per-subject
  residuals never leave the site.
- `patient_prior_features` (part of the deviations query): the patients' z-scores against the
  residuals' model the server sends, and (non-private runs) the swap test over the site's subjects.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.records import PRIOR_KEY, arrays_to_record, config_to_normative
from ndae.federation.site import task as site_task
from ndae.federation.site.context import PRIOR_SWAP_KEY, site_of, site_privacy

__all__ = ["handle_prior_residual_stats", "patient_prior_features"]

PRIOR_REQUEST_FIELDS = ("dae-config", "design")  # what a prior residual statistics query may hold


def _refuse_prior_residuals_unless_requested(config: FederationConfig, site_name: str) -> None:
    if not config.prior_residuals:
        from ndae.federation.site.policy import PolicyViolation

        raise PolicyViolation(f"site {site_name!r} refuses prior residual queries: run config 'prior-residuals' = "
                              "false")


def handle_prior_residual_stats(message: Message, context: Context) -> Message:
    """The controls' prior residual region means as summable sufficient statistics, with the
    global DAE and the normative model of z_sem the server sends; never a subject's own values."""
    config, policy, site = site_of(context)
    site_task.check_fault(config, site.name, "prior_residual_stats")
    _refuse_prior_residuals_unless_requested(config, site.name)
    settings = message.content["config"]
    asked = sorted(set(settings.keys()) - set(PRIOR_REQUEST_FIELDS))
    if asked or set(message.content.keys()) - {"config", "dae", "normative"}:
        # e.g. share-rows: per-subject residuals (an image-derived row per control) never leave
        from ndae.federation.site.policy import PolicyViolation

        raise PolicyViolation(f"site {site.name!r} refuses a prior residual query asking for "
                              f"{asked or sorted(set(message.content.keys()) - {'config', 'dae', 'normative'})}: "
                              "only the controls' summed statistics of the residuals leave a site")
    from ndae.federation.site.prior_residuals import prior_region_means, prior_residual_statistics

    dae_config, design = json.loads(settings["dae-config"]), json.loads(settings["design"])
    normative = config_to_normative(message.content["normative"])
    if config.privacy:  # clipped + Gaussian noise, accounted like the z_sem moments before it leaves
        from ndae.federation.site.private_releases import private_prior_residual_statistics
        from ndae.federation.site.privacy import ledger_reply

        privacy = site_privacy(config, policy, context, site)
        stats, columns, _ = private_prior_residual_statistics(site, message.content["dae"], dae_config, normative,
                                                              design, privacy, device=config.device)
        return Message(RecordDict({"stats": arrays_to_record(stats), "columns": ConfigRecord({"columns": columns}),
                                   "privacy": ConfigRecord(ledger_reply(privacy))}), reply_to=message)
    means = prior_region_means(site, message.content["dae"], dae_config, normative, site.controls, config.device)
    if means.swap_relative_change is not None:  # the controls' part of the swap test, sent with the patients'
        context.state[PRIOR_SWAP_KEY] = MetricRecord({"relative-change": means.swap_relative_change,
                                                      "subjects": means.subjects})
    return Message(RecordDict({"stats": arrays_to_record(prior_residual_statistics(site, means, design)),
                               "columns": ConfigRecord({"columns": means.columns})}), reply_to=message)


def patient_prior_features(message: Message, context: Context, config: FederationConfig, site, dae_config: dict,
                            normative):
    """The patients' prior residual z-scores (`z_prior_*`) when the server sent the residuals'
    model, and (non-private runs) the swap test over the site's controls and patients."""
    if PRIOR_KEY not in message.content:
        return None, None
    _refuse_prior_residuals_unless_requested(config, site.name)
    from ndae.federation.site.prior_residuals import patient_prior_features, prior_region_means

    means = prior_region_means(site, message.content["dae"], dae_config, normative, site.patients, config.device)
    features = patient_prior_features(site, means, config_to_normative(message.content[PRIOR_KEY]))
    parts = [(means.swap_relative_change, means.subjects)]
    if PRIOR_SWAP_KEY in context.state:
        controls = context.state[PRIOR_SWAP_KEY]
        parts.append((float(controls["relative-change"]), int(controls["subjects"])))
    parts = [(value, n) for value, n in parts if value is not None and n > 0]
    swap = None
    if parts and not config.privacy:  # a mean over the site's own subjects: not a DP release
        subjects = sum(n for _, n in parts)
        swap = {"relative-change": sum(v * n for v, n in parts) / subjects, "subjects": subjects}
    return features, swap
