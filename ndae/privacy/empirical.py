"""Empirical privacy audit of a trained DAE: a membership-inference test on denoising loss.

Members are controls a site trained on; non-members are controls of the same population it did
not train on (held out before the run). The attack score is the NEGATIVE denoising loss of the
model at fixed, seeded draws (`ndae.privacy.attack.denoising_scores`). The scores go to
`empirical_epsilon_lower_bound` (Clopper–Pearson, Bonferroni over thresholds): a
(1 − alpha)-confidence LOWER bound on the epsilon of whatever produced the model. Under DP it must
stay below the accounted epsilon; with few records the bound is weak (it cannot exceed about
log(n) for n records per group), so 0 is the common answer on tiny cohorts, private or not.

This is the simple held-out test, not one-run auditing with inserted canaries (Steinke, Nasr &
Jagielski 2023, `ndae.privacy.canary_audit`), which needs the canaries to be included at random at
training time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _stats

from ndae.errors import NdaeError
from ndae.privacy.attack import (accounted_epsilon, accounted_verdict, against_accounted, attack_auc,
                                 denoising_scores, global_model)


def empirical_epsilon_lower_bound(
    member_scores, nonmember_scores, delta: float, alpha: float = 0.05, max_thresholds: int = 64,
) -> dict:
    """A (1 − alpha)-confidence lower bound on epsilon from a membership-inference test.

    Scores: higher = "more likely a member" (for DAE losses pass −loss). For a threshold t the
    attack says "member" when score ≥ t; (ε, δ)-DP implies TPR ≤ e^ε FPR + δ, and likewise
    TNR ≤ e^ε FNR + δ, so ε ≥ log((TPR − δ)/FPR). TPR and FPR are replaced by Clopper–Pearson
    lower / upper bounds. The threshold is chosen on the same scores, so the confidence level is
    Bonferroni-corrected over all `max_thresholds` candidates (quantiles of the pooled scores),
    both attack directions and both inequalities (8 one-sided intervals per threshold): every interval holds simultaneously with probability
    ≥ 1 − alpha and the bound stays valid. Returns 0 when no threshold beats chance.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise NdaeError("membership audit needs member and non-member scores")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(nonmembers))):
        raise NdaeError("membership audit scores must be finite")
    pooled = np.concatenate([members, nonmembers])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0, 1, max_thresholds + 1)[1:]))
    per_interval = alpha / (8 * len(thresholds))
    n_members, n_nonmembers = members.size, nonmembers.size
    best = {"epsilon_lower_bound": 0.0, "threshold": None, "direction": None}
    for threshold in thresholds:
        above_members = int(np.sum(members >= threshold))
        above_nonmembers = int(np.sum(nonmembers >= threshold))
        below_members, below_nonmembers = n_members - above_members, n_nonmembers - above_nonmembers
        # (attack, rate that DP caps, its n, rate it is capped by, its n): the two attacks
        # "member iff score >= t" / "member iff score < t", each with both DP inequalities.
        for direction, hits, n_hits, errors, n_errors in (
            ("score >= t means member", above_members, n_members, above_nonmembers, n_nonmembers),
            ("score >= t means member", below_nonmembers, n_nonmembers, below_members, n_members),
            ("score < t means member", below_members, n_members, below_nonmembers, n_nonmembers),
            ("score < t means member", above_nonmembers, n_nonmembers, above_members, n_members),
        ):
            rate_lower = _clopper_pearson_lower(hits, n_hits, per_interval)
            error_upper = _clopper_pearson_upper(errors, n_errors, per_interval)
            if rate_lower - delta <= 0 or error_upper <= 0:
                continue
            bound = math.log((rate_lower - delta) / error_upper)
            if bound > best["epsilon_lower_bound"]:
                best = {
                    "epsilon_lower_bound": bound, "threshold": float(threshold), "direction": direction,
                    "rate": hits / n_hits, "rate_lower": rate_lower,
                    "error_rate": errors / n_errors, "error_rate_upper": error_upper,
                }
    best.update(n_members=n_members, n_nonmembers=n_nonmembers, delta=delta, alpha=alpha,
                thresholds_tried=int(len(thresholds)), method="Clopper-Pearson, Bonferroni over thresholds")
    return best


