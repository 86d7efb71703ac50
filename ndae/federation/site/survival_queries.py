"""The site's answers to the server's Cox queries: the likelihood terms and the risk summary at a
β the server chose, on the patients scored in this run's `deviations` phase (kept in the node
state, never sent).

Order of the checks: what depends only on the message (covariate names from an allow-list, a
finite β of the right size) is refused first, counting nothing; then the query is counted against
`max-cox-queries` (the site's lifetime limit, kept in its ledger; a run may ask for fewer) and,
in a private run, written to the ledger with whatever the site answers, a refusal for the β bound
included: that refusal depends on the patients' spread, so it is an answer too."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from ndae.federation.records import arrays_to_record, record_to_frame
from ndae.federation.site.context import FEATURES_KEY, QUERIES_KEY, STATE_KEY, SiteRefusal
from ndae.federation.site.data import check_fault
from ndae.federation.site.policy import PolicyViolation, SitePolicy
from ndae.federation.site.releases import Gate, release_layer
from ndae.federation.site.statistics import cox_terms, risk_summary

__all__ = ["MAX_STANDARDISED_BETA", "DECLARED_COVARIATES", "beta_and_covariates", "handle_cox_terms",
           "handle_risk_summary", "is_score_column", "is_voxelwise_score"]


def _table(context: Context, site_name: str):
    if STATE_KEY not in context.state:
        raise SiteRefusal(f"site {site_name!r} has no deviation scores in this run (phase 'deviations' first)")
    table = record_to_frame(context.state[STATE_KEY])
    for column in table.columns:
        if column not in ("subject", "site"):
            table[column] = table[column].astype(float)
    return table


# |β·sd| beyond this is no model (a hazard ratio of e^100 per sd; exp() overflows near 700). It keeps
# β sane, nothing more: within it a chosen β can still weight one patient heavily, which is why the
# Cox terms are a declared, non-DP release and the covariates are restricted.
MAX_STANDARDISED_BETA = 100.0
# The covariates the site declares beside the scores (never time, event, site or an id, which
# would make the likelihood an oracle of single rows).
DECLARED_COVARIATES = ("age", "sex_female")
BETA_BOUND, NOT_FINITE = "beta-bound", "not-finite"  # the ledger's marks of a query refused on the rows


def is_voxelwise_score(name: str) -> bool:
    from ndae.baselines.voxelwise import FEATURE_PREFIX

    return name.startswith(FEATURE_PREFIX) and len(name) > len(FEATURE_PREFIX)


def is_score_column(name: str) -> bool:
    """A deviation score the site's own code computes: a z_sem score, a prior residual region
    z-score or a voxel-wise region z-score (`handlers._requested_features` checks the exact names)."""
    from ndae.deviation.scores import SCORE_COLUMNS

    return name in SCORE_COLUMNS or (name.startswith("z_prior_") and len(name) > 8) or is_voxelwise_score(name)


def _allowed_covariates(context: Context) -> list[str]:
    return [*[f for f in _run_features(context) if is_score_column(f)], *DECLARED_COVARIATES]


def _requested(message: Message, context: Context, beta_key: str, covariates_key: str) -> tuple[np.ndarray, list[str]]:
    """The coefficients and covariate names the server sent, checked on their own: names from the
    allow-list (this run's scores, the declared covariates), a finite β of the right size."""
    try:
        beta = np.asarray(message.content["beta"][beta_key].numpy(), dtype=np.float64).reshape(-1)
        covariates = [str(c) for c in message.content["config"][covariates_key]]
    except (KeyError, TypeError, ValueError) as error:
        raise SiteRefusal(f"survival query: expected {beta_key!r} and {covariates_key!r} "
                          f"({type(error).__name__})") from None
    allowed = _allowed_covariates(context)
    bad = [c for c in covariates if c not in allowed]
    if bad or len(set(covariates)) != len(covariates) or not covariates:
        raise SiteRefusal(f"survival query: covariates must be distinct names among {allowed}, "
                          f"got {[c[:80] for c in covariates[:20]]}")
    if beta.shape != (len(covariates),) or not np.isfinite(beta).all():
        raise SiteRefusal(f"survival query: beta must be {len(covariates)} finite numbers")
    return beta, covariates


def _bound_refusal(table, beta: np.ndarray, covariates: list[str]) -> tuple[str, SiteRefusal] | None:
    """The check that depends on the patients: a finite spread and |β·sd| within the bound. The
    refusal, with its mark for the ledger, or None."""
    spread = table[covariates].to_numpy(float).std(axis=0) if len(table) else np.zeros(len(covariates))
    if not np.all(np.isfinite(spread)):  # a non-finite score would make the bound below pass silently
        return NOT_FINITE, SiteRefusal(f"survival query: covariates "
                                       f"{[c for c, v in zip(covariates, spread) if not np.isfinite(v)]} are not "
                                       "finite at this site")
    if np.any(np.abs(beta) * spread > MAX_STANDARDISED_BETA):
        return BETA_BOUND, SiteRefusal(f"survival query: |beta x sd| must stay within {MAX_STANDARDISED_BETA:g} "
                                       "for every covariate")
    return None


def beta_and_covariates(message: Message, context: Context, table, beta_key: str = "beta",
                         covariates_key: str = "covariates") -> tuple[np.ndarray, list[str]]:
    """The checked (β, covariates) of a query: the message's own checks, then the checks on the
    site's rows (the handlers count and record the query between the two: `_answer`)."""
    beta, covariates = _requested(message, context, beta_key, covariates_key)
    refusal = _bound_refusal(table, beta, covariates)
    if refusal is not None:
        raise refusal[1]
    return beta, covariates


def _run_features(context: Context) -> list[str]:
    return [str(f) for f in context.state[FEATURES_KEY]["features"]] if FEATURES_KEY in context.state else []


def _count_in_run(context: Context, policy: SitePolicy, site_name: str, evaluations: int) -> None:
    """This run's count (the node state, which no message resets) against the run's limit: the
    stricter of the site's and the run config's max-cox-queries."""
    asked = int(context.state[QUERIES_KEY]["cox"]) if QUERIES_KEY in context.state else 0
    if asked + evaluations > policy.max_cox_queries:
        raise PolicyViolation(f"site {site_name!r} has answered {asked} Cox queries in this run, its limit "
                              f"(max-cox-queries = {policy.max_cox_queries})")
    context.state[QUERIES_KEY] = ConfigRecord({"cox": asked + evaluations})


def _evaluations(entry: dict) -> int:
    if entry.get("mechanism") == "cox-terms":
        return 1
    if entry.get("mechanism") == "risk-summary":
        return 2 if "reference_beta" in entry.get("details", {}) else 1
    return 0


def _count_in_ledger(entries: list[dict], lifetime: int, site_name: str, evaluations: int) -> None:
    """The site's lifetime count: every Cox query its ledger records, over all runs."""
    asked = sum(_evaluations(e) for e in entries)
    if asked + evaluations > lifetime:
        raise PolicyViolation(f"site {site_name!r} has answered {asked} Cox queries in its lifetime, its limit "
                              f"(node config max-cox-queries = {lifetime})")


def _json_numbers(values):
    """Numbers for the ledger (JSON): a line search may probe a β where the likelihood is -inf."""
    array = np.asarray(values, float)
    return np.vectorize(lambda v: float(v) if np.isfinite(v) else str(v), otypes=[object])(array).tolist()


def _first_refusal(table, models) -> tuple[str, SiteRefusal] | None:
    return next((r for r in (_bound_refusal(table, *model) for model in models) if r is not None), None)


def _answer(message: Message, gate: Gate, field: str, phase: str, mechanism: str, compute, declare):
    """What both survival queries do: check the request on its own, count it (run and lifetime),
    check the β bound on the site's rows, and where the release table declares the reply `field`
    (a private run) write the outcome (the refusal or what is sent) to the ledger before it
    leaves. `compute(table, models)` gives the reply's arrays, `declare(models, result)` the
    ledger details of them; what leaves is `gate.leaving(field, ...)` of them."""
    config, policy, site, context = gate.config, gate.policy, gate.site, gate.context
    check_fault(config, site.name, phase)
    table = _table(context, site.name)
    models = [_requested(message, context, "beta", "covariates")]
    if mechanism == "risk-summary" and "reference-covariates" in message.content["config"]:
        models.append(_requested(message, context, "reference_beta", "reference-covariates"))
    lifetime = SitePolicy.from_node_config(context.node_config).max_cox_queries
    asked = {"beta": _json_numbers(models[0][0]), "covariates": models[0][1]}
    if len(models) == 2:
        asked.update(reference_beta=_json_numbers(models[1][0]), reference_covariates=models[1][1])
    if not gate.declared(field):
        _count_in_run(context, policy, site.name, len(models))
        refusal = _first_refusal(table, models)
        if refusal is not None:
            raise refusal[1]
        return gate.leaving(field, compute(table, models))
    from ndae.federation.site.privacy import append_declared
    from ndae.privacy.ledger import ledger_lock, read_ledger

    privacy = gate.privacy()
    with ledger_lock(privacy.ledger):  # counted and written as one step: no other query slips between
        entries = read_ledger(privacy.ledger)
        _count_in_ledger(entries, lifetime, site.name, len(models))
        _count_in_run(context, policy, site.name, len(models))
        refusal = _first_refusal(table, models)
        if refusal is not None:
            append_declared(privacy, entries, mechanism, **asked, refused=refusal[0])
            raise refusal[1]
        # n and events leave only where declared public, the Kaplan–Meier counts (row-level on a
        # small site) never: the ledger holds what leaves, as the release table lets it.
        result = gate.leaving(field, compute(table, models))
        append_declared(privacy, entries, mechanism, **asked, **declare(models, result))
    return result  # the release layer attaches the ledger excerpt


def _cox_terms(table, models) -> dict:
    return cox_terms(table, *models[0])


def _risk_summary(table, models) -> dict:
    return risk_summary(table, *models[0], models[1] if len(models) == 2 else None)


def _declared_summary(models, summary) -> dict:
    paired = {} if len(models) == 1 else {"paired_sums": _json_numbers(summary["paired_sums"]),
                                          "paired_cross": _json_numbers(summary["paired_cross"])}
    return {"comparable": float(summary["comparable"]), "concordant": float(summary["concordant"]), **paired}


@release_layer("query.cox_terms")
def handle_cox_terms(message: Message, gate: Gate) -> dict:
    terms = _answer(message, gate, "terms", "cox_terms", "cox-terms", _cox_terms,
                    lambda models, terms: {k: _json_numbers(v) for k, v in terms.items()})
    return {"terms": arrays_to_record(terms)}


@release_layer("query.risk_summary")
def handle_risk_summary(message: Message, gate: Gate) -> dict:
    summary = _answer(message, gate, "summary", "risk_summary", "risk-summary", _risk_summary, _declared_summary)
    return {"summary": arrays_to_record(summary)}
