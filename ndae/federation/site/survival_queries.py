"""The site's answers to the server's Cox queries: the likelihood terms and the risk summary at a
β the server chose, on the patients scored in this run's `deviations` phase (kept in the node
state, never sent). Every β and covariate list is checked, and every query counted against the
site's `max-cox-queries`, before anything is computed."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from ndae.federation.records import arrays_to_record, record_to_frame
from ndae.federation.site import task as site_task
from ndae.federation.site.context import FEATURES_KEY, QUERIES_KEY, STATE_KEY, site_of, site_privacy
from ndae.federation.site.policy import SitePolicy

__all__ = ["MAX_STANDARDISED_BETA", "beta_and_covariates", "handle_cox_terms", "handle_risk_summary"]


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


def beta_and_covariates(message: Message, context: Context, table, beta_key: str = "beta",
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
    config, policy, site = site_of(context)
    site_task.check_fault(config, site.name, phase)
    table = _table(context, site.name)
    beta, covariates = beta_and_covariates(message, context, table)
    _count_cox_query(context, policy, site.name)
    return config, policy, site, table, beta, covariates


def _reference_model(message: Message, context: Context, table) -> tuple[np.ndarray, list[str]] | None:
    """The optional second (reference) model of a risk summary, under the same checks as the
    first; None when the server sent none."""
    if "reference-covariates" not in message.content["config"]:
        return None
    return beta_and_covariates(message, context, table, "reference_beta", "reference-covariates")


def handle_cox_terms(message: Message, context: Context) -> Message:
    config, policy, site, table, beta, covariates = _survival_query(message, context, "cox_terms")
    terms = site_task.cox_terms(table, beta, covariates)
    reply = {}
    if config.privacy:
        from ndae.federation.site.privacy import ledger_reply, record_declared

        if not policy.public_counts:
            terms = {k: v for k, v in terms.items() if k not in ("n", "events")}
        privacy = site_privacy(config, policy, context, site)
        record_declared(privacy, "cox-terms", beta=_json_numbers(beta), covariates=covariates,
                        **{k: _json_numbers(v) for k, v in terms.items()})
        reply["privacy"] = ConfigRecord(ledger_reply(privacy))
    return Message(RecordDict({"terms": arrays_to_record(terms), **reply}), reply_to=message)


def handle_risk_summary(message: Message, context: Context) -> Message:
    config, policy, site = site_of(context)
    site_task.check_fault(config, site.name, "risk_summary")
    table = _table(context, site.name)
    beta, covariates = beta_and_covariates(message, context, table)
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
        privacy = site_privacy(config, policy, context, site)
        paired = {} if reference is None else {
            "reference_beta": _json_numbers(reference[0]), "reference_covariates": reference[1],
            "paired_sums": _json_numbers(summary["paired_sums"]), "paired_cross": _json_numbers(summary["paired_cross"])}
        record_declared(privacy, "risk-summary", beta=[float(b) for b in beta], covariates=covariates,
                        comparable=float(summary["comparable"]), concordant=float(summary["concordant"]), **paired)
        reply["privacy"] = ConfigRecord(ledger_reply(privacy))
    return Message(RecordDict({"summary": arrays_to_record(summary), **reply}), reply_to=message)
