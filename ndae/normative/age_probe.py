"""The latent's age probe from the sites' sufficient statistics: leave-one-site-out ridge of age on z_sem.

`ndae train` judges whether z_sem carries meaning by a cross-validated ridge probe of age on the
rows (`ndae.model.probe`). A federation has no rows at the server, but it has every site's
normative statistics of z_sem (sent anyway for the normative model), and they hold all a linear
probe needs: age is an exact linear combination of the design columns (intercept + age basis), so
Σage, Σage², Σage·z follow from XᵀX and XᵀY, and ΣZ, ZᵀZ are there too. The probe is therefore
computed at the server with no further message, and in a private run on the noised statistics
(post-processing; but clipped design rows no longer read back as age, so a private run's report
does not show it, `ndae.federation.server.latent_probe`):

- each site in turn is held out; on the other sites' summed statistics each z_sem dimension is
  standardised and a ridge regression fitted, its penalty chosen by generalised cross-validation
  (computable from the same sums: the hat matrix' trace is Σ λ/(λ+α) over ZᵀZ's eigenvalues);
- the held-out site's own sums give Σpred, Σpred², Σpred·age of its controls, so the pooled
  out-of-site correlation r and RMSE are exact, as if the probe had been run on the rows.

Held-out sites rather than random folds: the only split the statistics allow, and a harder one
(a site's age range differs from the others').
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ndae.normative.sufficient_stats import SufficientStats

ALPHAS = np.logspace(-2, 4, 25)  # the grid of `ndae.model.probe.ridge_probe`
MIN_CONTROLS = 20  # as ndae.model.probe.MIN_SUBJECTS: fewer, and r is noise


def _age_weights(stats: SufficientStats) -> np.ndarray:
    """c with age = X c for every design row X (intercept + age basis + sex), solved on a grid."""
    import pandas as pd

    design = stats.design
    low, high = design.age_range
    grid = np.linspace(low, high, 50)
    frame = pd.DataFrame({design.age_column: np.concatenate([grid, grid]),
                          design.sex_column: ["F"] * len(grid) + ["M"] * len(grid)})
    X = design.build(frame)
    c, *_ = np.linalg.lstsq(X, frame[design.age_column].to_numpy(float), rcond=None)
    return c


def _sums(stats: SufficientStats, c: np.ndarray) -> dict[str, Any]:
    """n, Σa, Σa², Σz, Σz·a, ZᵀZ of one site's (or a sum of sites') controls; a = age."""
    xtx, xty = np.asarray(stats.xtx, float), np.asarray(stats.xty, float)
    return {"n": float(stats.n), "a": float(xtx[0] @ c), "aa": float(c @ xtx @ c),
            "z": np.asarray(stats.sum_y, float), "za": xty.T @ c, "zz": np.asarray(stats.yty, float)}


def _fit(train: dict[str, Any]) -> tuple[float, np.ndarray, float]:
    """(b, v, alpha): pred = b + v·z, ridge on the standardised z with alpha chosen by GCV."""
    n = train["n"]
    mean_z, mean_a = train["z"] / n, train["a"] / n
    scatter = train["zz"] - n * np.outer(mean_z, mean_z)
    sd = np.sqrt(np.maximum(np.diag(scatter) / n, 1e-12))
    S = scatter / np.outer(sd, sd)  # standardised, centred ZᵀZ
    s = (train["za"] - n * mean_z * mean_a) / sd
    saa = train["aa"] - n * mean_a**2
    eigenvalues, U = np.linalg.eigh((S + S.T) / 2)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # noised (DP) sums can make S indefinite
    projected = U.T @ s
    best = None
    for alpha in ALPHAS:
        w = U @ (projected / (eigenvalues + alpha))
        rss = saa - 2 * w @ s + w @ S @ w
        df = float(np.sum(eigenvalues / (eigenvalues + alpha))) + 1.0  # + the intercept
        gcv = n * max(rss, 0.0) / max(n - df, 1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, alpha, w)
    _, alpha, w = best
    v = w / sd
    return float(mean_a - v @ mean_z), v, float(alpha)


def site_out_age_probe(stats_by_site: Mapping[str, SufficientStats]) -> dict[str, Any]:
    """Leave-one-site-out ridge probe of age on z_sem from each site's statistics: r and RMSE of the
    out-of-site predictions over all controls, the RMSE of predicting the other sites' mean age
    (the floor a probe must beat), and per held-out site its n and chosen alpha. A dict with
    `not_computed` (the reason) when fewer than two sites or MIN_CONTROLS controls are there, or a
    site sent no ZᵀZ."""
    sites = sorted(stats_by_site)
    if len(sites) < 2:
        return {"not_computed": f"a held-out-site probe needs at least two sites with controls, got {len(sites)}"}
    if any(stats_by_site[s].yty is None for s in sites):
        return {"not_computed": "a site's statistics have no z_sem cross products (yty)"}
    n_total = sum(float(stats_by_site[s].n) for s in sites)
    if n_total < MIN_CONTROLS:
        return {"not_computed": f"{n_total:.0f} controls, fewer than {MIN_CONTROLS}: r would be noise"}
    for s in sites:  # a probe of NaNs or of statistics from different latents is no probe
        st = stats_by_site[s]
        arrays = (st.xtx, st.xty, st.sum_y, st.yty)
        if not all(np.all(np.isfinite(np.asarray(a, float))) for a in arrays) or not np.isfinite(st.n):
            return {"not_computed": f"site {s}'s statistics are not finite"}
        if st.n_features != stats_by_site[sites[0]].n_features:
            return {"not_computed": f"site {s}'s statistics have {st.n_features} latent dimensions, "
                                    f"{sites[0]}'s {stats_by_site[sites[0]].n_features}"}
    c = _age_weights(stats_by_site[sites[0]])
    sums = {s: _sums(stats_by_site[s], c) for s in sites}
    totals = {"n": 0.0, "p": 0.0, "pp": 0.0, "pa": 0.0, "a": 0.0, "aa": 0.0, "floor": 0.0}
    folds = {}
    for held in sites:
        train = {k: sum(sums[s][k] for s in sites if s != held) for k in sums[held]}
        if train["n"] < 3 or sums[held]["n"] <= 0:
            continue
        b, v, alpha = _fit(train)
        h = sums[held]
        totals["n"] += h["n"]
        totals["a"] += h["a"]
        totals["aa"] += h["aa"]
        totals["p"] += h["n"] * b + v @ h["z"]
        totals["pp"] += h["n"] * b**2 + 2 * b * (v @ h["z"]) + v @ h["zz"] @ v
        totals["pa"] += b * h["a"] + v @ h["za"]
        mean_train = train["a"] / train["n"]
        totals["floor"] += h["aa"] - 2 * mean_train * h["a"] + h["n"] * mean_train**2
        folds[held] = {"n": h["n"], "alpha": alpha}
    n = totals["n"]
    if len(folds) < 2 or n < MIN_CONTROLS:
        return {"not_computed": "too few controls outside each held-out site"}
    cov = totals["pa"] / n - totals["p"] / n * totals["a"] / n
    var_p = totals["pp"] / n - (totals["p"] / n) ** 2
    var_a = totals["aa"] / n - (totals["a"] / n) ** 2
    r = cov / np.sqrt(var_p * var_a) if var_p > 1e-12 and var_a > 1e-12 else float("nan")
    rmse = np.sqrt(max(totals["aa"] - 2 * totals["pa"] + totals["pp"], 0.0) / n)
    return {"r": float(r), "rmse": float(rmse), "mean_rmse": float(np.sqrt(max(totals["floor"], 0.0) / n)),
            "n_controls": n, "held_out_sites": folds}


__all__ = ["site_out_age_probe"]
