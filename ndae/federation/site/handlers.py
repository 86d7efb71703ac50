"""The ClientApp's handlers: unpack the message, call `ndae.federation.site.task`, pack the reply.

Kept in the library (not in `client/client_app.py`) so that `InProcessGrid` and the Flower
ClientApp run exactly the same code.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ndae.federation.site import task as site_task
from ndae.federation.config import FederationConfig
from ndae.federation.site.policy import SitePolicy
from ndae.federation.records import (
    INITIAL_STATS_KEY, INITIAL_WEIGHTS_KEY, VOXELWISE_KEY, arrays_to_record, config_to_normative, frame_to_record, record_to_frame,
)

STATE_KEY = "survival-table"
QUERIES_KEY = "queries"
FEATURES_KEY = "features"


def _request(context: Context) -> tuple[FederationConfig, SitePolicy]:
    """The run config (a request) and the site's policy in force for it. Checked before any
    data is read: a request looser than the node config allows is refused, naming the key."""
    config = FederationConfig.from_run_config(context.run_config)
    return config, SitePolicy.from_node_config(context.node_config).enforce(config)


def _site(context: Context) -> tuple[FederationConfig, SitePolicy, site_task.SiteData]:
    config, policy = _request(context)
    manifest = site_task.site_manifest_path(context.node_config, config.cohort_dir)
    # The node config decides where the site writes its cache; the run config cannot (site_cache_dir).
    prepared = site_task.site_cache_dir(context.node_config, manifest, config.cache_dir)
    return config, policy, site_task.load_site(manifest, prepared_dir=prepared)


def _privacy(config: FederationConfig, policy: SitePolicy, context: Context, site: site_task.SiteData):
    from ndae.federation.site.privacy import SitePrivacy

    return SitePrivacy.for_site(config, policy, site.name, int(site.controls.sum()), site.manifest_path,
                                flower_run_id=context.run_id)


def handle_site_info(message: Message, context: Context) -> Message:
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, "site_info")
    info = site_task.site_info(site)
    if policy.withholds_counts(config.privacy):
        info.update(controls=-1, patients=-1)  # not public by this site's policy: the server is told nothing
    return Message(RecordDict({"info": ConfigRecord(info)}), reply_to=message)


def handle_train(message: Message, context: Context) -> Message:
    config, policy, site = _site(context)
    settings = message.content["config"]
    round_number = int(settings["server-round"])
    site_task.check_fault(config, site.name, "train", round_number)
    if config.privacy:  # DP-SGD; raises PrivacyBudgetExceeded (an error reply) before any step
        from ndae.federation.site.private_releases import private_train_round
        from ndae.federation.site.privacy import ledger_reply, site_canaries

        privacy = _privacy(config, policy, context, site)
        weights, metrics, _ = private_train_round(
            site, message.content["arrays"], json.loads(settings["dae-config"]), privacy,
            round_number=round_number, rounds=config.rounds, epochs=int(settings["local-epochs"]),
            ema_step=int(settings["ema-step"]), device=config.device,
            canaries=site_canaries(config, privacy, site, policy))
        # The loss of the controls is not DP: it stays here. The step count follows from the DP
        # parameters in the ledger (sample rate 1/ceil(n/B)); the number of controls is sent only
        # where the site declares counts public (else 1: FedAvg then weights sites equally).
        train_metrics = {"num-examples": metrics["num-examples"] if policy.public_counts else 1,
                         "local-steps": metrics["local-steps"]}
        return Message(RecordDict({"arrays": weights, "metrics": MetricRecord(train_metrics),
                                   "privacy": ConfigRecord({**ledger_reply(privacy),
                                                            "noise-multiplier": metrics["noise-multiplier"]})}),
                       reply_to=message)
    from ndae.federation.site.privacy import site_canaries

    weights, metrics = site_task.train_round(
        site, message.content["arrays"], json.loads(settings["dae-config"]), round_number=round_number,
        epochs=int(settings["local-epochs"]), seed=int(settings["seed"]), ema_step=int(settings["ema-step"]),
        proximal_mu=float(settings.get("proximal-mu", 0.0)), device=config.device,
        canaries=site_canaries(config, None, site, policy))
    return Message(RecordDict({"arrays": weights, "metrics": MetricRecord(metrics)}), reply_to=message)


def handle_normative_stats(message: Message, context: Context) -> Message:
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, "normative_stats")
    settings = message.content["config"]
    if config.privacy:  # clipped + Gaussian noise, accounted in the site's ledger before it leaves
        from ndae.federation.site.private_releases import private_normative_statistics
        from ndae.federation.site.privacy import ledger_reply

        privacy = _privacy(config, policy, context, site)
        stats, _ = private_normative_statistics(site, message.content["dae"], json.loads(settings["dae-config"]),
                                                json.loads(settings["design"]), privacy, device=config.device)
        return Message(RecordDict({"stats": arrays_to_record(stats),
                                   "privacy": ConfigRecord(ledger_reply(privacy))}), reply_to=message)
    reply = {}
    for weights_key, stats_key in (("dae", "stats"), (INITIAL_WEIGHTS_KEY, INITIAL_STATS_KEY)):
        if weights_key in message.content:  # the initial weights: the age probe's yardstick (non-private runs)
            stats = site_task.normative_statistics(site, message.content[weights_key], json.loads(settings["dae-config"]),
                                                   json.loads(settings["design"]), device=config.device)
            reply[stats_key] = arrays_to_record(stats)
    return Message(RecordDict(reply), reply_to=message)


def _refuse_voxelwise_in_private_run(config: FederationConfig, site_name: str) -> None:
    """Per-voxel moments and the features scored against them are not noised: no private release."""
    if config.privacy:
        from ndae.federation.site.policy import PolicyViolation

        raise PolicyViolation(f"site {site_name!r} refuses the voxel-wise baseline in a private run: its per-voxel "
                              "moments are exact sums, not a differentially private release")


def handle_voxelwise_stats(message: Message, context: Context) -> Message:
    """The controls' per-voxel sufficient statistics for the voxel-wise baseline (non-private runs)."""
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, "voxelwise_stats")
    _refuse_voxelwise_in_private_run(config, site.name)
    from ndae.federation.site.voxelwise import voxelwise_statistics

    stride = config.voxelwise_stride  # the run's request, as every site reads it; not a per-message value
    return Message(RecordDict({"stats": arrays_to_record(voxelwise_statistics(site, stride))}), reply_to=message)


