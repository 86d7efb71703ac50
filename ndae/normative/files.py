"""File-level steps behind `ndae normative fit` and `ndae deviations`.

latents.npz contract: arrays `subject` (str, n), `z_sem` (n × d) and `x_T` (not needed here).
The manifest gives each subject's `site, age, sex, group`; the normative model sees controls only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.io import atomic_write_json, atomic_write_text
from ndae.normative.calibration import calibration_summary, calibration_table
from ndae.normative.design import DesignSpec
from ndae.normative.model import NormativeModel

COVARIATE_COLUMNS = ("subject", "site", "age", "sex", "group")


def read_latents(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Subjects and z_sem from latents.npz (x_T is left on disk)."""
    path = Path(path)
    if not path.exists():
        raise NdaeError(f"{path}: latents file does not exist")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("subject", "z_sem") if key not in arrays.files]
            if missing:
                raise NdaeError(f"{path}: missing array(s) {missing} (have {arrays.files})")
            subjects = [str(s) for s in arrays["subject"]]
            z_sem = np.asarray(arrays["z_sem"], dtype=np.float64)
    except (OSError, ValueError) as error:
        raise NdaeError(f"{path}: not a readable .npz file ({error})") from error
    if z_sem.ndim != 2 or z_sem.shape[0] != len(subjects):
        raise NdaeError(
            f"{path}: z_sem has shape {z_sem.shape}; expected ({len(subjects)}, d) for "
            f"{len(subjects)} subjects"
        )
    if not np.all(np.isfinite(z_sem)):
        bad = [subjects[i] for i in np.flatnonzero(~np.isfinite(z_sem).all(1))[:5]]
        raise NdaeError(f"{path}: z_sem has NaN/infinite values for subject(s) {bad}")
    if len(set(subjects)) != len(subjects):
        raise NdaeError(f"{path}: subject ids are not unique")
    return subjects, z_sem


def latents_with_covariates(
    latents_path: str | Path, manifest_path: str | Path
) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest rows of the latents' subjects (in the latents' order) and their z_sem."""
    from ndae.data.manifest import read_manifest

    subjects, z_sem = read_latents(latents_path)
    manifest = read_manifest(manifest_path, check_files=False)
    manifest = manifest.set_index(manifest["subject"].astype(str))
    unknown = [s for s in subjects if s not in manifest.index]
    if unknown:
        raise NdaeError(
            f"{len(unknown)} subject(s) of {latents_path} are not in {manifest_path}: {unknown[:5]}"
        )
    covariates = manifest.loc[subjects, list(COVARIATE_COLUMNS)].reset_index(drop=True)
    return covariates, z_sem


def fit_normative(
    latents_path: str | Path,
    manifest_path: str | Path,
    out_dir: str | Path,
    design: DesignSpec | None = None,
    prior_precision: float = 1e-3,
) -> NormativeModel:
    """Fit on the controls, save the model and its in-sample calibration to `out_dir`."""
    covariates, z_sem = latents_with_covariates(latents_path, manifest_path)
    controls = (covariates["group"] == "control").to_numpy()
    if not controls.any():
        raise NdaeError(f"{manifest_path}: no subject with group 'control' among the latents' subjects")
    feature_names = [f"z_sem_{k}" for k in range(z_sem.shape[1])]
    model = NormativeModel(design=design, prior_precision=prior_precision).fit(
        covariates[controls].reset_index(drop=True), z_sem[controls], feature_names
    )
    out_dir = Path(out_dir)
    model.save(out_dir)
    table = calibration_table(model, covariates[controls].reset_index(drop=True), z_sem[controls])
    atomic_write_text(out_dir / "calibration_in_sample.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(out_dir / "calibration_in_sample.json", calibration_summary(table))
    return model


def write_deviations(
    run_dir: str | Path,
    latents_path: str | Path,
    manifest_path: str | Path,
    out_path: str | Path,
    include_z: bool = False,
) -> pd.DataFrame:
    """Score every subject of the latents against RUN/normative; write deviations.csv."""
    from ndae.deviation.scores import deviation_table

    model = NormativeModel.load(Path(run_dir) / "normative")
    covariates, z_sem = latents_with_covariates(latents_path, manifest_path)
    if z_sem.shape[1] != model.n_features:
        raise NdaeError(
            f"{latents_path}: z_sem has {z_sem.shape[1]} dimensions but the normative model in "
            f"{run_dir}/normative was fitted on {model.n_features}"
        )
    table = deviation_table(covariates["subject"], covariates, z_sem, model, include_z=include_z)
    atomic_write_text(out_path, table.to_csv(index=False, lineterminator="\n", float_format="%.8g"))
    return table
