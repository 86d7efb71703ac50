"""Deviation scores of a subject's z_sem from the normative model (one row per subject).

- `cosine`: the NDAE paper's score, the cosine similarity between the subject's latent and the
  normative expected latent for their covariates (the healthy latent expected at their age, sex
  and site), both divided by the controls' per-dimension sd (from the model's sufficient
  statistics) so no dimension dominates by its units, but NOT centred: the shared mean stays in
  both vectors, as in the paper. Values sit close to 1; what ranks subjects is how far the
  subject's latent turns away from its expectation, relative to the size of the typical latent.
  Higher = more typical.
- `cosine_centred`: the variant this project once computed as "cosine", both vectors centred on
  the controls' mean first. Centring removes the shared mean from the expectation too, so what is
  left of it is the covariate effect alone (≈ 0 at the controls' mean age): the score asks whether
  the subject's deviation points along the age direction, and moved with |age − mean age| rather
  than with the disease (docs/dae.md). Kept, under its own name, to show that.
- per-dimension z-scores (predictive mean and variance of the model) and their summaries:
  `mean_abs_z`, `max_abs_z`, `count_abs_z_gt_2`.
- `mahalanobis`: √(eᵀ Σ⁻¹ e) of the standardised residual e = std(z_sem) − std(expected).
  Σ is the controls' residual covariance computed from the sufficient statistics (ΣYYᵀ etc.),
  so it is federatable, shrunk with the Oracle Approximating Shrinkage rule (Chen et al. 2010,
  as in sklearn.covariance.oas), which needs only the covariance and n, not the subjects'
  fourth moments that Ledoit–Wolf would need (eigenvalues are first clipped at a small floor,
  since noisy statistics can make the estimate indefinite). For subjects at a site without controls the
  site variance τ² is added to Σ's diagonal. β's estimation uncertainty is ignored here.
  Without cross-products in the statistics Σ is diagonal (σ²).

A model fitted on differentially private statistics carries the clip norms its controls were
clipped to, and every score here is computed on the subject's z_sem and design row clipped the
same way (`NormativeModel.standardise` / `design_matrix`): patients far from the controls are
compared on the scale the model was fitted on. A non-private model clips nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.normative.model import NormativeModel

SCORE_COLUMNS = ("cosine", "cosine_centred", "mean_abs_z", "max_abs_z", "count_abs_z_gt_2", "mahalanobis")


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays (0 where a row is all zero)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sum(a * b, axis=1) / norms, 0.0)


def scaled(model: NormativeModel, Y: np.ndarray) -> np.ndarray:
    """Latents divided by the controls' per-dimension sd, not centred (after the model's DP clip)."""
    return model.clip_latent(Y) / model.control_sd


def normative_cosine(model: NormativeModel, covariates: pd.DataFrame, z_sem: np.ndarray) -> np.ndarray:
    """The paper's cosine: z_sem against the normative expected z_sem for the subject's covariates,
    both divided by the controls' sd, the shared mean kept."""
    z_sem = model.check_latents(z_sem, len(covariates))  # a 1-D vector would be clipped element by element
    expected, _ = model.predict_standardised(covariates)
    return _cosine_to_normative(model, z_sem, expected)


def _cosine_to_normative(model: NormativeModel, Y: np.ndarray, expected_standardised: np.ndarray) -> np.ndarray:
    """The paper's cosine from the standardised expectation `deviation_table` already has:
    expected + mean/sd is the normative latent in sd units with its mean kept (= predict()/sd)."""
    return cosine_similarity(scaled(model, Y), expected_standardised + model.control_mean / model.control_sd)


def centred_cosine(model: NormativeModel, covariates: pd.DataFrame, z_sem: np.ndarray) -> np.ndarray:
    """The former variant: both vectors centred on the controls' mean, then scaled."""
    z_sem = model.check_latents(z_sem, len(covariates))
    expected, _ = model.predict_standardised(covariates)
    return cosine_similarity(model.standardise(z_sem), expected)


def z_summaries(z: np.ndarray) -> pd.DataFrame:
    absolute = np.abs(z)
    return pd.DataFrame(
        {
            "mean_abs_z": absolute.mean(1),
            "max_abs_z": absolute.max(1),
            "count_abs_z_gt_2": (absolute > 2).sum(1),
        }
    )