def handle_deviations(message: Message, context: Context) -> Message:
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, "deviations")
    settings = message.content["config"]
    share_rows = _flag(settings, "share-rows")
    if share_rows and ("pooled" not in policy.survival_modes or not policy.pooled_scores_allowed(config.privacy)):
        # The server asks for the rows whatever the run config said: the site's policy decides.
        from ndae.federation.site.policy import PolicyViolation

        raise PolicyViolation(
            f"site {site.name!r} refuses to share patients' deviation scores: its policy does not allow pooled "
            "scores in this run (node config allow-pooled-scores / survival-modes); use survival-mode federated")
    if VOXELWISE_KEY in message.content:  # refused before any data is read
        _refuse_voxelwise_in_private_run(config, site.name)
    features = [str(f) for f in settings["features"]]
    normative = config_to_normative(message.content["normative"])
    table = site_task.patient_survival_table(site, message.content["dae"], json.loads(settings["dae-config"]),
                                             normative, features, device=config.device)
    voxel_columns: list[str] = []
    voxelwise_error = ""
    if VOXELWISE_KEY in message.content:  # the baseline's region z-scores: more columns of the same rows
        from ndae.errors import NdaeError
        from ndae.federation.records import config_to_voxelwise
        from ndae.federation.site.voxelwise import patient_voxelwise_features

        try:  # the baseline is a yardstick: if it fails here, the site still answers with its NDAE scores
            voxel = patient_voxelwise_features(site, config_to_voxelwise(message.content[VOXELWISE_KEY]))
            voxel_columns = [c for c in voxel.columns if c != "subject"]
            table = table.merge(voxel, on="subject", how="left", validate="one_to_one")
        except (NdaeError, OSError, ValueError, KeyError) as error:
            voxelwise_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    context.state[STATE_KEY] = frame_to_record(table)  # stays at the site, for the Cox rounds
    # what Cox queries may name: the run's scores (and the baseline's, when the server sent it)
    context.state[FEATURES_KEY] = ConfigRecord({"features": [*features, *voxel_columns]})
    if not config.privacy:
        moments = site_task.covariate_moments(table, [*features, "age", "sex_female"])
        reply = {"counts": MetricRecord({"patients": int(len(table)), "events": int(table["event"].sum())}),
                 "moments": arrays_to_record(moments)}
        if voxelwise_error:
            reply["voxelwise-error"] = ConfigRecord({"reason": voxelwise_error})
        if share_rows:
            reply["rows"] = frame_to_record(table)
        return Message(RecordDict(reply), reply_to=message)
    # A private run: exact covariate moments are not sent (not DP); counts only if declared public.
    from ndae.federation.site.privacy import POOLED_ROW_CONTENT, ledger_reply, pseudonymised_rows, record_declared

    privacy = _privacy(config, policy, context, site)
    reply = {}
    if policy.public_counts:
        reply["counts"] = MetricRecord({"patients": int(len(table)), "events": int(table["event"].sum())})
    if share_rows:
        rows = pseudonymised_rows(table, privacy)
        record_declared(privacy, "shared-scores", columns=list(rows.columns), content=POOLED_ROW_CONTENT)
        reply["rows"] = frame_to_record(rows)
    reply["privacy"] = ConfigRecord(ledger_reply(privacy))
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


