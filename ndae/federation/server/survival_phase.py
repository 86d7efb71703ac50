"""Phase 3 of a federated run, at the server: deviations, the Cox model and what imaging adds.

Sites score their patients against the normative model. `pooled` survival has them send the
de-identified rows; `federated` keeps every row at the site and fits the Cox model by Newton
rounds of summed gradients/Hessians (`newton`). The covariates-only model (the same covariates
minus the scores) is fitted beside it, and one risk-summary query scores both: within-site
concordance, the paired sums for the difference in C, and Kaplan–Meier counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord, RecordDict

from ndae.federation.records import ema_weights_record, normative_to_config, record_to_arrays, record_to_frame
from ndae.federation.server import survival as server_survival
from ndae.federation.server.messaging import PhaseResult
from ndae.federation.server.newton import beta_message, federated_cox
from ndae.federation.server.phase_context import PhaseContext
from ndae.federation.server.release_policy import PRIOR_SWAP
from ndae.survival.federated_cox import MonotoneLikelihoodError

__all__ = ["CoxFit", "Deviations", "SurvivalPhase"]


@dataclass(frozen=True)
class CoxFit:
    """The NDAE's Cox model, what it is compared against and the patients it saw: what the
    voxel-wise comparison (`voxelwise_phase.compare_with_voxelwise`) fits beside it."""
    beta: np.ndarray
    covariates: list[str]
    reference: tuple[np.ndarray, list[str]] | None  # the covariates-only model (β, covariates), if any
    table: pd.DataFrame | None  # the pooled rows (pooled mode only)
    sites: list[str]  # the sites in the fit
    counts: dict[str, dict[str, int]]  # patients/events per site, where a site's policy declares them


@dataclass(frozen=True)
class Deviations:
    """What the sites' answers to the deviations query give the later steps."""
    counts: dict[str, dict[str, int]]  # patients/events per site, where a site's policy declares them
    sites_with_patients: list[str]
    voxelwise_failures: dict[str, str]  # why a site could not score its patients against the voxel-wise baseline
    table: pd.DataFrame | None  # the pooled rows (pooled mode only)


