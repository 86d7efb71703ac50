"""Does z_sem carry meaning? Linear probes of the latent, judged against the untrained encoder.

A probe is cross-validated ridge regression of a per-subject target (age, ventricle area) from
z_sem. Two details decide whether it measures anything (docs/dae.md, "Checking a latent"):
each z_sem dimension is standardised (raw z_sem sits on a large shared mean with one dominant
direction, which an unstandardised probe sees alone), and the ridge penalty is chosen inside each
training fold only. The yardstick is the same encoder at the weights training started from:
random convolutional features of a brain slice already predict age (docs/dae.md), so a
trained latent carries meaning only where it beats its own initialisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_SUBJECTS = 20  # below this, 5-fold CV leaves folds of ~4 subjects: r is noise


def ridge_probe(z_sem: np.ndarray, target: np.ndarray, repeats: int = 10, folds: int = 5) -> dict[str, float]:
    """Repeated k-fold CV of standardise + RidgeCV(z_sem → target): mean (± sd over repeats) of the
    correlation r and the MAE of the out-of-fold predictions, and the MAE of predicting the
    training-fold mean (the floor a probe must beat)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z_sem, target = np.asarray(z_sem, float), np.asarray(target, float)
    rs, maes, mean_maes = [], [], []
    for repeat in range(repeats):
        prediction = np.zeros_like(target)
        mean_prediction = np.zeros_like(target)
        for train, test in KFold(folds, shuffle=True, random_state=repeat).split(z_sem):
            probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 25)))
            probe.fit(z_sem[train], target[train])
            prediction[test] = probe.predict(z_sem[test])
            mean_prediction[test] = target[train].mean()
        rs.append(np.corrcoef(prediction, target)[0, 1])
        maes.append(np.abs(prediction - target).mean())
        mean_maes.append(np.abs(mean_prediction - target).mean())
    return {"r": float(np.mean(rs)), "r_sd": float(np.std(rs)), "mae": float(np.mean(maes)),
            "mae_sd": float(np.std(maes)), "mean_mae": float(np.mean(mean_maes))}


def effective_rank(z: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred latents (1 = one direction)."""
    s = np.linalg.svd(np.asarray(z, float) - np.asarray(z, float).mean(0), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p + 1e-12)).sum()))


def age_probe_vs_init(trained, untrained, images, ages, repeats: int = 10) -> dict[str, Any] | None:
    """Age probe of the trained encoder and of the same encoder at its initial weights, on the same
    images; None when there are too few subjects (or one age) for the probe to mean anything."""
    from ndae.model.inference import encode

    ages = np.asarray(ages, float)
    if len(ages) < MIN_SUBJECTS or np.ptp(ages) == 0:
        return None
    z_trained, z_init = encode(trained, images).numpy(), encode(untrained, images).numpy()
    result = {"trained": ridge_probe(z_trained, ages, repeats), "init": ridge_probe(z_init, ages, repeats),
              "n_subjects": int(len(ages)), "z_sem_effective_rank": effective_rank(z_trained)}
    result["trained_beats_init"] = bool(result["trained"]["r"] > result["init"]["r"])
    return result