# |β·sd| beyond this is no model (a hazard ratio of e^100 per sd; exp() overflows near 700). It keeps
# β sane, nothing more: within it a chosen β can still weight one patient heavily, which is why the
# Cox terms are a declared, non-DP release and the covariates are restricted.
MAX_STANDARDISED_BETA = 100.0


def _beta_and_covariates(message: Message, context: Context, table, beta_key: str = "beta",
                         covariates_key: str = "covariates") -> tuple[np.ndarray, list[str]]:
    """The Cox coefficients and covariate names the server sent, checked before anything is
    computed or counted: only the run's deviation scores, age and sex (never time, event or an
    id, which would make the likelihood an oracle of single rows), and a finite β bounded per
    standard deviation of the site's own covariate."""
    from ndae.errors import NdaeError

    try:
        beta = np.asarray(message.content["beta"][beta_key].numpy(), dtype=np.float64).reshape(-1)
        covariates = [str(c) for c in message.content["config"][covariates_key]]
    except (KeyError, TypeError, ValueError) as error:
        raise NdaeError(f"survival query: expected {beta_key!r} and {covariates_key!r} "
                        f"({type(error).__name__})") from None
    allowed = [*_run_features(context), "age", "sex_female"]
    bad = [c for c in covariates if c not in allowed]
    if bad or len(set(covariates)) != len(covariates) or not covariates:
        raise NdaeError(f"survival query: covariates must be distinct names among {allowed}, got {covariates}")
    if beta.shape != (len(covariates),) or not np.isfinite(beta).all():
        raise NdaeError(f"survival query: beta must be {len(covariates)} finite numbers")
    spread = table[covariates].to_numpy(float).std(axis=0) if len(table) else np.zeros(len(covariates))
    if not np.all(np.isfinite(spread)):  # a non-finite score would make the bound below pass silently
        raise NdaeError(f"survival query: covariates {[c for c, v in zip(covariates, spread) if not np.isfinite(v)]} "
                        "are not finite at this site")
    if np.any(np.abs(beta) * spread > MAX_STANDARDISED_BETA):
        raise NdaeError(f"survival query: |beta x sd| must stay within {MAX_STANDARDISED_BETA:g} for every covariate")
    return beta, covariates


def _run_features(context: Context) -> list[str]:
    return [str(f) for f in context.state[FEATURES_KEY]["features"]] if FEATURES_KEY in context.state else []


def _flag(settings, key: str) -> bool:
    """A boolean the server sends: only a real bool or 'true'/'false' (bool('false') is True)."""
    from ndae.errors import NdaeError

    value = settings[key]
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "false"):
        return str(value).strip().lower() == "true"
    raise NdaeError(f"message field {key!r} must be true or false, got {value!r}")


