"""One-run privacy audit with canaries (Steinke, Nasr & Jagielski, NeurIPS 2023): the bound and
the audit of a run.

After the run the auditor scores every canary a site made (`ndae.privacy.canaries`) with the
global DAE (`ndae.privacy.attack.denoising_scores`: lower denoising loss = more likely trained
on), guesses "in" for the k best-scored and "out" for the k worst, and counts the correct
guesses. Under (ε, δ)-DP the number of correct guesses is stochastically dominated by a
Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 3.1 and Algorithm 2), so the largest ε
not rejected at level alpha is a valid lower bound on the ε of the whole training run — from ONE
training run, unlike shadow-model audits. Needs no patient data: the canaries are synthetic.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ndae.errors import NdaeError
from ndae.privacy.attack import (accounted_epsilon, accounted_verdict, against_accounted, attack_auc,
                                 denoising_scores, global_model)
from ndae.privacy.canaries import read_canary_record
from ndae.privacy.delta import DEFAULT_DELTA


def p_value_dp_audit(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] under (epsilon, delta)-DP with m canaries (Steinke et al.
    2023, Algorithm 2): the randomised-response binomial tail plus the delta term."""
    from scipy import stats

    if not 0 <= v <= r <= m:
        raise NdaeError(f"one-run audit needs 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(1.0, beta)
    # Algorithm 2's loop keeps the running maximum over i of P[v - i <= Binomial(r, q) < v] / i
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[= v-1], P[= v-2], ..., P[= 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound_one_run(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """The largest epsilon the observed (r guesses, v correct) rejects at level alpha; 0 if none."""
    if r == 0 or p_value_dp_audit(m, r, v, 0.0, delta) > alpha:
        return 0.0
    low, high = 0.0, 50.0
    if p_value_dp_audit(m, r, v, high, delta) <= alpha:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        if p_value_dp_audit(m, r, v, mid, delta) <= alpha:
            low = mid
        else:
            high = mid
    return low


def one_run_audit(scores, included, delta: float, alpha: float = 0.05,
                  guess_fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)) -> dict[str, Any]:
    """Steinke et al.'s one-run audit from canary scores (higher = more likely included).

    For each fraction f the auditor guesses "in" for the top f·m/2 scores and "out" for the bottom
    f·m/2; several fractions are tried with a Bonferroni split of alpha, so picking the best one
    keeps the (1 − alpha) confidence. Returns the bound and the guesses behind it."""
    scores = np.asarray(scores, np.float64).ravel()
    included = np.asarray(included, bool).ravel()
    m = scores.size
    if m == 0 or included.size != m:
        raise NdaeError(f"one-run audit needs one score per canary: {m} scores, {included.size} inclusion flags")
    if not np.all(np.isfinite(scores)):
        raise NdaeError("one-run audit: canary scores must be finite")
    order = np.argsort(-scores, kind="stable")
    level = alpha / len(guess_fractions)
    best: dict[str, Any] = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    tried = []
    for fraction in guess_fractions:
        k = max(1, int(round(fraction * m / 2)))
        k = min(k, m // 2)
        top, bottom = order[:k], order[m - k:]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        bound = epsilon_lower_bound_one_run(m, 2 * k, correct, delta, level)
        tried.append({"guesses": 2 * k, "correct": correct, "epsilon_lower_bound": bound})
        if bound > best["epsilon_lower_bound"] or best["guesses"] == 0:
            best = {"epsilon_lower_bound": bound, "guesses": 2 * k, "correct": correct}
    auc = attack_auc(scores[included], scores[~included]) if 0 < included.sum() < m else float("nan")
    return {**best, "canaries": m, "included": int(included.sum()), "delta": delta, "alpha": alpha,
            "tried": tried, "auc": auc,
            "method": "one-run audit (Steinke, Nasr & Jagielski 2023), Bonferroni over guess counts"}


CANARY_T_RANGE = (0.02, 0.2)  # low noise: memorised fine detail shows most there (measured, see docs/privacy.md)


def canary_audit_run(run_dir: str | os.PathLike, *, privacy_dir: str | os.PathLike | None = None,
                     weights: str = "model", seed: int = 0, draws: int = 32, alpha: float = 0.05,
                     write: bool = True) -> dict[str, Any]:
    """One-run audit (`one_run_audit`) of RUN's global DAE for every site whose canary record
    is in `privacy_dir` (default RUN/privacy, where simulated sites keep it; a deployed site passes
    its own folder). Needs no patient data: the canaries are synthetic. Writes
    `privacy/canaries_audit.json` in RUN. Each site's bound is compared with its accounted epsilon."""
    from ndae.io import atomic_write_json

    run_dir = Path(run_dir)
    folder = Path(privacy_dir) if privacy_dir else run_dir / "privacy"
    records = sorted(folder.glob("*.canaries.json"))
    if not records:
        raise NdaeError(f"{folder}: no canary records (*.canaries.json): train the run with audit-canaries > 0")
    model = global_model(run_dir, weights)
    sites, scores, included, deltas = {}, [], [], []
    for path in records:
        canaries = read_canary_record(path)
        epsilon, delta = accounted_epsilon(run_dir, canaries.site)
        delta = DEFAULT_DELTA if delta is None else delta  # a ledger without a recorded delta: the default rule
        ages = canaries.ages() if model.config.model.age_conditioned else None
        scores.append(denoising_scores(model, canaries.images(), ages, seed=seed, draws=draws, t_range=CANARY_T_RANGE))
        included.append(canaries.included())
        deltas.append(delta)
        sites[canaries.site] = against_accounted(one_run_audit(scores[-1], included[-1], delta, alpha=alpha), epsilon)
        sites[canaries.site]["site"] = canaries.site
    report = {"weights": weights, "draws": draws, "seed": seed, "t_range": list(CANARY_T_RANGE), "sites": sites}
    if len(sites) > 1:
        # Every canary is a record some site protects with at most max(epsilon_site): pooling all
        # sites' canaries audits the global model against that maximum, with more guesses.
        pooled = one_run_audit(np.concatenate(scores), np.concatenate(included), max(deltas), alpha=alpha)
        report["pooled"] = against_accounted(pooled, max(r["epsilon_accounted"] for r in sites.values()))
        report["pooled"]["site"] = "all sites"
    report["ok"] = all(r["below_accounted"] for _, r in canary_results(report))
    if write:
        from ndae.io import finite_or_null

        atomic_write_json(run_dir / "privacy" / "canaries_audit.json", finite_or_null(report))
    return report


def canary_results(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, result) for every site, then for all sites pooled when there is more than one."""
    pooled = [("all sites", report["pooled"])] if report.get("pooled") else []
    return [*report["sites"].items(), *pooled]


def format_canary_audit(report: dict[str, Any]) -> str:
    lines = [f"one-run canary audit ({report['weights']} weights, {report['draws']} fixed draws per canary):"]
    for site, r in canary_results(report):
        lines.append(
            f"  {site}: {r['correct']}/{r['guesses']} guesses right over {r['canaries']} canaries "
            f"({r['included']} trained on, AUC {r['auc']:.3f}): epsilon lower bound {r['epsilon_lower_bound']:.3f} "
            f"({1 - r['alpha']:.0%} confidence, delta {r['delta']:.3g}) {accounted_verdict(r)}")
    return "\n".join(lines)
