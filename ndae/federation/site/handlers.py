"""The ClientApp's handlers: unpack the message, call the site's task (`data`, `training`,
`statistics`), return the reply's fields. What of them leaves the site is decided by the release
layer that wraps each handler (`releases`: the site's policy and its release table).

Kept in the library (not in `client/client_app.py`) so that `InProcessGrid` and the Flower
ClientApp run exactly the same code.

The site's answers to the survival queries (Cox terms, risk summary) are in `survival_queries`,
the prior residual query and the patients' prior residual z-scores in `prior_residual_queries`;
what every handler reads first (request, policy, data, ledger) is in `context`.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Message, MetricRecord

from ndae.federation.records import (
    INITIAL_STATS_KEY, INITIAL_WEIGHTS_KEY, PRIOR_KEY, VOXELWISE_KEY, arrays_to_record, frame_to_record,
)
from ndae.federation.site.context import FEATURES_KEY, STATE_KEY, SiteRefusal, errors_without_data, flag
from ndae.federation.site.data import check_fault, site_info
# The Cox queries and the prior residual query live in their own modules; the dispatch table
# below names every handler.
from ndae.federation.site.prior_residual_queries import handle_prior_residual_stats, patient_prior_features
from ndae.federation.site.releases import Gate, release_layer
from ndae.federation.site.score_histograms import FOLDS_KEY, checked_histogram_request, fold_statistics, score_histograms
from ndae.federation.site.statistics import (covariate_moments, encode_z_sem, normative_statistics,
                                             patient_survival_table)
from ndae.federation.site.survival_queries import handle_cox_terms, handle_risk_summary
from ndae.federation.site.training import train_round


@release_layer("query.site_info")
def handle_site_info(message: Message, gate: Gate) -> dict:
    check_fault(gate.config, gate.site.name, "site_info")
    # controls and patients leave a private site only where it declares counts public (else -1)
    return {"info": ConfigRecord(gate.leaving("info", site_info(gate.site)))}


@release_layer("train")
def handle_train(message: Message, gate: Gate) -> dict:
    config, policy, site = gate.config, gate.policy, gate.site
    settings = message.content["config"]
    round_number = int(settings["server-round"])
    check_fault(config, site.name, "train", round_number)
    from ndae.federation.site.privacy import site_canaries

    if gate.noised("arrays"):  # DP-SGD; raises PrivacyBudgetExceeded (an error reply) before any step
        from ndae.federation.site.private_releases import private_train_round

        privacy = gate.privacy()
        weights, metrics, _ = private_train_round(
            site, message.content["arrays"], json.loads(settings["dae-config"]), privacy,
            round_number=round_number, rounds=config.rounds, epochs=int(settings["local-epochs"]),
            ema_step=int(settings["ema-step"]), device=config.device,
            canaries=site_canaries(config, privacy, site, policy))
        # The loss of the controls is not DP: it stays here. The step count follows from the DP
        # parameters in the ledger (sample rate 1/ceil(n/B)); the number of controls is sent only
        # where the site declares counts public (else 1: FedAvg then weights sites equally).
        train_metrics = gate.leaving("metrics", {k: metrics[k] for k in ("num-examples", "local-steps")})
        return {"arrays": weights, "metrics": MetricRecord(train_metrics),
                "privacy": ConfigRecord({"noise-multiplier": metrics["noise-multiplier"]})}  # beside the ledger's
    weights, metrics = train_round(
        site, message.content["arrays"], json.loads(settings["dae-config"]), round_number=round_number,
        epochs=int(settings["local-epochs"]), seed=int(settings["seed"]), ema_step=int(settings["ema-step"]),
        proximal_mu=float(settings.get("proximal-mu", 0.0)), device=config.device,
        canaries=site_canaries(config, None, site, policy))
    return {"arrays": weights, "metrics": MetricRecord(metrics)}


@release_layer("query.normative_stats")
def handle_normative_stats(message: Message, gate: Gate) -> dict:
    config, site = gate.config, gate.site
    check_fault(config, site.name, "normative_stats")
    settings = message.content["config"]
    from ndae.federation.site.prior_residual_queries import checked_design

    # The design is applied to the controls' covariate table: one that reads `subject` would fail
    # naming subjects. Checked on its own (public) content first.
    design = checked_design(settings, site.name, "the normative statistics query's design")
    if gate.noised("stats"):  # clipped + Gaussian noise, accounted in the site's ledger before it leaves
        from ndae.federation.site.private_releases import private_normative_statistics

        stats, _ = private_normative_statistics(site, message.content["dae"], json.loads(settings["dae-config"]),
                                                design, gate.privacy(), device=config.device)
        return {"stats": arrays_to_record(stats)}
    dae_config = json.loads(settings["dae-config"])
    # the controls encoded once with the global weights: their whole statistics and, when asked,
    # their per-fold statistics (the held-out controls' calibration, score_histograms)
    reply, z_sem = {}, None
    if "dae" in message.content:
        z_sem = encode_z_sem(site, message.content["dae"], dae_config, site.controls, config.device)
        reply["stats"] = arrays_to_record(normative_statistics(site, None, dae_config, design, z_sem=z_sem))
    if INITIAL_WEIGHTS_KEY in message.content:  # the initial weights: the age probe's yardstick (non-private runs)
        reply[INITIAL_STATS_KEY] = arrays_to_record(normative_statistics(
            site, message.content[INITIAL_WEIGHTS_KEY], dae_config, design, device=config.device))
    if FOLDS_KEY in settings:
        if z_sem is None:
            raise KeyError("dae")  # per-fold statistics of which weights: none were sent
        reply.update(fold_statistics(site, z_sem, design, settings[FOLDS_KEY], config.seed))
    return reply


@release_layer("query.voxelwise_stats")  # a private run's request is refused by the layer
def handle_voxelwise_stats(message: Message, gate: Gate) -> dict:
    """The controls' per-voxel sufficient statistics for the voxel-wise baseline (non-private runs)."""
    check_fault(gate.config, gate.site.name, "voxelwise_stats")
    from ndae.federation.site.voxelwise import voxelwise_statistics

    stride = gate.config.voxelwise_stride  # the run's request, as every site reads it; not a per-message value
    return {"stats": arrays_to_record(voxelwise_statistics(gate.site, stride))}


