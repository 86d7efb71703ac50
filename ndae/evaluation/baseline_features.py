"""Step 4 of `ndae evaluate`: the baselines' features for every subject.

Regional normative z-scores of MUSE-style measures, an image autoencoder, PCA of z_sem and the
brain-age gap (`ndae.baselines`), each fitted on the controls. A baseline the data cannot
support (e.g. no label maps) is skipped with its reason, and the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndae.io import atomic_write_text


@dataclass
class BaselineFeatures:
    features: dict[str, list[str]] = field(default_factory=dict)  # baseline → its feature columns
    frames: list[pd.DataFrame] = field(default_factory=list)  # each `subject` + features, every subject
    info: dict[str, Any] = field(default_factory=dict)  # what each fitted baseline reports
    skipped: dict[str, str] = field(default_factory=dict)  # baseline → why the data cannot support it
    timings: dict[str, float] = field(default_factory=dict)


def baseline_features(subjects: list[str], z_sem: np.ndarray, rows: pd.DataFrame, covariates: pd.DataFrame,
                      controls: np.ndarray, manifest_path: Path, cache_dir: Path, out: Path, options) -> BaselineFeatures:
    """The four baselines on the subjects of `rows` (the manifest rows in the latents' order);
    `options`: the run's `EvaluationOptions`. Writes OUT/baselines/regional_measures.csv."""
    from ndae.baselines import BaselineUnavailable, BrainAgeBaseline, LatentPCABaseline, RegionalNormativeBaseline
    from ndae.baselines.autoencoder import AutoencoderTraining, fit_autoencoder_features
    from ndae.baselines.regional import measures_table
    from ndae.data.cache import load_prepared

    result = BaselineFeatures()
    features, frames, info, skipped = result.features, result.frames, result.info, result.skipped

    t0 = time.perf_counter()
    try:
        measures = measures_table(subjects, lambda s: load_prepared(cache_dir, s))
        atomic_write_text(out / "baselines" / "regional_measures.csv", measures.to_csv(index=False, lineterminator="\n"))
        regional = RegionalNormativeBaseline(min_controls=options.min_controls).fit(
            covariates[controls], measures[controls].reset_index(drop=True))
        frame = regional.features(covariates, measures)
        frames.append(frame)
        features["regional normative z"] = [c for c in frame.columns if c != "subject"]
        info["regional normative z"] = {"measures": regional.features_}
    except BaselineUnavailable as error:
        skipped["regional normative z"] = str(error)
    result.timings["baseline_regional_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        from ndae.data.dataset import load_slice_dataset

        data = load_slice_dataset(manifest_path, cache_dir, progress=False)
        order = pd.Series(np.arange(len(data.subjects)), index=pd.Index(data.subjects).astype(str)).loc[subjects].to_numpy()
        frame, autoencoder = fit_autoencoder_features(
            data.images[order], data.masks[order], covariates, rows["group"], latent_dim=options.autoencoder_latent,
            training=AutoencoderTraining(steps=options.autoencoder_steps, seed=options.seed),
            min_controls=options.min_controls)
        frames.append(frame)
        features["autoencoder"] = ["ae_reconstruction_error", "ae_latent_mahalanobis"]
        info["autoencoder"] = {"steps": options.autoencoder_steps, "latent_dim": options.autoencoder_latent,
                               "final_loss_mean_last_20": float(np.mean(autoencoder.losses_[-20:]))}
    except BaselineUnavailable as error:
        skipped["autoencoder"] = str(error)
    result.timings["baseline_autoencoder_s"] = time.perf_counter() - t0

    try:
        pca = LatentPCABaseline(options.pca_components).fit(z_sem[controls])
        frame = pca.features(subjects, z_sem)
        frames.append(frame)
        features["z_sem PCA"] = [c for c in frame.columns if c != "subject"]
        info["z_sem PCA"] = {"explained_variance_ratio": pca.explained_variance_ratio_.tolist()}
    except BaselineUnavailable as error:
        skipped["z_sem PCA"] = str(error)

    try:
        brain_age = BrainAgeBaseline(folds=options.folds, seed=options.seed)
        frame = brain_age.fit_features(subjects, z_sem, rows["age"], rows["group"])
        frames.append(frame[["subject", "brain_age_gap"]])
        features["brain-age gap"] = ["brain_age_gap"]
        info["brain-age gap"] = {"controls_out_of_fold_mae_years": brain_age.control_mae_,
                                 "controls_out_of_fold_r": brain_age.control_r_,
                                 "bias_slope": brain_age.bias_slope_}
    except BaselineUnavailable as error:
        skipped["brain-age gap"] = str(error)
    return result