def _count_cox_query(context: Context, policy: SitePolicy, site_name: str, evaluations: int = 1) -> None:
    """Each Cox or risk-summary query evaluates the patients' rows at a β the server chose:
    bounded per run (the count lives in the run's node state, which no message resets)."""
    from ndae.federation.site.policy import PolicyViolation

    asked = int(context.state[QUERIES_KEY]["cox"]) if QUERIES_KEY in context.state else 0
    if asked + evaluations > policy.max_cox_queries:
        raise PolicyViolation(f"site {site_name!r} has answered {asked} Cox queries in this run, its limit "
                              f"(node config max-cox-queries = {policy.max_cox_queries})")
    context.state[QUERIES_KEY] = ConfigRecord({"cox": asked + evaluations})


def _json_numbers(values):
    """Numbers for the ledger (JSON): a line search may probe a β where the likelihood is -inf."""
    array = np.asarray(values, float)
    return np.vectorize(lambda v: float(v) if np.isfinite(v) else str(v), otypes=[object])(array).tolist()


def _survival_query(message: Message, context: Context, phase: str):
    """What both survival queries do first: the policy, the site's scored patients, the checked
    (β, covariates), and the query counted against the site's limit."""
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, phase)
    table = _table(context, site.name)
    beta, covariates = _beta_and_covariates(message, context, table)
    _count_cox_query(context, policy, site.name)
    return config, policy, site, table, beta, covariates


def _reference_model(message: Message, context: Context, table) -> tuple[np.ndarray, list[str]] | None:
    """The optional second (reference) model of a risk summary, under the same checks as the
    first; None when the server sent none."""
    if "reference-covariates" not in message.content["config"]:
        return None
    return _beta_and_covariates(message, context, table, "reference_beta", "reference-covariates")


def handle_cox_terms(message: Message, context: Context) -> Message:
    config, policy, site, table, beta, covariates = _survival_query(message, context, "cox_terms")
    terms = site_task.cox_terms(table, beta, covariates)
    reply = {}
    if config.privacy:
        from ndae.federation.site.privacy import ledger_reply, record_declared

        if not policy.public_counts:
            terms = {k: v for k, v in terms.items() if k not in ("n", "events")}
        privacy = _privacy(config, policy, context, site)
        record_declared(privacy, "cox-terms", beta=_json_numbers(beta), covariates=covariates,
                        **{k: _json_numbers(v) for k, v in terms.items()})
        reply["privacy"] = ConfigRecord(ledger_reply(privacy))
    return Message(RecordDict({"terms": arrays_to_record(terms), **reply}), reply_to=message)


def handle_risk_summary(message: Message, context: Context) -> Message:
    config, policy, site = _site(context)
    site_task.check_fault(config, site.name, "risk_summary")
    table = _table(context, site.name)
    beta, covariates = _beta_and_covariates(message, context, table)
    reference = _reference_model(message, context, table)  # both checked before anything is counted
    _count_cox_query(context, policy, site.name, 1 if reference is None else 2)  # each β evaluated counts once
    summary = site_task.risk_summary(table, beta, covariates, reference)
    reply = {}
    if config.privacy:
        # Kaplan–Meier counts per month and tertile are row-level on a small site: they stay here.
        # The concordance pair counts (with a reference model also the nine paired concordance sums)
        # are aggregates the site declares (in its ledger).
        from ndae.federation.site.privacy import ledger_reply, record_declared

        summary["km"] = np.zeros((0, 4))
        privacy = _privacy(config, policy, context, site)
        paired = {} if reference is None else {
            "reference_beta": _json_numbers(reference[0]), "reference_covariates": reference[1],
            "paired_sums": _json_numbers(summary["paired_sums"]), "paired_cross": _json_numbers(summary["paired_cross"])}
        record_declared(privacy, "risk-summary", beta=[float(b) for b in beta], covariates=covariates,
                        comparable=float(summary["comparable"]), concordant=float(summary["concordant"]), **paired)
        reply["privacy"] = ConfigRecord(ledger_reply(privacy))
    return Message(RecordDict({"summary": arrays_to_record(summary), **reply}), reply_to=message)


HANDLERS = {
    "query.site_info": handle_site_info,
    "train": handle_train,
    "query.normative_stats": handle_normative_stats,
    "query.voxelwise_stats": handle_voxelwise_stats,
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
