"""Phase 3 of a federated run, at the server: deviations, the Cox model and what imaging adds.

Sites score their patients against the normative model. `pooled` survival has them send the
de-identified rows; `federated` keeps every row at the site and fits the Cox model by Newton
rounds of summed gradients/Hessians (`newton`). The covariates-only model (the same covariates
minus the scores) is fitted beside it, and one risk-summary query scores both: within-site
concordance, the paired sums for the difference in C, and Kaplan–Meier counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from ndae.federation.records import ema_weights_record, normative_to_config, record_to_arrays, record_to_frame
from ndae.federation.server import survival as server_survival
from ndae.federation.server.newton import beta_message, federated_cox


class SurvivalPhase:
    """Runs with the federation's messenger, config and run folder."""

    def __init__(self, federation):
        self.config, self.messenger, self.log = federation.config, federation.messenger, federation.log
        self.run_dir, self.dae_config, self.files = federation.run_dir, federation.dae_config, federation.files
        # the run config's survival-features with "prior" expanded (`prior_residual_phase.survival_features`)
        self.features = list(getattr(federation, "survival_features", self.config.features))
        # the leave-one-fold-out normative models and why there are none (`score_distributions`)
        self.held_out = getattr(federation, "held_out", ([], "the normative phase fitted no held-out models"))

    def run(self, ema, normative, voxelwise=None, prior=None) -> dict[str, Any]:
        """`voxelwise`: the fitted voxel-wise baseline (or None): the sites score their patients
        against it too, and its Cox model is compared with the NDAE's (`voxelwise_phase`).
        `prior`: the prior residuals' normative model (or None): the sites add their patients'
        z-scores against it (`z_prior_*`) to their scores."""
        config, features = self.config, self.features
        pooled = config.survival_mode == "pooled"
        content = RecordDict({"dae": ema_weights_record(ema), "normative": normative_to_config(normative),
                              "config": ConfigRecord({"dae-config": json.dumps(self.dae_config.to_dict()),
                                                      "features": features, "share-rows": pooled})})
        if voxelwise is not None:
            from ndae.federation.records import VOXELWISE_KEY, voxelwise_to_config

            content[VOXELWISE_KEY] = voxelwise_to_config(voxelwise)
        if prior is not None:
            from ndae.federation.records import PRIOR_KEY

            content[PRIOR_KEY] = normative_to_config(prior)
        from ndae.federation.server import score_distributions

        z_sem_dim = int(self.dae_config.model.z_sem_dim)
        for key, record in score_distributions.deviations_request(z_sem_dim, self.held_out[0]).items():
            content[key] = record
        result = self.messenger.query("deviations", content)
        # a site that could not score its patients against the voxel-wise baseline says why
        self.voxelwise_failures = {s: str(c["voxelwise-error"]["reason"]) for s, c in result.replies.items()
                                   if "voxelwise-error" in c}
        # Private sites send counts only where their policy declares them public, moments never.
        counts = {s: {k: int(v) for k, v in c["counts"].items()} for s, c in result.replies.items() if "counts" in c}
        moments = {s: record_to_arrays(c["moments"]) for s, c in result.replies.items() if "moments" in c}
        covariates = server_survival.survival_covariates(features, moments)
        sites_with_patients = [s for s in result.replies if s not in counts or counts[s]["patients"] > 0]
        survival: dict[str, Any] = {"mode": config.survival_mode, "covariates": covariates, "counts": counts,
                                    "features": features}
        survival["score_distributions"] = score_distributions.collect(result.replies, z_sem_dim, *self.held_out,
                                                                      private=config.privacy)
        if prior is not None:
            from ndae.federation.server.prior_residual_phase import swap_test

            survival["prior_swap"] = swap_test(result.replies, config.privacy)
        out = self.run_dir / "survival"
        table = None  # the pooled rows (pooled mode only)
        if pooled:
            from ndae.federation.server.voxelwise_phase import voxel_columns

            numeric = [*features, *(voxel_columns(voxelwise) if voxelwise is not None else [])]
            table = server_survival.pooled_table(
                [record_to_frame(result.replies[s]["rows"]) for s in sites_with_patients], numeric, self.run_dir)
            cox = server_survival.fit_pooled_cox(table, covariates)
            server_survival.save_pooled_cox(out, cox, covariates)
            beta = cox.params_.reindex(covariates).to_numpy()
            survival["coef"] = dict(zip(covariates, beta.tolist()))
            survival["se"] = dict(zip(covariates, cox.standard_errors_.reindex(covariates).tolist()))
        else:
            beta, fitter = federated_cox(self.messenger, sites_with_patients, covariates, self.log)
            server_survival.save_federated_cox(out, fitter, covariates)
            survival["coef"] = dict(zip(covariates, beta.tolist()))
            survival["se"] = dict(zip(covariates, fitter.standard_errors_.tolist()))
            survival["newton_message_rounds"] = int(fitter.n_rounds_)
            survival["sites_in_cox"] = sorted(fitter.sites_)
        # The nested covariates-only model (the full model minus the scores): what imaging adds is
        # measured against it, on the same patients and pairs.
        reference = self._covariates_only_cox(survival, table, covariates, features,
                                              survival.get("sites_in_cox", sites_with_patients), out)
        # Within-site concordance and KM counts: the same aggregate query in both modes.
        summary = self.messenger.query("risk_summary", beta_message(beta, covariates, reference),
                                       sites=sites_with_patients)
        comparable = sum(float(c["summary"]["comparable"].numpy()) for c in summary.replies.values())
        concordant = sum(float(c["summary"]["concordant"].numpy()) for c in summary.replies.values())
        survival["c_index_within_site"] = concordant / comparable if comparable else float("nan")
        km_rows = np.concatenate([c["summary"]["km"].numpy().reshape(-1, 4) for c in summary.replies.values()]) \
            if summary.replies else np.zeros((0, 4))
        survival["km"] = server_survival.km_from_counts(km_rows, out / "km_risk_within_site_tertiles.png",
                                                    covariates)
        if reference is not None:
            paired = {site: {key: c["summary"][key].numpy() for key in ("paired_sums", "paired_cross")}
                      for site, c in summary.replies.items()}
            survival["added_value"]["within_site"] = server_survival.within_site_added_value(paired)
            survival["c_index_within_site_covariates_only"] = survival["added_value"]["within_site"]["c_reference"]
        if voxelwise is not None:
            from ndae.federation.server.voxelwise_phase import compare_with_voxelwise

            survival["voxelwise"] = compare_with_voxelwise(
                self, survival, table, beta, covariates, reference,
                survival.get("sites_in_cox", sites_with_patients), voxelwise)
        if pooled:
            survival.update(server_survival.pooled_survival_extras(table, beta, covariates, out))
            if reference is not None:
                survival["added_value"]["cross_validated"] = self._cross_validated_added_value(
                    table, covariates, reference[1])
        if len(counts) == len(result.replies):
            survival["patients"] = int(sum(c["patients"] for c in counts.values()))
            survival["events"] = int(sum(c["events"] for c in counts.values()))
        else:  # some site withheld its counts: no total is reported rather than a partial one
            survival["patients"] = survival["events"] = None
        from ndae.io import atomic_write_json, finite_or_null

        atomic_write_json(out / "metrics.json", finite_or_null(survival))
        self.files.append_metrics({"phase": "survival", "mode": config.survival_mode, "sites": sorted(result.replies),
                                   "missing": result.missing, "c_index_within_site": survival["c_index_within_site"],
                                   "coef": survival["coef"]})
        return survival

    def _covariates_only_cox(self, survival: dict, table, covariates: list[str], features: list[str],
                             sites: list[str], out: Path):
        """Fit the covariates-only Cox model (pooled rows, or one more federated Newton loop counted
        against the sites' max-cox-queries like the first); (β, covariates) or None when no
        covariate besides the scores is left."""
        reference = server_survival.covariates_only(covariates, features)
        survival["added_value"] = {"features": list(features), "covariates": reference}
        if not reference:
            survival["added_value"]["not_computed"] = "no covariate besides the deviation scores varies across patients"
            return None
        folder = out / "covariates_only"
        if table is not None:
            cox = server_survival.fit_pooled_cox(table, reference)
            server_survival.save_pooled_cox(folder, cox, reference)
            beta, se = cox.params_.reindex(reference).to_numpy(), cox.standard_errors_.reindex(reference).tolist()
            survival["covariates_only"] = {"covariates": reference}
        else:
            beta, fitter = federated_cox(self.messenger, list(sites), reference, self.log)
            server_survival.save_federated_cox(folder, fitter, reference)
            se = fitter.standard_errors_.tolist()
            survival["covariates_only"] = {"covariates": reference, "newton_message_rounds": int(fitter.n_rounds_),
                                           "sites_in_cox": sorted(fitter.sites_)}
        survival["covariates_only"].update(coef=dict(zip(reference, beta.tolist())), se=dict(zip(reference, se)))
        return beta, reference

    def _cross_validated_added_value(self, table, covariates: list[str], reference: list[str]) -> dict:
        """Pooled mode's out-of-sample estimate; a table too small to cross-validate says why."""
        from lifelines.exceptions import ConvergenceError

        from ndae.errors import NdaeError

        try:
            return server_survival.cross_validated_added_value(table, covariates, reference, seed=self.config.seed)
        except (NdaeError, ConvergenceError, np.linalg.LinAlgError) as error:
            self.log(f"[survival] cross-validated added value not computed: {error}")
            return {"not_computed": str(error).splitlines()[0][:300]}
