"""Two correlated Harrell's C-indices on the same pairs, and the variance of their difference,
from per-site aggregates only.

A site scores its patients with two risks (the full model and a nested reference, e.g. the
covariates-only Cox model). For each patient i it counts, over the comparable pairs that contain
i (within the site), the concordance of each risk, a_i and b_i (ties in risk count 1/2), and the
number of comparable pairs, c_i. Summed over all patients of all sites these are twice the
concordant and comparable pair counts, so C_full = Σa / Σc and C_ref = Σb / Σc on exactly the
same pairs.

The variance is the leading (Hoeffding-projection) term of the U-statistic variance of a ratio of
pair sums, the delta method used for two correlated C-indices by Kang et al. (2015, Stat Med 34:685,
R package `compareC`): with Δ = C_full − C_ref and d_i = a_i − b_i,

    Var(Δ) ≈ Σ_sites Σ_{i in site} ((d_i − d̄_site) − Δ (c_i − c̄_site))² / (Σc / 2)²

(patients sampled within their site; pairs never cross sites). Expanding the square, a site needs
to send only the sums (Σa, Σb, Σc) and the 3 × 3 matrix of centred cross-products of (a, b, c)
over its patients: nine numbers and no row. `combine` turns the sites' aggregates into both C's,
their difference, standard errors and normal 95 % intervals; `pooled_paired_concordance` does the
same from rows (what a test or a pooled-mode server can check it against).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ndae.errors import NdaeError

__all__ = ["PairedConcordanceError", "combine", "pooled_paired_concordance", "site_aggregates",
           "subject_components"]

TIED_TOL = 1e-8  # scikit-survival's tied_tol: risks this close are a tie (concordance ½)


class PairedConcordanceError(NdaeError):
    """Inputs the paired concordance cannot use (mismatched lengths, malformed site aggregates)."""


def subject_components(time, event, risk, reference_risk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) per subject: concordance of `risk` and of `reference_risk` over the comparable
    pairs containing the subject, and the number of those pairs. Comparable as in
    scikit-survival's Harrell's C: the earlier time is an event; at a tied time an event is
    comparable only with a censoring (which counts as later)."""
    time, risk, reference_risk = (np.asarray(v, float).reshape(-1) for v in (time, risk, reference_risk))
    event = np.asarray(event, float).reshape(-1) > 0
    n = len(time)
    if not (len(event) == len(risk) == len(reference_risk) == n):
        raise PairedConcordanceError(f"paired concordance: {n} times, {len(event)} events, {len(risk)} risks, "
                                     f"{len(reference_risk)} reference risks")
    if not (np.isfinite(time).all() and np.isfinite(risk).all() and np.isfinite(reference_risk).all()):
        raise PairedConcordanceError("paired concordance: times and risks must be finite")
    # comparable[i, j]: i is the earlier event of the pair (i, j)
    earlier = (time[:, None] < time[None, :]) | ((time[:, None] == time[None, :]) & ~event[None, :])
    comparable = event[:, None] & earlier

    def concordance(r: np.ndarray) -> np.ndarray:
        tie = np.abs(r[:, None] - r[None, :]) <= TIED_TOL
        return np.where(tie, 0.5, (r[:, None] > r[None, :]).astype(float)) * comparable

    score, reference = concordance(risk), concordance(reference_risk)
    # a pair counts for both of its members
    return (score.sum(1) + score.sum(0), reference.sum(1) + reference.sum(0),
            (comparable.sum(1) + comparable.sum(0)).astype(float))


def site_aggregates(time, event, risk, reference_risk) -> dict[str, np.ndarray]:
    """What one site sends: `sums` = (Σa, Σb, Σc) and `cross` = the centred cross-products of
    (a, b, c) over its patients (3 × 3)."""
    a, b, c = subject_components(time, event, risk, reference_risk)
    components = np.stack([a, b, c], axis=1)
    if len(components) == 0:
        return {"sums": np.zeros(3), "cross": np.zeros((3, 3))}
    centred = components - components.mean(axis=0)
    return {"sums": components.sum(axis=0), "cross": centred.T @ centred}


def combine(aggregates: Iterable[Mapping[str, np.ndarray]], level: float = 0.95) -> dict:
    """Both within-site C's, their difference (model − reference) and normal CIs from the sites'
    `site_aggregates`. NaN where no pair is comparable."""
    from scipy.stats import norm

    sums, cross = np.zeros(3), np.zeros((3, 3))
    for k, site in enumerate(aggregates):
        s = np.asarray(site["sums"], float).reshape(-1)
        x = np.asarray(site["cross"], float)
        if s.shape != (3,) or x.size != 9 or not (np.isfinite(s).all() and np.isfinite(x).all()):
            raise PairedConcordanceError(f"paired concordance: site aggregate {k} is not 3 sums and a 3 x 3 matrix")
        sums, cross = sums + s, cross + x.reshape(3, 3)
    pairs = sums[2] / 2
    z = float(norm.ppf(0.5 + level / 2))
    out = {"comparable_pairs": float(pairs), "level": level, "variance": "U-statistic delta method, "
           "patients sampled within sites (Kang et al. 2015, compareC)"}
    if pairs <= 0:
        nan = float("nan")
        return {**out, "c_model": nan, "c_reference": nan, "difference": nan, "se": nan, "lower": nan, "upper": nan,
                "se_model": nan, "se_reference": nan}
    c_model, c_reference = sums[0] / sums[2], sums[1] / sums[2]

    def se(weights: np.ndarray) -> float:
        # Var of Σ w·(a, b, c) centred per site, over the squared pair count
        return float(np.sqrt(max(weights @ cross @ weights, 0.0)) / pairs)

    difference = c_model - c_reference
    se_difference = se(np.array([1.0, -1.0, -difference]))
    return {**out, "c_model": float(c_model), "c_reference": float(c_reference), "difference": float(difference),
            "se": se_difference, "lower": float(difference - z * se_difference),
            "upper": float(difference + z * se_difference),
            "se_model": se(np.array([1.0, 0.0, -c_model])), "se_reference": se(np.array([0.0, 1.0, -c_reference]))}


def pooled_paired_concordance(time, event, risk, reference_risk, strata=None, level: float = 0.95) -> dict:
    """`combine` computed from rows: pairs within each stratum (e.g. site), or all pairs."""
    time = np.asarray(time, float).reshape(-1)
    strata = np.zeros(len(time)) if strata is None else np.asarray(strata)
    if len(strata) != len(time):
        raise PairedConcordanceError(f"paired concordance: {len(strata)} strata labels for {len(time)} subjects")
    event, risk, reference_risk = (np.asarray(v).reshape(-1) for v in (event, risk, reference_risk))
    return combine([site_aggregates(time[strata == s], event[strata == s], risk[strata == s],
                                    reference_risk[strata == s]) for s in np.unique(strata)], level)