@release_layer("query.deviations")  # rows without the site's consent, and a private run's voxel-wise model: refused
def handle_deviations(message: Message, gate: Gate) -> dict:
    config, policy, site, context = gate.config, gate.policy, gate.site, gate.context
    check_fault(config, site.name, "deviations")
    settings = message.content["config"]
    share_rows = flag(settings, "share-rows")
    from ndae.federation.site.prior_residual_queries import checked_dae_config, checked_normative_model

    dae_config = checked_dae_config(settings, site.name)
    features = _requested_features(settings, site, dae_config, prior=PRIOR_KEY in message.content)
    # The z_sem model is applied to the patients' covariate table: checked on its own content first.
    normative = checked_normative_model(message.content, site.name, dae_config)
    histograms = checked_histogram_request(message.content, site.name, dae_config,  # before any data is read
                                           private=bool(config.privacy))
    prior_features, prior_swap = patient_prior_features(message, context, config, site, dae_config, normative)
    table = patient_survival_table(site, message.content["dae"], dae_config, normative, features,
                                   device=config.device, extra=prior_features)
    table, voxel_columns, voxelwise_error = _with_voxelwise_scores(message, site, policy, table)
    from ndae.federation.site.example_maps import write_example_maps

    # A few patients' maps, into the site's own folder where its policy allows; nothing of them is sent.
    write_example_maps(site, policy, message.content["dae"], dae_config, normative, table, device=config.device)
    context.state[STATE_KEY] = frame_to_record(table)  # stays at the site, for the Cox rounds
    # what Cox queries may name: the run's scores (and the baseline's, when the server sent it)
    context.state[FEATURES_KEY] = ConfigRecord({"features": [*features, *voxel_columns]})
    # The counts first: in a private run their ledger line comes before the pooled rows'.
    counts = score_histograms(histograms, gate, message.content["dae"], dae_config, normative, table)
    reply = _deviations_reply(gate, table, features, voxelwise_error, prior_swap, share_rows)
    reply.update(counts)
    return reply


