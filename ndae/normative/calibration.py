"""How well the normative model describes held-out controls (PCNtoolkit's metrics).

Per feature, on controls the model was not fitted on:
- z mean / sd (≈ 0 / 1 when calibrated) and coverage of the central 95 % interval (≈ 0.95);
- MSLL, mean standardised log loss: mean over subjects of the model's negative log predictive
  density minus that of a trivial Gaussian with the *training* controls' mean and variance
  (PCNtoolkit `compute_MSLL`); below 0 means better than the trivial model;
- SMSE, standardised mean squared error: MSE / var(y_test) (PCNtoolkit `compute_SMSE`);
- explained variance: 1 − var(y − ŷ) / var(y) (PCNtoolkit `EXPV`); Pearson rho.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from ndae.normative.model import NormativeModel

CENTRAL_95 = norm.ppf(0.975)


def calibration_table(model: NormativeModel, covariates: pd.DataFrame, Y: np.ndarray) -> pd.DataFrame:
    """One row per feature with the metrics above."""
    Y = model.clip_latent(model.check_latents(Y, len(covariates)))  # a DP model's clip (else unchanged)
    mean, variance = model.predict(covariates)
    z = (Y - mean) / np.sqrt(variance)
    train_mean, train_variance = model.control_mean, model.control_sd**2
    log_loss = 0.5 * np.log(2 * np.pi * variance) + (Y - mean) ** 2 / (2 * variance)
    trivial = 0.5 * np.log(2 * np.pi * train_variance) + (Y - train_mean) ** 2 / (2 * train_variance)
    y_variance = Y.var(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.array(
            [np.corrcoef(Y[:, f], mean[:, f])[0, 1] for f in range(Y.shape[1])]
        ) if len(Y) > 1 else np.full(Y.shape[1], np.nan)
        return pd.DataFrame(
            {
                "feature": model.feature_names,
                "n": len(Y),
                "z_mean": z.mean(0),
                "z_sd": z.std(0, ddof=1) if len(Y) > 1 else np.nan,
                "coverage_95": (np.abs(z) <= CENTRAL_95).mean(0),
                "msll": (log_loss - trivial).mean(0),
                "smse": ((Y - mean) ** 2).mean(0) / y_variance,
                "explained_variance": 1 - (Y - mean).var(0) / y_variance,
                "rho": rho,
            }
        )


def calibration_summary(table: pd.DataFrame) -> dict[str, float]:
    """Means over features (plus the worst coverage), for a report or metrics.jsonl."""
    numeric = table.drop(columns=["feature"]).astype(float)
    summary = {f"mean_{column}": float(numeric[column].mean()) for column in numeric.columns if column != "n"}
    summary["n"] = int(table["n"].iloc[0]) if len(table) else 0
    summary["n_features"] = int(len(table))
    summary["min_coverage_95"] = float(numeric["coverage_95"].min())
    return summary
