"""Step 4 of `ndae evaluate`: the baselines' features for every subject.

Regional normative z-scores of MUSE-style measures, a voxel-wise normative model of the MNI-grid
images summarised over the shipped population atlas (on the raw images, "voxel-wise normative z",
and on their within-brain high-pass, "voxel-wise normative z (high-pass)", so that a gain that is
only spatial filtering shows), an image autoencoder, PCA of z_sem and the
brain-age gap (`ndae.baselines`), each fitted on the training controls only (the held-out
controls, `ndae.evaluation.held_out`, are scored like patients). A baseline the data cannot
support (e.g. no label maps) is skipped with its reason, and the others go on. Each normative
baseline's z of the training and held-out controls goes into `calibration`.
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
    calibration: dict[str, dict] = field(default_factory=dict)  # normative baseline → its controls' z
    fitted_on: dict[str, list[str]] = field(default_factory=dict)  # baseline → the controls it was fitted on


def baseline_features(subjects: list[str], z_sem: np.ndarray, rows: pd.DataFrame, covariates: pd.DataFrame,
                      controls: np.ndarray, manifest_path: Path, cache_dir: Path, out: Path, options,
                      held_out: np.ndarray | None = None) -> BaselineFeatures:
    """The baselines on the subjects of `rows` (the manifest rows in the latents' order), fitted on
    the `controls` mask (the training controls); `held_out`: the held-out controls' mask (scored,
    never fitted on). `options`: the run's `EvaluationOptions`. Writes OUT/baselines/regional_measures.csv."""
    from ndae.evaluation.held_out import calibration_pair

    held_out = np.zeros(len(rows), bool) if held_out is None else np.asarray(held_out, bool)
    # the autoencoder and the brain-age model pick their controls by group: held-out controls are not theirs
    groups = rows["group"].astype(str).where(~held_out, "held-out control").reset_index(drop=True)
    training_subjects = [str(s) for s in np.asarray(subjects)[controls]]
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
        z = frame[features["regional normative z"]].to_numpy(float)
        result.calibration["regional normative z"] = calibration_pair(z[controls], z[held_out], controls.sum(), held_out.sum())
        result.fitted_on["regional normative z"] = training_subjects
    except BaselineUnavailable as error:
        skipped["regional normative z"] = str(error)
    result.timings["baseline_regional_s"] = time.perf_counter() - t0

    from ndae.baselines.voxelwise import HIGHPASS_SIGMA

    atlas = None  # read once, shared by both variants
    for name, sigma, timing in (("voxel-wise normative z", None, "baseline_voxelwise_s"),
                                ("voxel-wise normative z (high-pass)", HIGHPASS_SIGMA, "baseline_voxelwise_highpass_s")):
        t0 = time.perf_counter()
        try:
            from ndae.baselines.voxelwise import VoxelwiseNormativeBaseline, load_atlas

            def image(subject: str) -> np.ndarray:
                return load_prepared(cache_dir, subject).image

            atlas = load_atlas() if atlas is None else atlas
            voxelwise = VoxelwiseNormativeBaseline(atlas=atlas, min_controls=options.min_controls,
                                                   highpass_sigma=sigma).fit(
                covariates[controls].reset_index(drop=True), image)
            frame = voxelwise.features(covariates, image)
            frames.append(frame)
            features[name] = [c for c in frame.columns if c != "subject"]
            info[name] = {"voxels_modelled": int(len(voxelwise.voxels)), "stride": voxelwise.stride,
                          "regions": features[name]}
            if sigma is not None:
                from ndae.data.template import output_grid

                spacing = float(np.abs(output_grid().affine[0, 0]))  # 2 mm
                info[name].update(highpass_sigma_voxels=float(sigma), highpass_sigma_mm=spacing * float(sigma))
            voxel_z = {}
            for part, mask in (("training", controls), ("held_out", held_out)):
                picked = covariates[mask].reset_index(drop=True)
                voxel_z[part] = (np.concatenate([z[:, voxelwise.informative_].reshape(-1)  # as in the region means
                                                 for _, z in voxelwise.z_maps(picked, image)])
                                 if len(picked) else np.array([]))
            result.calibration[name] = calibration_pair(voxel_z["training"], voxel_z["held_out"],
                                                        controls.sum(), held_out.sum())
            result.fitted_on[name] = training_subjects
        except BaselineUnavailable as error:
            skipped[name] = str(error)
        result.timings[timing] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        from ndae.data.dataset import load_slice_dataset

        data = load_slice_dataset(manifest_path, cache_dir, progress=False)
        order = pd.Series(np.arange(len(data.subjects)), index=pd.Index(data.subjects).astype(str)).loc[subjects].to_numpy()
        frame, autoencoder = fit_autoencoder_features(
            data.images[order], data.masks[order], covariates, groups, latent_dim=options.autoencoder_latent,
            training=AutoencoderTraining(steps=options.autoencoder_steps, seed=options.seed),
            min_controls=options.min_controls)
        frames.append(frame)
        features["autoencoder"] = ["ae_reconstruction_error", "ae_latent_mahalanobis"]
        info["autoencoder"] = {"steps": options.autoencoder_steps, "latent_dim": options.autoencoder_latent,
                               "final_loss_mean_last_20": float(np.mean(autoencoder.losses_[-20:]))}
        result.fitted_on["autoencoder"] = training_subjects
    except BaselineUnavailable as error:
        skipped["autoencoder"] = str(error)
    result.timings["baseline_autoencoder_s"] = time.perf_counter() - t0

    try:
        pca = LatentPCABaseline(options.pca_components).fit(z_sem[controls])
        frame = pca.features(subjects, z_sem)
        frames.append(frame)
        features["z_sem PCA"] = [c for c in frame.columns if c != "subject"]
        info["z_sem PCA"] = {"explained_variance_ratio": pca.explained_variance_ratio_.tolist()}
        result.fitted_on["z_sem PCA"] = training_subjects
    except BaselineUnavailable as error:
        skipped["z_sem PCA"] = str(error)

    try:
        brain_age = BrainAgeBaseline(folds=options.folds, seed=options.seed)
        frame = brain_age.fit_features(subjects, z_sem, rows["age"], groups)
        frames.append(frame[["subject", "brain_age_gap"]])
        features["brain-age gap"] = ["brain_age_gap"]
        info["brain-age gap"] = {"controls_out_of_fold_mae_years": brain_age.control_mae_,
                                 "controls_out_of_fold_r": brain_age.control_r_,
                                 "bias_slope": brain_age.bias_slope_}
    except BaselineUnavailable as error:
        skipped["brain-age gap"] = str(error)
    return result