def _clopper_pearson_lower(k: int, n: int, a: float) -> float:
    return 0.0 if k == 0 else float(_stats.beta.ppf(a, k, n - k + 1))


def _clopper_pearson_upper(k: int, n: int, a: float) -> float:
    return 1.0 if k == n else float(_stats.beta.ppf(1 - a, k + 1, n - k))


def membership_audit(model, member_images, nonmember_images, *, delta: float, member_ages=None,
                     nonmember_ages=None, seed: int = 0, draws: int = 8, alpha: float = 0.05,
                     t_range: tuple[float, float] = (0.05, 0.6)) -> dict[str, Any]:
    """Scores both groups (`denoising_scores` at `draws` fixed draws over `t_range`) and returns
    the empirical epsilon lower bound with the attack's AUC.

    Power: even perfectly separated scores give a bound of 0 for 8 records per group, 0.25 for
    16, 1.10 for 32 and 1.86 for 64 (delta 1e-5, alpha 0.05; tests/test_privacy_empirical_power.py)."""
    members = denoising_scores(model, member_images, member_ages, seed=seed, draws=draws, t_range=t_range)
    nonmembers = denoising_scores(model, nonmember_images, nonmember_ages, seed=seed, draws=draws, t_range=t_range)
    result = empirical_epsilon_lower_bound(members, nonmembers, delta, alpha=alpha)
    result.update(score="-denoising loss (fixed seeded t and noise)", draws=draws, seed=seed, t_range=list(t_range),
                  auc=attack_auc(members, nonmembers), member_loss_mean=float(-members.mean()),
                  nonmember_loss_mean=float(-nonmembers.mean()))
    return result


def _controls(manifest: str | os.PathLike, cache_dir: str | os.PathLike | None):
    from ndae.data.dataset import load_slice_dataset

    data = load_slice_dataset(Path(manifest), Path(cache_dir) if cache_dir else None, progress=False)
    control = np.asarray(data.groups) == "control"
    if not control.any():
        raise NdaeError(f"{manifest}: no controls to audit")
    sites = sorted({str(s) for s in np.asarray(data.sites)[control]})
    return data.images[control], np.asarray(data.ages, np.float32)[control], sites


def empirical_audit_run(run_dir: str | os.PathLike, members_manifest: str | os.PathLike,
                        nonmembers_manifest: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                        weights: str = "model", seed: int = 0, draws: int = 8, alpha: float = 0.05,
                        write: bool = True) -> dict[str, Any]:
    """Membership test of RUN's global DAE on one site's training controls (members) against
    held-out controls (non-members); reported beside the site's accounted epsilon. Runs where the
    data are: at the site. Writes `privacy/empirical.json` (scores are not written)."""
    from ndae.io import atomic_write_json

    run_dir = Path(run_dir)
    model = global_model(run_dir, weights)
    member_images, member_ages, sites = _controls(members_manifest, cache_dir)
    nonmember_images, nonmember_ages, _ = _controls(nonmembers_manifest, cache_dir)
    if len(sites) != 1:
        raise NdaeError(f"{members_manifest}: the members must be one site's controls, found sites {sites}")
    site = sites[0]
    epsilon, delta = accounted_epsilon(run_dir, site)
    if delta is None:
        delta = 1.0 / (10.0 * len(member_images))
    conditioned = model.config.model.age_conditioned
    result = membership_audit(model, member_images, nonmember_images, delta=delta, seed=seed, draws=draws,
                              alpha=alpha, member_ages=member_ages if conditioned else None,
                              nonmember_ages=nonmember_ages if conditioned else None)
    against_accounted(result, epsilon)
    result.update(site=site, weights=weights, members_manifest=str(members_manifest),
                  nonmembers_manifest=str(nonmembers_manifest))
    if write:
        from ndae.io import finite_or_null

        atomic_write_json(run_dir / "privacy" / "empirical.json", finite_or_null(result))
    return result


def format_empirical(result: dict[str, Any]) -> str:
    return (f"empirical audit (site {result['site']}, {result['n_members']} members vs "
            f"{result['n_nonmembers']} held-out controls, attack AUC {result['auc']:.3f}): epsilon lower bound "
            f"{result['epsilon_lower_bound']:.3f} at delta {result['delta']:.3g} "
            f"({1 - result['alpha']:.0%} confidence) {accounted_verdict(result)}")
