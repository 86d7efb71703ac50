"""At the server: the voxel-wise normative baseline beside the NDAE scores (non-private runs).

Phase 2b (`fit_voxelwise`): the sites send their controls' per-voxel sufficient statistics; their
sum (in site order) gives exactly the pooled voxel-wise normative fit
(`ndae.baselines.voxelwise`), which travels back to the sites in the deviations query so that each
scores its own patients (mean voxel z per atlas region).

Phase 3b (`compare_with_voxelwise`): the Cox model on the covariates + those region z-scores,
fitted like the NDAE model (pooled rows or federated Newton rounds), and two paired comparisons on
the same pairs: the baseline against the covariates-only model, and the NDAE model against the
baseline. The report shows them beside the NDAE's own added value.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from flwr.app import ConfigRecord, RecordDict

from ndae.errors import NdaeError
from ndae.federation.records import record_to_arrays
from ndae.federation.server import survival as server_survival
from ndae.federation.server.errors import FederationError
from ndae.federation.server.newton import beta_message, federated_cox
from ndae.federation.server.phase_context import PhaseContext
from ndae.federation.server.release_policy import VOXELWISE_BASELINE

if TYPE_CHECKING:
    from ndae.federation.server.survival_phase import CoxFit

__all__ = ["compare_with_voxelwise", "fit_voxelwise", "voxel_columns"]


def fit_voxelwise(context: PhaseContext) -> tuple[Any, dict[str, Any]]:
    """(fitted baseline or None, what the report says about it)."""
    from ndae.baselines.common import BaselineUnavailable
    from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline
    from ndae.normative import SufficientStats

    config = context.config
    if not config.voxelwise_baseline:
        return None, {"not_computed": "run config voxelwise-baseline = false"}
    withheld = context.releases.withheld(VOXELWISE_BASELINE)
    if withheld:
        return None, {"not_computed": withheld}
    started = time.time()
    # The baseline is a yardstick: whatever goes wrong with it (too few sites answer, a malformed
    # reply, too few controls) is reported, and the NDAE run goes on without it.
    try:
        result = context.messenger.query("voxelwise_stats", RecordDict({"config": ConfigRecord(
            {"stride": int(config.voxelwise_stride)})}))
        if not result.replies:
            return None, {"not_computed": "no site sent voxel-wise statistics"}
        stats = sum(SufficientStats.from_arrays(record_to_arrays(result.replies[s]["stats"]))
                    for s in sorted(result.replies))
        baseline = VoxelwiseNormativeBaseline(stride=config.voxelwise_stride).fit_stats(stats)
    except (BaselineUnavailable, NdaeError, FederationError, KeyError, ValueError) as error:
        why = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        context.log(f"[voxel-wise baseline] not computed: {why}")
        return None, {"not_computed": why}
    info = {"voxels_modelled": int(len(baseline.voxels)), "stride": int(config.voxelwise_stride),
            "n_controls": float(stats.n), "sites": sorted(result.replies), "regions": voxel_columns(baseline)}
    context.files.append_metrics({"phase": "voxelwise", "sites": sorted(result.replies), "missing": result.missing,
                                  "n_controls": float(stats.n), "voxels": info["voxels_modelled"],
                                  "seconds": round(time.time() - started, 3)})
    context.log(f"[voxel-wise baseline] {info['voxels_modelled']} voxels fitted on {stats.n:.0f} controls "
                f"from {len(result.replies)} site(s)")
    return baseline, info


def voxel_columns(baseline, regions: list[str] | None = None) -> list[str]:
    """The region z-score columns the sites add to their table; with `regions` (the run config's
    voxelwise-regions; [] = every named region) those in the Cox model: never `whole_brain`, which
    is nearly the voxel-weighted mean of the others (collinear in an unpenalised Cox model;
    `ndae evaluate` fits all with an L2 penalty instead)."""
    from ndae.baselines.voxelwise import FEATURE_PREFIX

    if regions is None:
        return [FEATURE_PREFIX + name for name in baseline.summaries]
    return [FEATURE_PREFIX + name for name in baseline.summaries
            if name != "whole_brain" and (not regions or name in regions)]


# An unpenalised Cox model needs events to spare: below this many events per covariate the fit
# runs into separation (coefficients to infinity, which the sites' bound on beta then refuses).
# Below ~5 events per variable unpenalised Cox estimates lose their coverage (Vittinghoff &
# McCulloch 2007); the demo (about 200 events, 11 covariates) has 18.
MIN_EVENTS_PER_COVARIATE = 5


def compare_with_voxelwise(context: PhaseContext, baseline, ndae: CoxFit,
                           failures: dict[str, str]) -> dict[str, Any]:
    """The baseline's Cox model and its paired comparisons (`survival["voxelwise"]`), on the
    patients of the NDAE's Cox fit `ndae`. `failures`: site -> why it could not score its
    patients against the baseline (from its deviations reply)."""
    features = voxel_columns(baseline, context.config.voxelwise_region_names)
    reference_covariates = ndae.reference[1] if ndae.reference is not None else []
    voxel_covariates = [*reference_covariates, *features]
    out = context.run_dir / "survival" / "voxelwise"
    result: dict[str, Any] = {"covariates": voxel_covariates, "features": features}
    unscored = {site: why for site, why in failures.items() if site in ndae.sites}
    if unscored:
        result["not_computed"] = "site(s) could not score their patients: " + "; ".join(
            f"{site}: {why}" for site, why in sorted(unscored.items()))
        return result
    events = _events(ndae.counts, ndae.sites)
    if events is not None and events < MIN_EVENTS_PER_COVARIATE * len(voxel_covariates):
        result["not_computed"] = (f"{events} events for {len(voxel_covariates)} covariates: an unpenalised Cox model "
                                  f"needs at least {MIN_EVENTS_PER_COVARIATE} events per covariate (fewer regions: "
                                  "run config voxelwise-regions)")
        return result
    from lifelines.exceptions import ConvergenceError

    try:
        return _fit_and_compare(context, result, ndae, out)
    except (FederationError, NdaeError, ConvergenceError, np.linalg.LinAlgError) as error:
        # e.g. a site refused a diverging beta, collinear regions: the NDAE results stand
        result["not_computed"] = f"the Cox model on the region z-scores did not fit: {str(error).splitlines()[0][:200]}"
        context.log(f"[voxel-wise baseline] {result['not_computed']}")
        return result


def _events(counts: dict[str, dict[str, int]], sites: list[str]) -> int | None:
    """Events at the sites in the Cox fit (None when one of them withheld its counts)."""
    if not all(site in counts for site in sites):
        return None
    return int(sum(counts[site]["events"] for site in sites))


def _fit_and_compare(context: PhaseContext, result: dict, ndae: CoxFit, out) -> dict[str, Any]:
    table, reference, sites = ndae.table, ndae.reference, ndae.sites
    voxel_covariates = result["covariates"]
    reference_covariates = reference[1] if reference is not None else []
    if table is not None:
        cox = server_survival.fit_pooled_cox(table, voxel_covariates)
        server_survival.save_pooled_cox(out, cox, voxel_covariates)
        voxel_beta = cox.params_.reindex(voxel_covariates).to_numpy()
        se = cox.standard_errors_.reindex(voxel_covariates).tolist()
    else:
        voxel_beta, fitter = federated_cox(context.messenger, list(sites), voxel_covariates, context.log)
        server_survival.save_federated_cox(out, fitter, voxel_covariates)
        se = fitter.standard_errors_.tolist()
        result["newton_message_rounds"] = int(fitter.n_rounds_)
        sites = sorted(fitter.sites_)  # a site dropped during the fit is not asked to compare
    result["coef"] = dict(zip(voxel_covariates, voxel_beta.tolist()))
    result["se"] = dict(zip(voxel_covariates, se))
    # Paired, on the same within-site pairs: baseline vs covariates only, NDAE vs baseline.
    comparisons = {"vs_covariates": ((voxel_beta, voxel_covariates), reference),
                   "ndae_vs_voxelwise": ((ndae.beta, ndae.covariates), (voxel_beta, voxel_covariates))}
    result["within_site"] = {}
    for name, (model, against) in comparisons.items():
        if against is None:
            result["within_site"][name] = {"not_computed": "no covariate besides the scores to compare against"}
            continue
        answers = context.messenger.query("risk_summary", beta_message(model[0], model[1], against), sites=sites)
        if not answers.replies:
            raise FederationError("voxel-wise comparison: no site answered the risk summary")
        paired = {s: {k: c["summary"][k].numpy() for k in ("paired_sums", "paired_cross")}
                  for s, c in answers.replies.items()}
        result["within_site"][name] = server_survival.within_site_added_value(paired)
    if table is not None:
        def cross_validated(covariates: list[str], against: list[str]) -> dict[str, Any]:
            return server_survival.cross_validated_added_value_or_reason(table, covariates, against,
                                                                         context.config.seed, context.log)

        result["cross_validated"] = {}
        if reference is not None:
            result["cross_validated"]["vs_covariates"] = cross_validated(voxel_covariates, reference_covariates)
        result["cross_validated"]["ndae_vs_voxelwise"] = cross_validated(ndae.covariates, voxel_covariates)
    return result
