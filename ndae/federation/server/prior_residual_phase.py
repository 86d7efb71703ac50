"""At the server: the regional normative deviations from the diffusion prior (the NDAE's image-space
score, `ndae.deviation.prior_residuals`; the sites' side is `ndae.federation.site.prior_residuals`).

Phase 2c (`fit_prior_residuals`): after the normative model of z_sem, every site sends the summable
sufficient statistics of its controls' residual region means (noised and accounted in a private
run); their sum in site order gives the pooled fit of one `NormativeModel` of the residuals (age,
sex, site; per region, so one model of both conditionings equals a model of each). It travels to
the sites in the deviations query; each z-scores its own patients (`z_prior_<region>`,
`z_prior_own_<region>`), which the Cox model may take (`survival_features`).

The prior features are a whole or nothing: if a site that sent its z_sem statistics does not send
these (its policy refuses, it fails), the run goes on without them and the report says why.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from flwr.app import ConfigRecord, RecordDict

from ndae.errors import NdaeError
from ndae.federation.config import PRIOR_FEATURE_GROUPS, is_prior_feature
from ndae.federation.records import ema_weights_record, normative_to_config, record_to_arrays
from ndae.federation.server.errors import FederationError
from ndae.federation.server.phase_context import PhaseContext

__all__ = ["fit_prior_residuals", "survival_features", "swap_test"]

FOLDER = "normative_prior"  # the residuals' normative model in the run directory


def fit_prior_residuals(context: PhaseContext, ema, normative,
                        normative_sites: list[str]) -> tuple[Any, dict[str, Any]]:
    """(the residuals' fitted normative model or None, what the report says about it).
    `normative`: the fitted normative model of z_sem; `normative_sites`: the sites whose z_sem
    statistics made it."""
    from ndae.normative import DesignSpec, NormativeModel, SufficientStats

    config = context.config
    if not config.prior_residuals:
        return None, {"not_computed": "run config prior-residuals = false"}
    started = time.time()
    design = DesignSpec()
    content = RecordDict({"dae": ema_weights_record(ema), "normative": normative_to_config(normative),
                          "config": ConfigRecord({"dae-config": json.dumps(context.dae_config.to_dict()),
                                                  "design": json.dumps(design.to_dict())})})
    try:
        result = context.messenger.query("prior_residual_stats", content, sites=normative_sites)
    except FederationError as error:
        return None, _not_computed(context.log, str(error))
    absent = {site: result.missing.get(site, "did not answer") for site in normative_sites if site not in result.replies}
    if absent:  # a feature some sites' patients cannot have: no model, the run goes on without it
        return None, _not_computed(context.log, "; ".join(f"site {s}: {why.splitlines()[0][:200]}"
                                                          for s, why in sorted(absent.items())))
    try:
        columns = _same_columns(result.replies)
        arrays = {s: record_to_arrays(c["stats"]) for s, c in result.replies.items()}
        stats = sum(SufficientStats.from_arrays(arrays[s]) for s in sorted(arrays))
        stats, warnings = context.releases.fit_input("prior_residual_stats", stats, arrays)  # noised -> fit input
        model = NormativeModel.from_stats(stats, columns)
    except (NdaeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        # a site's reply is not trusted: a garbled one costs the run the prior features, not the run
        return None, _not_computed(context.log, f"{type(error).__name__}: {error}")
    from ndae.io import atomic_save_npz

    model.save(context.run_dir / FOLDER)
    atomic_save_npz(context.run_dir / FOLDER / "sufficient_stats.npz", **stats.to_arrays())
    for line in warnings:
        context.log(f"[prior residuals] warning: {line}")
    info = {"regions": columns, "n_controls": float(stats.n), "sites": sorted(result.replies), "warnings": warnings,
            "model": FOLDER, "seconds": round(time.time() - started, 3)}
    context.files.append_metrics({"phase": "prior_residuals", "sites": info["sites"], "missing": result.missing,
                                  "n_controls": info["n_controls"], "regions": len(columns),
                                  "seconds": info["seconds"]})
    context.log(f"[prior residuals] normative model of {len(columns)} region means fitted on "
                f"{stats.n:.0f} controls from {len(result.replies)} site(s)")
    return model, info


def _not_computed(log: Callable[[str], None], why: str) -> dict[str, Any]:
    why = why.splitlines()[0][:400] if why else "unknown"
    log(f"[prior residuals] not computed: {why}")
    return {"not_computed": why}


def _same_columns(replies: dict[str, RecordDict]) -> list[str]:
    """The region columns every site sent (the atlas regions the preset's slices cut: the same at
    every site, or the sums would mix regions)."""
    columns = {site: [str(c) for c in content["columns"]["columns"]] for site, content in replies.items()}
    first = next(iter(columns.values()))
    if any(c != first for c in columns.values()) or not first:
        raise NdaeError(f"prior residual statistics: the sites sent different region columns {columns}")
    return first


def survival_features(requested: list[str], prior: dict[str, Any]) -> tuple[list[str], str]:
    """The Cox model's deviation scores: the run config's `survival-features` with "prior" /
    "prior-own" expanded to every region's z-score column; prior residual features are dropped
    (and the reason returned) when the prior model was not fitted."""
    if "not_computed" in prior:
        dropped = [f for f in requested if is_prior_feature(f)]
        kept = [f for f in requested if not is_prior_feature(f)]
        if dropped and not kept:
            raise FederationError(f"run config 'survival-features' names only prior residual features {dropped}, "
                                  f"and they were not computed: {prior['not_computed']}")
        return kept, (f"prior residual features {dropped} left out of the survival model: {prior['not_computed']}"
                      if dropped else "")
    available = ["z_" + c for c in prior["regions"]]
    expanded: list[str] = []
    for feature in requested:
        if feature in PRIOR_FEATURE_GROUPS:
            # z_prior_ also prefixes z_prior_own_: the normative group is the columns of the other kind
            group = [c for c in available if c.startswith(PRIOR_FEATURE_GROUPS[feature])
                     and (feature == "prior-own" or not c.startswith(PRIOR_FEATURE_GROUPS["prior-own"]))]
            expanded += [c for c in group if c not in expanded]
        elif is_prior_feature(feature) and feature not in available:
            raise FederationError(f"run config 'survival-features': {feature!r} is not a prior residual region of "
                                  f"this run; available: {available}")
        elif feature not in expanded:
            expanded.append(feature)
    return expanded, ""


def swap_test(replies: dict[str, RecordDict], withheld: str) -> dict[str, Any]:
    """The swap test (how far x̂₀ moves when z_sem is swapped, relative to the residual) averaged
    over the sites, weighted by their subjects; `withheld`: why the sites keep it (private runs,
    `release_policy`)."""
    if withheld:
        return {"not_computed": withheld}
    parts = {s: (float(c["prior-swap"]["relative-change"]), int(c["prior-swap"]["subjects"]))
             for s, c in replies.items() if "prior-swap" in c}
    subjects = sum(n for _, n in parts.values())
    if not subjects:
        return {"not_computed": "no site sent the swap test"}
    return {"relative_change": sum(v * n for v, n in parts.values()) / subjects, "subjects": subjects,
            "sites": sorted(parts)}
