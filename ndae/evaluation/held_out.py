"""Controls held out of every fit, so that some controls' normative residuals are out of sample.

The DAE and every normative model (latent, regional, voxel-wise, autoencoder) are fitted on the
same training controls; a patient's residual is out of sample, a training control's is not. A
fraction of the controls, drawn per site (seeded), is kept out of ALL of them: those controls
give the patients-vs-controls AUROC and the calibration check (their z should be N(0, 1)).
The DAE reads its controls from a manifest, so it is given `OUT/train_manifest.csv`: the
manifest without the held-out controls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError


def held_out_controls(manifest: pd.DataFrame, fraction: float, seed: int = 0) -> list[str]:
    """Subjects of the controls to hold out: round(fraction × controls) in all, shared over the
    sites in proportion to their controls (largest remainder), drawn at random within each site."""
    if not 0 <= fraction < 1:
        raise NdaeError(f"--held-out-controls must be in [0, 1), got {fraction}")
    controls = manifest[manifest["group"].astype(str) == "control"]
    total = int(round(fraction * len(controls)))
    if total == 0:
        return []
    sites = controls["site"].astype(str)
    counts = sites.value_counts().sort_index()
    quota = counts * total / len(controls)
    take = np.floor(quota).astype(int)
    remainder = (quota - take).sort_values(ascending=False, kind="stable")
    for site in remainder.index[: total - int(take.sum())]:
        take[site] += 1
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for site in counts.index:
        subjects = controls.loc[sites == site, "subject"].astype(str).to_numpy()
        chosen += sorted(rng.choice(subjects, size=int(take[site]), replace=False).tolist())
    return sorted(chosen)


def check_training_controls(manifest_path, n_controls: int, held_out: list[str], fraction: float, minimum: int) -> None:
    left = n_controls - len(held_out)
    if held_out and left < minimum:
        raise NdaeError(f"{manifest_path}: {n_controls} controls; holding out {len(held_out)} "
                        f"(--held-out-controls {fraction:g}) leaves {left}, fewer than the {minimum} the normative "
                        "models need (lower --held-out-controls, or 0 to hold out none)")


def write_training_manifest(manifest: pd.DataFrame, held_out: list[str], path: Path) -> Path:
    """The manifest without the held-out controls (image paths absolute, as read), for the DAE."""
    from ndae.data.manifest import write_manifest

    training = manifest[~manifest["subject"].astype(str).isin(set(held_out))].copy()
    write_manifest(training, path)
    return path


def calibration(z: np.ndarray) -> dict:
    """Mean, sd and the fraction of |z| > 1.96 (0.05 if calibrated) of the z-scores given (pooled)."""
    z = np.asarray(z, float).reshape(-1)
    z = z[np.isfinite(z)]
    if z.size == 0:
        return {"values": 0, "mean_z": float("nan"), "sd_z": float("nan"), "median_abs_z": float("nan"),
                "fraction_abs_z_over_1_96": float("nan")}
    # the median |z| (0.674 if N(0, 1)) stays readable where a few degenerate values blow up the mean
    return {"values": int(z.size), "mean_z": float(z.mean()), "sd_z": float(z.std(ddof=1)) if z.size > 1 else float("nan"),
            "median_abs_z": float(np.median(np.abs(z))), "fraction_abs_z_over_1_96": float(np.mean(np.abs(z) > 1.96))}


def calibration_pair(z_training: np.ndarray, z_held_out: np.ndarray, n_training: int, n_held_out: int) -> dict:
    """Calibration of the held-out controls (out of sample) beside the training controls (in sample)."""
    return {"held_out_controls": {"subjects": int(n_held_out), **calibration(z_held_out)},
            "training_controls": {"subjects": int(n_training), **calibration(z_training)}}