def oas_shrinkage(covariance: np.ndarray, n_samples: float) -> tuple[np.ndarray, float]:
    """Oracle Approximating Shrinkage toward tr(Σ)/d · I, from a covariance and its n."""
    d = covariance.shape[0]
    alpha = np.mean(covariance**2)
    mu = np.trace(covariance) / d
    numerator = alpha + mu**2
    denominator = (n_samples + 1) * (alpha - mu**2 / d)
    shrinkage = 1.0 if denominator == 0 else float(min(numerator / denominator, 1.0))
    shrunk = (1.0 - shrinkage) * covariance
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk, shrinkage


def residual_covariance(model: NormativeModel) -> tuple[np.ndarray, float]:
    """The shrunk residual covariance of the controls (standardised scale) and its shrinkage."""
    if model.residual_covariance is None:
        return np.diag(model.noise_variance), 0.0
    return oas_shrinkage(_positive_definite(model.residual_covariance), model.n_controls)


def _positive_definite(covariance: np.ndarray, relative_floor: float = 1e-6) -> np.ndarray:
    """Clip eigenvalues at a small floor: statistics with DP noise can give an indefinite
    residual covariance. An already positive-definite matrix is returned unchanged."""
    covariance = np.array(covariance, dtype=np.float64)
    covariance = (covariance + covariance.T) / 2
    floor = relative_floor * max(np.trace(covariance) / len(covariance), 1e-12)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    if eigenvalues.min() >= floor:
        return covariance
    return (eigenvectors * np.maximum(eigenvalues, floor)) @ eigenvectors.T


def mahalanobis(model: NormativeModel, covariates: pd.DataFrame, z_sem: np.ndarray) -> np.ndarray:
    expected, _ = model.predict_standardised(covariates)
    known = model.site_index(covariates) >= 0
    return _mahalanobis(model, model.standardise(z_sem) - expected, known)


def _mahalanobis(model: NormativeModel, residual: np.ndarray, known: np.ndarray) -> np.ndarray:
    # Imported here: a site answering a Cox query imports this module for SCORE_COLUMNS only,
    # and scipy.linalg would be a large part of that message's start.
    from scipy.linalg import cho_factor, cho_solve

    covariance, _ = residual_covariance(model)
    distance = np.empty(len(residual))
    for rows, extra in ((known, 0.0), (~known, model.site_variance)):
        if rows.any():
            matrix = covariance + np.diag(np.broadcast_to(extra, covariance.shape[:1]))
            factor = cho_factor(matrix)
            r = residual[rows]
            distance[rows] = np.sqrt(np.sum(r * cho_solve(factor, r.T).T, axis=1))
    return distance


def deviation_table(
    subjects: Sequence[str],
    covariates: pd.DataFrame,
    Y: np.ndarray,
    model: NormativeModel,
    include_z: bool = False,
) -> pd.DataFrame:
    """The `deviations.csv` contract: one row per subject, `subject` first, then the scores
    (and, with `include_z`, one `z_<feature>` column per latent dimension)."""
    subjects = [str(s) for s in subjects]
    if len(subjects) != len(covariates):
        raise NdaeError(f"{len(subjects)} subjects but {len(covariates)} covariate rows")
    if len(set(subjects)) != len(subjects):
        raise NdaeError("subject ids must be unique in the deviation table")
    Y = model.check_latents(Y, len(covariates))
    expected, variance = model.predict_standardised(covariates)  # once: one range warning
    residual = model.standardise(Y) - expected
    z = residual / np.sqrt(variance)
    table = pd.DataFrame({"subject": subjects})
    table["cosine"] = _cosine_to_normative(model, Y, expected)
    table["cosine_centred"] = cosine_similarity(model.standardise(Y), expected)
    table = pd.concat([table, z_summaries(z)], axis=1)
    table["mahalanobis"] = _mahalanobis(model, residual, model.site_index(covariates) >= 0)
    if include_z:
        z_columns = pd.DataFrame(z, columns=[f"z_{name}" for name in model.feature_names])
        table = pd.concat([table, z_columns], axis=1)
    return table