class SurvivalPhase:
    """Phase 3 over a `PhaseContext`. `features`: the deviation scores the Cox model takes (the run
    config's survival-features with "prior" expanded, `prior_residual_phase.survival_features`).
    Each step returns its part of the result; `run` assembles `survival/metrics.json` from them."""

    def __init__(self, context: PhaseContext, features: list[str],
                 held_out: tuple[list, str | None] = ([], "the normative phase fitted no held-out models")):
        self.context, self.features = context, list(features)
        # the leave-one-fold-out normative models and why there are none (`score_distributions`)
        self.held_out = held_out

    def run(self, ema, normative, voxelwise=None, prior=None) -> dict[str, Any]:
        """`normative`: the fitted normative model of z_sem the sites score their patients against.
        `voxelwise`: the fitted voxel-wise baseline (or None): the sites score their patients
        against it too, and its Cox model is compared with the NDAE's (`voxelwise_phase`).
        `prior`: the prior residuals' normative model (or None): the sites add their patients'
        z-scores against it (`z_prior_*`) to their scores."""
        config, features = self.context.config, self.features
        pooled = config.survival_mode == "pooled"
        out = self.context.run_dir / "survival"
        result = self._ask_for_deviations(ema, normative, voxelwise, prior, pooled)
        from ndae.federation.server import score_distributions

        score_dists = score_distributions.collect(result.replies, self._z_sem_dim(), *self.held_out,
                                                  private=self.context.releases.private)
        # a site that could not score its patients against the voxel-wise baseline says why
        voxelwise_failures = {s: str(c["voxelwise-error"]["reason"]) for s, c in result.replies.items()
                              if "voxelwise-error" in c}
        # Private sites send counts only where their policy declares them public, moments never.
        counts = {s: {k: int(v) for k, v in c["counts"].items()} for s, c in result.replies.items() if "counts" in c}
        moments = {s: record_to_arrays(c["moments"]) for s, c in result.replies.items() if "moments" in c}
        covariates = server_survival.survival_covariates(features, moments)
        sites_with_patients = [s for s in result.replies if s not in counts or counts[s]["patients"] > 0]
        prior_swap = None
        if prior is not None:
            from ndae.federation.server.prior_residual_phase import swap_test

            prior_swap = swap_test(result.replies, self.context.releases.withheld(PRIOR_SWAP))
        table = self._pooled_rows(result, sites_with_patients, voxelwise) if pooled else None
        deviations = Deviations(counts, sites_with_patients, voxelwise_failures, table)
        beta, fit = self._fit_cox(table, covariates, sites_with_patients, out)
        reference_covariates = server_survival.covariates_only(covariates, features)
        survival: dict[str, Any] = {"mode": config.survival_mode, "covariates": covariates, "counts": counts,
                                    "features": features}
        survival["score_distributions"] = score_dists
        if prior_swap is not None:
            survival["prior_swap"] = prior_swap
        survival.update(fit)
        if beta is None:  # no finite Cox model: nothing below that needs its β is computed
            survival["added_value"] = _added_value(features, reference_covariates, None, None,
                                                   "the full Cox model has no finite fit (its likelihood is "
                                                   "monotone: `cox_refused` in survival/metrics.json)")
            if voxelwise is not None:
                survival["voxelwise"] = {"not_computed": "the NDAE's Cox model has no finite fit to compare with"}
        else:
            survival.update(self._with_finite_model(deviations, beta, fit, covariates, reference_covariates, voxelwise))
        survival.update(_totals(counts, result.replies))
        from ndae.io import atomic_write_json, finite_or_null

        atomic_write_json(out / "metrics.json", finite_or_null(survival))
        line = {"phase": "survival", "mode": config.survival_mode, "sites": sorted(result.replies),
                "missing": result.missing, "c_index_within_site": survival.get("c_index_within_site"),
                "coef": survival.get("coef")}
        if "cox_refused" in survival:
            line["cox_refused"] = survival["cox_refused"]
        self.context.files.append_metrics(line)
        return survival

    def _with_finite_model(self, deviations: Deviations, beta: np.ndarray, fit: dict, covariates: list[str],
                           reference_covariates: list[str], voxelwise) -> dict[str, Any]:
        """What the full model's β gives: the covariates-only model beside it, the risk summary
        (C-index, KM, the added value), the voxel-wise comparison and, pooled, the extras."""
        config, log, table = self.context.config, self.context.log, deviations.table
        pooled, out = table is not None, self.context.run_dir / "survival"
        cox_sites = fit.get("sites_in_cox", deviations.sites_with_patients)
        # The nested covariates-only model (the full model minus the scores): what imaging adds is
        # measured against it, on the same patients and pairs.
        reference, covariates_only = (self._covariates_only_cox(table, reference_covariates, cox_sites, out)
                                      if reference_covariates else (None, None))
        ndae = CoxFit(beta, covariates, reference, table, cox_sites, deviations.counts)
        c_index, km, within_site = self._risk_summary(ndae, deviations.sites_with_patients, out)
        voxelwise_result = None
        if voxelwise is not None:
            from ndae.federation.server.voxelwise_phase import compare_with_voxelwise

            voxelwise_result = compare_with_voxelwise(self.context, voxelwise, ndae, deviations.voxelwise_failures)
        extras = server_survival.pooled_survival_extras(table, beta, covariates, out) if pooled else {}
        cross_validated = None
        if pooled and reference is not None:
            cross_validated = server_survival.cross_validated_added_value_or_reason(
                table, covariates, reference_covariates, config.seed, log)
        refused = (covariates_only or {}).get("cox_refused")
        part: dict[str, Any] = {"added_value": _added_value(
            self.features, reference_covariates, within_site, cross_validated,
            f"the covariates-only Cox model has no finite fit ({refused})" if refused else None)}
        if covariates_only is not None:
            part["covariates_only"] = covariates_only
        part["c_index_within_site"] = c_index
        part["km"] = km
        if within_site is not None:
            part["c_index_within_site_covariates_only"] = within_site["c_reference"]
        if voxelwise_result is not None:
            part["voxelwise"] = voxelwise_result
        part.update(extras)
        return part

    def _ask_for_deviations(self, ema, normative, voxelwise, prior, pooled: bool) -> PhaseResult:
        """The deviations query: the models the sites score their patients against."""
        content = RecordDict({"dae": ema_weights_record(ema), "normative": normative_to_config(normative),
                              "config": ConfigRecord({"dae-config": json.dumps(self.context.dae_config.to_dict()),
                                                      "features": self.features, "share-rows": pooled})})
        if voxelwise is not None:
            from ndae.federation.records import VOXELWISE_KEY, voxelwise_to_config

            content[VOXELWISE_KEY] = voxelwise_to_config(voxelwise)
        if prior is not None:
            from ndae.federation.records import PRIOR_KEY

            content[PRIOR_KEY] = normative_to_config(prior)
        from ndae.federation.server import score_distributions

        for key, record in score_distributions.deviations_request(self._z_sem_dim(), self.held_out[0]).items():
            content[key] = record
        return self.context.messenger.query("deviations", content)

    def _z_sem_dim(self) -> int:
        return int(self.context.dae_config.model.z_sem_dim)

    def _pooled_rows(self, result: PhaseResult, sites: list[str], voxelwise) -> pd.DataFrame:
        """Pooled mode: the de-identified rows the sites with patients sent, in one table."""
        from ndae.federation.server.voxelwise_phase import voxel_columns

        numeric = [*self.features, *(voxel_columns(voxelwise) if voxelwise is not None else [])]
        return server_survival.pooled_table([record_to_frame(result.replies[s]["rows"]) for s in sites], numeric,
                                            self.context.run_dir)

    def _fit_cox(self, table, covariates: list[str], sites: list[str], out: Path) -> tuple[np.ndarray | None, dict]:
        """The full Cox model on the pooled rows, or by federated Newton rounds: (β, its part of
        the result: coef, se and, federated, the message rounds and the sites in the fit). A
        federated fit refused for a monotone likelihood is (None, {"cox_refused": why}): no finite
        model exists for these covariates, a finding the report states, not a failed run."""
        if table is not None:
            cox = server_survival.fit_pooled_cox(table, covariates)
            server_survival.save_pooled_cox(out, cox, covariates)
            beta = cox.params_.reindex(covariates).to_numpy()
            return beta, {"coef": dict(zip(covariates, beta.tolist())),
                          "se": dict(zip(covariates, cox.standard_errors_.reindex(covariates).tolist()))}
        try:
            beta, fitter = federated_cox(self.context.messenger, sites, covariates, self.context.log)
        except MonotoneLikelihoodError as error:
            self.context.log(f"[survival] {_one_line(error)}")
            return None, {"cox_refused": _one_line(error)}
        server_survival.save_federated_cox(out, fitter, covariates)
        return beta, {"coef": dict(zip(covariates, beta.tolist())),
                      "se": dict(zip(covariates, fitter.standard_errors_.tolist())),
                      "newton_message_rounds": int(fitter.n_rounds_), "sites_in_cox": sorted(fitter.sites_)}

    def _covariates_only_cox(self, table, reference: list[str], sites: list[str],
                             out: Path) -> tuple[tuple[np.ndarray, list[str]] | None, dict[str, Any]]:
        """Fit the covariates-only Cox model (pooled rows, or one more federated Newton loop counted
        against the sites' max-cox-queries like the first): ((β, covariates), its part of the result);
        a federated fit refused for a monotone likelihood is (None, {covariates, cox_refused})."""
        folder = out / "covariates_only"
        if table is not None:
            cox = server_survival.fit_pooled_cox(table, reference)
            server_survival.save_pooled_cox(folder, cox, reference)
            beta, se = cox.params_.reindex(reference).to_numpy(), cox.standard_errors_.reindex(reference).tolist()
            part: dict[str, Any] = {"covariates": reference}
        else:
            try:
                beta, fitter = federated_cox(self.context.messenger, list(sites), reference, self.context.log)
            except MonotoneLikelihoodError as error:
                self.context.log(f"[survival] covariates-only model: {_one_line(error)}")
                return None, {"covariates": reference, "cox_refused": _one_line(error)}
            server_survival.save_federated_cox(folder, fitter, reference)
            se = fitter.standard_errors_.tolist()
            part = {"covariates": reference, "newton_message_rounds": int(fitter.n_rounds_),
                    "sites_in_cox": sorted(fitter.sites_)}
        part.update(coef=dict(zip(reference, beta.tolist())), se=dict(zip(reference, se)))
        return (beta, reference), part

    def _risk_summary(self, ndae: CoxFit, sites: list[str], out: Path) -> tuple[float, dict, dict | None]:
        """Within-site concordance and KM counts, the same aggregate query in both modes:
        (Harrell's C within site, the KM curves, the paired added value over the covariates-only
        model or None without one)."""
        summary = self.context.messenger.query("risk_summary", beta_message(ndae.beta, ndae.covariates, ndae.reference),
                                               sites=sites)
        comparable = sum(float(c["summary"]["comparable"].numpy()) for c in summary.replies.values())
        concordant = sum(float(c["summary"]["concordant"].numpy()) for c in summary.replies.values())
        c_index = concordant / comparable if comparable else float("nan")
        km_rows = np.concatenate([c["summary"]["km"].numpy().reshape(-1, 4) for c in summary.replies.values()]) \
            if summary.replies else np.zeros((0, 4))
        km = server_survival.km_from_counts(km_rows, out / "km_risk_within_site_tertiles.png", ndae.covariates)
        if ndae.reference is None:
            return c_index, km, None
        paired = {site: {key: c["summary"][key].numpy() for key in ("paired_sums", "paired_cross")}
                  for site, c in summary.replies.items()}
        return c_index, km, server_survival.within_site_added_value(paired)


def _one_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _added_value(features: list[str], reference: list[str], within_site: dict | None,
                 cross_validated: dict | None, not_computed: str | None = None) -> dict[str, Any]:
    """`added_value`: what the scores add over the covariates-only model, in-sample within site
    and (pooled mode) cross-validated; without a covariate besides the scores, or without a
    finite fit of either model (`not_computed`), why not."""
    added: dict[str, Any] = {"features": list(features), "covariates": reference}
    if not reference:
        added["not_computed"] = "no covariate besides the deviation scores varies across patients"
    elif not_computed:
        added["not_computed"] = not_computed
    if within_site is not None:
        added["within_site"] = within_site
    if cross_validated is not None:
        added["cross_validated"] = cross_validated
    return added


def _totals(counts: dict[str, dict[str, int]], replies: dict) -> dict[str, int | None]:
    """Patients and events over the sites; None when some site withheld its counts (no partial total)."""
    if len(counts) == len(replies):
        return {"patients": int(sum(c["patients"] for c in counts.values())),
                "events": int(sum(c["events"] for c in counts.values()))}
    return {"patients": None, "events": None}