def _with_voxelwise_scores(message: Message, site, policy, table):
    """(the patients' table with the voxel-wise baseline's region z-scores merged in, their column
    names, why the baseline could not score them or ""). The baseline is a yardstick: if it fails
    here, the site still answers with its NDAE scores."""
    if VOXELWISE_KEY not in message.content:
        return table, [], ""
    from ndae.errors import NdaeError
    from ndae.federation.records import config_to_voxelwise
    from ndae.federation.site.survival_queries import is_voxelwise_score
    from ndae.federation.site.voxelwise import patient_voxelwise_features

    try:
        voxel = patient_voxelwise_features(site, config_to_voxelwise(message.content[VOXELWISE_KEY]))
        columns = [c for c in voxel.columns if c != "subject"]
        if not all(is_voxelwise_score(c) for c in columns) or set(columns) & set(table.columns):
            raise NdaeError("the voxel-wise baseline's columns are not region scores")
        return table.merge(voxel, on="subject", how="left", validate="one_to_one"), columns, ""
    except (NdaeError, OSError, ValueError, KeyError) as error:
        # A deployed site's error texts (cache paths, subject ids) stay in its log, as in `errors_without_data`.
        text = "" if policy.deployed else (str(error).splitlines()[0][:200] if str(error) else "")
        return table, [], f"{type(error).__name__}: {text}" if text else type(error).__name__


def _deviations_reply(gate: Gate, table, features: list[str], voxelwise_error: str, prior_swap,
                      share_rows: bool) -> dict:
    """The reply's fields the site computes for the server (the release layer decides what of
    them leaves): counts, the covariate moments, why the baseline failed, the prior swap test and,
    when asked and allowed, the pooled rows."""
    reply = {}
    if gate.sends("counts"):
        reply["counts"] = MetricRecord({"patients": int(len(table)), "events": int(table["event"].sum())})
    if gate.sends("moments"):  # exact covariate moments: not DP, never from a private site
        reply["moments"] = arrays_to_record(covariate_moments(table, [*features, "age", "sex_female"]))
    if voxelwise_error:
        reply["voxelwise-error"] = ConfigRecord({"reason": voxelwise_error})
    if prior_swap is not None:
        reply["prior-swap"] = MetricRecord(prior_swap)
    if share_rows and gate.sends("rows"):  # in a private run the rows exist here only once declared
        if gate.declared("rows"):
            from ndae.federation.site.privacy import POOLED_ROW_CONTENT, pseudonymised_rows, record_declared

            rows = pseudonymised_rows(table, gate.privacy())
            record_declared(gate.privacy(), "shared-scores", columns=list(rows.columns), content=POOLED_ROW_CONTENT)
            table = rows
        reply["rows"] = frame_to_record(table)
    return reply


def _requested_features(settings, site, dae_config: dict, *, prior: bool) -> list[str]:
    """The deviation scores the server names for the Cox model, checked against what the site's
    own code computes before any patient is read: the z_sem scores, and with the prior residual
    model the region z-scores of the atlas the site's slices cut. The deviation table also holds
    the subject id, follow-up and covariates: none of them may become a feature."""
    from ndae.deviation.scores import SCORE_COLUMNS

    try:
        features = [str(f) for f in settings["features"]]
    except (KeyError, TypeError) as error:
        raise SiteRefusal(f"the deviations query needs a list 'features' ({type(error).__name__})") from None
    allowed = list(SCORE_COLUMNS)
    if prior:
        from ndae.federation.site.prior_residual_queries import prior_score_columns

        allowed += prior_score_columns(site, dae_config)
    bad = [f for f in features if f not in allowed]
    if bad or len(set(features)) != len(features):
        raise SiteRefusal(f"survival-features {[f[:80] for f in bad[:10]] or 'repeated'} are not deviation scores "
                          f"this site computes (or are repeated); available: {allowed}")
    return features


# Every handler's error reaches the server as the site's refusal or as its type only.
HANDLERS = {name: errors_without_data(handler) for name, handler in {
    "query.site_info": handle_site_info,
    "train": handle_train,
    "query.normative_stats": handle_normative_stats,
    "query.prior_residual_stats": handle_prior_residual_stats,
    "query.voxelwise_stats": handle_voxelwise_stats,
    "query.deviations": handle_deviations,
    "query.cox_terms": handle_cox_terms,
    "query.risk_summary": handle_risk_summary,
}.items()}


def build_client_app():
    """The Flower ClientApp with one handler per message type."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(HANDLERS["train"])
    for message_type, handler in HANDLERS.items():
        if message_type.startswith("query."):
            app.query(message_type.split(".", 1)[1])(handler)
    return app


__all__ = ["HANDLERS", "build_client_app"]
