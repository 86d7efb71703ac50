"""The normative model's calibration on held-out controls, per run's DAE: K-fold over the controls
(stratified by site), the normative model fitted on the training folds and the held-out controls
z-scored; `summarise_calibration` gives the mean ± sd [95 % t-interval] over cohort seeds the
report prints."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.modes.runs import site_manifests
from ndae.evaluation.paired import t_interval

# the per-seed numbers summarised over cohort seeds (mean, sd, 95 % t-interval)
SUMMARISED = ("z_mean", "z_sd", "coverage_95", "msll", "d2_mean_over_d", "d2_within_chi2_95")


def calibration(run_dir: Path, cohort: Path, cache_dir: str, folds: int, seed: int) -> dict:
    """K-fold over the controls (stratified by site): normative model fitted on the training
    folds, held-out controls z-scored; pooled over all held-out controls and latent dimensions.
    `held_out_scores`: every control's deviation scores from the fold that held it out (the AUROC
    of patients vs controls the normative model did not see; the DAE did see them)."""
    from scipy.stats import chi2
    from sklearn.model_selection import StratifiedKFold

    from ndae.deviation.scores import deviation_table, mahalanobis
    from ndae.federation.site.data import load_site
    from ndae.federation.site.statistics import covariates
    from ndae.model import encode, load_checkpoint
    from ndae.normative import NormativeModel
    from ndae.normative.calibration import calibration_table

    model = load_checkpoint(run_dir / "dae" / "checkpoint.pt").ema.model
    frames, latents = [], []
    for manifest in site_manifests(cohort):
        site = load_site(manifest, cache_dir)
        rows = site.controls
        frames.append(covariates(site, rows))
        latents.append(encode(model, site.data.images[rows]).numpy().astype(np.float64))
    frame, z_sem = pd.concat(frames, ignore_index=True), np.concatenate(latents)
    d = z_sem.shape[1]
    z = np.full_like(z_sem, np.nan)
    d2 = np.full(len(z_sem), np.nan)
    msll = []
    held_scores = []  # each held-out control's deviation scores, from a normative model that did not see it
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(z_sem, frame["site"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normative = NormativeModel().fit(frame.iloc[train].reset_index(drop=True), z_sem[train])
            held = frame.iloc[test].reset_index(drop=True)
            z[test] = normative.z_scores(held, z_sem[test])
            d2[test] = mahalanobis(normative, held, z_sem[test]) ** 2
            msll.append(float(calibration_table(normative, held, z_sem[test])["msll"].mean()))
            held_scores.append(deviation_table(held["subject"], held, z_sem[test], normative))
    coverage_per_dim = (np.abs(z) < 1.96).mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = NormativeModel().fit(frame, z_sem)
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(full.residual_covariance), 0, None))[::-1]
    rank95 = int(np.searchsorted(np.cumsum(eigenvalues) / eigenvalues.sum(), 0.95) + 1)
    return {"rank95": rank95, "controls": int(len(z_sem)), "dims": int(d), "z_mean": float(z.mean()), "z_sd": float(z.std(ddof=1)),
            "coverage_95": float((np.abs(z) < 1.96).mean()), "coverage_min_dim": float(coverage_per_dim.min()),
            "coverage_max_dim": float(coverage_per_dim.max()), "d2_mean_over_d": float(d2.mean() / d),
            "d2_within_chi2_95": float((d2 <= chi2.ppf(0.95, d)).mean()), "msll": float(np.mean(msll)),
            "held_out_scores": pd.concat(held_scores, ignore_index=True)}




def summarise_calibration(rows: pd.DataFrame) -> list[dict]:
    """Per DAE source: each SUMMARISED metric as {mean, sd, low, high} over cohort seeds, the range of
    the per-dimension coverage, the controls, the latent dimension and the per-seed rank95."""
    out = []
    for source, group in rows.groupby("dae", sort=False):
        entry = {"dae": source, "controls": sorted(int(c) for c in set(group["controls"])), "dims": int(group["dims"].iloc[0]),
                 "coverage_min_dim": float(group["coverage_min_dim"].min()),
                 "coverage_max_dim": float(group["coverage_max_dim"].max()),
                 "rank95": [int(r) for r in group["rank95"]]}
        for metric in SUMMARISED:
            entry[metric] = dict(zip(("mean", "sd", "low", "high"), t_interval(group[metric].to_numpy(float))))
        out.append(entry)
    return out
