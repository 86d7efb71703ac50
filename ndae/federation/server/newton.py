"""The federated Cox fit: Newton–Raphson where every likelihood evaluation is one message round.

`ndae.survival.federated_cox.FederatedCoxFitter` does the Newton steps on summed per-site terms
(gradient, Hessian, log-likelihood); this module turns each of its evaluations at a `beta` into
one `query.cox_terms` round to the sites, so no patient row leaves a site.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from ndae.federation.records import arrays_to_record, record_to_arrays
from ndae.federation.server.messaging import SiteMessenger

__all__ = ["beta_message", "federated_cox"]


def beta_message(beta: np.ndarray, covariates: list[str],
                 reference: tuple[np.ndarray, list[str]] | None = None) -> RecordDict:
    """The content of a query at coefficients `beta` (Cox terms, risk summary); a risk summary
    may carry a second, `reference` model (β, covariates) to compare on the same pairs."""
    arrays = {"beta": np.asarray(beta, dtype=np.float64)}
    config = {"covariates": list(covariates)}
    if reference is not None:
        arrays["reference_beta"] = np.asarray(reference[0], dtype=np.float64)
        config["reference-covariates"] = list(reference[1])
    return RecordDict({"beta": arrays_to_record(arrays), "config": ConfigRecord(config)})


class _SiteDropped(Exception):
    pass


def federated_cox(messenger: SiteMessenger, sites: list[str], covariates: list[str],
                  log: Callable[[str], None] = print):
    """(beta, fitted FederatedCoxFitter) over `sites`.

    A site that fails mid-fit would change the likelihood being maximised, so it is dropped
    and the fit restarts without it."""
    from ndae.survival.federated_cox import FederatedCoxFitter

    active = list(sites)
    while True:
        cache: dict[bytes, dict[str, dict]] = {}  # one round per beta serves every site's terms
        failed: list[str] = []

        def terms_for(site: str):
            def terms(beta: np.ndarray) -> dict:
                key = np.asarray(beta, dtype=np.float64).tobytes()
                if key not in cache:
                    result = messenger.query("cox_terms", beta_message(beta, covariates), sites=active)
                    if result.missing:
                        failed.extend(result.missing)
                        raise _SiteDropped()
                    cache.clear()
                    cache[key] = {s: record_to_arrays(c["terms"]) for s, c in result.replies.items()}
                return cache[key][site]
            return terms

        try:
            fitter = FederatedCoxFitter().fit({s: terms_for(s) for s in active}, covariates=covariates)
            return fitter.params_.to_numpy(), fitter
        except _SiteDropped:
            active = [s for s in active if s not in failed]
            log(f"federated Cox: restarting without {failed}")
