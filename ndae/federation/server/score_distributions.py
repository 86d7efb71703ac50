"""At the server: the patients-vs-controls score distributions and the held-out controls' z
calibration of a federated run, from the sites' counts (`ndae.federation.site.score_histograms`).

Held out without a new message: with `normative_stats` every site also sends its controls'
statistics per fold (K folds by the run's seed); the sums are additive, so model k is fitted on
every site's other folds (no subtraction, the main fit untouched: it is still the sum of the
sites' whole statistics). The K models travel with `deviations`, where each site scores fold k's
controls under model k and sends counts only. The DAE itself was trained on every control: the
controls are held out of the normative fit, not of the encoder.

Bin edges come from public knowledge only: the Mahalanobis distance of d standardised residuals is
about chi(d) for an in-sample control, larger for a held-out one fitted on few controls and for a
patient, so its edges are geometric from a quarter of chi(d)'s 0.1th percentile to 16 times its
99.9th; the cosine lies in [-1, 1] but the paper's (uncentred) cosine sits close to 1, so its
edges are geometric in 1 − cosine from 2 down to 1e-7. The first and last bins are open-ended at
the site: no subject is dropped.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord

from ndae.federation.records import normative_to_config, record_to_arrays
from ndae.federation.site.score_histograms import (
    BANDS, BINS, FOLDS_KEY, HISTOGRAM_KEY, HISTOGRAM_SCORES, REPLY_KEY, fold_model_key, fold_stats_key, histogram_edges,
)

__all__ = ["FOLDS", "BINS", "collect", "deviations_request", "histogram_edges", "held_out_models", "normative_request"]

FOLDS = 5


def normative_request(held_out: bool) -> dict:
    """The normative_stats config's addition: per-fold statistics where the run asks for the
    held-out calibration (non-private runs: a private site's would be exact moments, not a DP
    release; `release_policy`)."""
    return {FOLDS_KEY: FOLDS} if held_out else {}


def held_out_models(replies: dict, feature_names: list[str], withheld: str) -> tuple[list, str]:
    """The K leave-one-fold-out models from the sites' fold statistics, or ([], why not);
    `withheld`: why the run did not ask for them (private runs)."""
    from ndae.errors import NdaeError
    from ndae.normative import NormativeModel, SufficientStats

    if withheld:
        return [], withheld
    if not replies:
        return [], "no site answered the normative statistics query"
    without = sorted(s for s, c in replies.items() if any(fold_stats_key(k) not in c for k in range(FOLDS)))
    if without:
        return [], f"site(s) {', '.join(without)} sent no per-fold statistics of their controls"
    try:
        folds = {s: [SufficientStats.from_arrays(record_to_arrays(c[fold_stats_key(k)])) for k in range(FOLDS)]
                 for s, c in replies.items()}
        models = []
        for k in range(FOLDS):
            stats = sum(part for s in sorted(folds) for j, part in enumerate(folds[s]) if j != k)
            models.append(NormativeModel.from_stats(stats, list(feature_names)))
    except (NdaeError, ValueError, np.linalg.LinAlgError) as error:
        return [], f"a leave-one-fold-out fit failed ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    return models, ""


def deviations_request(z_sem_dim: int, models: list) -> dict:
    """The deviations query's additions: the scores and edges to count on, and the fold models."""
    edges = histogram_edges(z_sem_dim)
    request = {"scores": list(HISTOGRAM_SCORES), **{f"edges-{s}": edges[s].tolist() for s in HISTOGRAM_SCORES}}
    content = {}
    if models:
        request[FOLDS_KEY] = len(models)
        content.update({fold_model_key(k): normative_to_config(m) for k, m in enumerate(models)})
    return {HISTOGRAM_KEY: ConfigRecord(request), **content}


def collect(replies: dict, z_sem_dim: int, models: list, why_not_held_out: str, private: bool) -> dict:
    """The summed counts over the sites that sent them (in site order), which sites withheld
    them, and the calibration bands; what the report draws (`ndae.reporting.score_distributions`)."""
    edges = histogram_edges(z_sem_dim)
    sums = {g: {s: np.zeros(len(edges[s]) - 1) for s in HISTOGRAM_SCORES} for g in ("control", "patient")}
    calibration = np.zeros(1 + len(BANDS))
    answered, withheld, malformed = [], [], []
    for site in sorted(replies):
        if REPLY_KEY not in replies[site]:
            withheld.append(site)
            continue
        arrays = record_to_arrays(replies[site][REPLY_KEY])
        try:
            counts = {(g, s): np.asarray(arrays[f"{g}-{s}"], float) for g in sums for s in HISTOGRAM_SCORES}
            if any(c.shape != sums[g][s].shape or not np.isfinite(c).all() or (c < 0).any()
                   for (g, s), c in counts.items()):
                raise ValueError("counts of the wrong shape or not finite")
        except (KeyError, ValueError):
            malformed.append(site)
            continue
        for (group, score), c in counts.items():
            sums[group][score] += c
        if models and "calibration" in arrays:
            calibration += np.asarray(arrays["calibration"], float).reshape(-1)[: len(calibration)]
        answered.append(site)
    result = {"edges": {s: e.tolist() for s, e in edges.items()}, "sites": answered, "withheld": withheld,
              "malformed": malformed, "private": bool(private), "controls_held_out": bool(models),
              "folds": len(models),
              "counts": {g: {s: c.tolist() for s, c in by.items()} for g, by in sums.items()}}
    if not models:
        result["calibration"] = {"not_computed": why_not_held_out}
    elif calibration[0] <= 0:
        result["calibration"] = {"not_computed": "no site sent held-out calibration counts"}
    else:
        result["calibration"] = {"values": float(calibration[0]),
                                 **{f"within_{b:g}": float(calibration[i + 1] / calibration[0])
                                    for i, b in enumerate(BANDS)}}
    return result
