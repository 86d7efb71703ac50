"""The ClientApp's handlers: unpack the message, call `ndae.federation.site`, pack the reply.

Kept in the library (not in `client/client_app.py`) so that `InProcessGrid` and the Flower
ClientApp run exactly the same code.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ndae.federation import site as site_task
from ndae.federation.config import FederationConfig
from ndae.federation.records import arrays_to_record, config_to_normative, frame_to_record, record_to_frame

STATE_KEY = "survival-table"


def _site(context: Context) -> tuple[FederationConfig, site_task.SiteData]:
    config = FederationConfig.from_run_config(context.run_config)
    manifest = site_task.site_manifest_path(context.node_config, config.cohort_dir)
    return config, site_task.load_site(manifest, config.cache_dir)


def handle_site_info(message: Message, context: Context) -> Message:
    config, site = _site(context)
    site_task.check_fault(config, site.name, "site_info")
    return Message(RecordDict({"info": ConfigRecord(site_task.site_info(site))}), reply_to=message)


def _privacy(config: FederationConfig, context: Context, site: site_task.SiteData):
    from ndae.federation.privacy import SitePrivacy

    return SitePrivacy.for_site(config, context.node_config, site.name, int(site.controls.sum()))


def handle_train(message: Message, context: Context) -> Message:
    config, site = _site(context)
    settings = message.content["config"]
    round_number = int(settings["server-round"])
    site_task.check_fault(config, site.name, "train", round_number)
    from ndae.federation.privacy import site_canaries

    canaries = site_canaries(config, context.node_config, site)
    if config.privacy:  # DP-SGD; raises PrivacyBudgetExceeded (an error reply) before any step
        from ndae.federation.privacy import ledger_reply, private_train_round

        privacy = _privacy(config, context, site)
        weights, metrics, _ = private_train_round(
            site, message.content["arrays"], json.loads(settings["dae-config"]), privacy,
            round_number=round_number, rounds=config.rounds, epochs=int(settings["local-epochs"]),
            seed=int(settings["seed"]), ema_step=int(settings["ema-step"]), device=config.device,
            canaries=canaries)
        train_metrics = {k: metrics[k] for k in ("num-examples", "train-loss", "local-steps")}
        return Message(RecordDict({"arrays": weights, "metrics": MetricRecord(train_metrics),
                                   "privacy": ConfigRecord({**ledger_reply(privacy),
                                                            "noise-multiplier": metrics["noise-multiplier"]})}),
                       reply_to=message)
    weights, metrics = site_task.train_round(
        site, message.content["arrays"], json.loads(settings["dae-config"]), round_number=round_number,
        epochs=int(settings["local-epochs"]), seed=int(settings["seed"]), ema_step=int(settings["ema-step"]),
        proximal_mu=float(settings.get("proximal-mu", 0.0)), device=config.device, canaries=canaries)
    return Message(RecordDict({"arrays": weights, "metrics": MetricRecord(metrics)}), reply_to=message)


def handle_normative_stats(message: Message, context: Context) -> Message:
    config, site = _site(context)
    site_task.check_fault(config, site.name, "normative_stats")
    settings = message.content["config"]
    if config.privacy:  # clipped + Gaussian noise, accounted in the site's ledger before it leaves
        from ndae.federation.privacy import ledger_reply, private_normative_statistics

        privacy = _privacy(config, context, site)
        stats, _ = private_normative_statistics(site, message.content["dae"], json.loads(settings["dae-config"]),
                                                json.loads(settings["design"]), privacy, seed=config.seed,
                                                device=config.device)
        return Message(RecordDict({"stats": arrays_to_record(stats),
                                   "privacy": ConfigRecord(ledger_reply(privacy))}), reply_to=message)
    stats = site_task.normative_statistics(site, message.content["dae"], json.loads(settings["dae-config"]),
                                           json.loads(settings["design"]), device=config.device)
    return Message(RecordDict({"stats": arrays_to_record(stats)}), reply_to=message)


def handle_deviations(message: Message, context: Context) -> Message:
    config, site = _site(context)
    site_task.check_fault(config, site.name, "deviations")
    settings = message.content["config"]
    features = [str(f) for f in settings["features"]]
    normative = config_to_normative(message.content["normative"])
    table = site_task.patient_survival_table(site, message.content["dae"], json.loads(settings["dae-config"]),
                                             normative, features, device=config.device)
    if config.privacy and bool(settings["share-rows"]) and not _privacy(config, context, site).allow_pooled_scores:
        from ndae.federation.privacy import PooledScoresNotAllowed

        # Pooled scores are a non-DP release of the patients' rows: only with the site's consent.
        raise PooledScoresNotAllowed(
            f"site {site.name!r} refuses to share patients' deviation scores in a private run: its policy "
            f"does not allow pooled scores (node config allow-pooled-scores=true to allow; or survival-mode federated)")
    context.state[STATE_KEY] = frame_to_record(table)  # stays at the site, for the Cox rounds
    moments = site_task.covariate_moments(table, [*features, "age", "sex_female"])
    reply = {"counts": MetricRecord({"patients": int(len(table)), "events": int(table["event"].sum())}),
             "moments": arrays_to_record(moments)}
    if bool(settings["share-rows"]):
        reply["rows"] = frame_to_record(table)
    return Message(RecordDict(reply), reply_to=message)


def _table(context: Context, site_name: str):
    if STATE_KEY not in context.state:
        from ndae.errors import NdaeError

        raise NdaeError(f"site {site_name!r} has no deviation scores in this run (phase 'deviations' first)")
    table = record_to_frame(context.state[STATE_KEY])
    for column in table.columns:
        if column not in ("subject", "site"):
            table[column] = table[column].astype(float)
    return table


def _beta_and_covariates(message: Message) -> tuple[np.ndarray, list[str]]:
    """The Cox coefficients and their covariate names the server sent with a survival query."""
    beta = message.content["beta"]["beta"].numpy()
    return beta, [str(c) for c in message.content["config"]["covariates"]]


def handle_cox_terms(message: Message, context: Context) -> Message:
    config, site = _site(context)
    site_task.check_fault(config, site.name, "cox_terms")
    terms = site_task.cox_terms(_table(context, site.name), *_beta_and_covariates(message))
    return Message(RecordDict({"terms": arrays_to_record(terms)}), reply_to=message)


def handle_risk_summary(message: Message, context: Context) -> Message:
    config, site = _site(context)
    site_task.check_fault(config, site.name, "risk_summary")
    summary = site_task.risk_summary(_table(context, site.name), *_beta_and_covariates(message))
    return Message(RecordDict({"summary": arrays_to_record(summary)}), reply_to=message)


HANDLERS = {
    "query.site_info": handle_site_info,
    "train": handle_train,
    "query.normative_stats": handle_normative_stats,
    "query.deviations": handle_deviations,
    "query.cox_terms": handle_cox_terms,
    "query.risk_summary": handle_risk_summary,
}


def build_client_app():
    """The Flower ClientApp with one handler per message type."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(handle_train)
    for message_type, handler in HANDLERS.items():
        if message_type.startswith("query."):
            app.query(message_type.split(".", 1)[1])(handler)
    return app


__all__ = ["HANDLERS", "build_client_app", "ArrayRecord", "np"]
