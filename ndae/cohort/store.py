"""The cohort folder on disk: manifests, truth, deterministic NIfTI bytes, cohort.json."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.cohort.sites import Site
from ndae.io import atomic_write_bytes, atomic_write_text

MANIFEST_COLUMNS = ["subject", "site", "image", "age", "sex", "group", "mask", "time", "event"]
TRUTH_COLUMNS = [
    "subject", "severity", "onset", "risk", "event_time", "censor_time", "time", "event", "site", "group",
    "age", "sex", "onset_region", "onset_side", "asymmetry", "source_subject", "min_jacobian",
    "precentral_volume_change", "ventricles_volume_change", "brain_volume_change",
    "precentral_volume_ml", "ventricles_volume_ml", "brain_volume_ml",
    "precentral_to_white_matter_source", "precentral_to_white_matter_disease",
    "precentral_to_white_matter_delivered", "internal_capsule_to_white_matter_source",
    "internal_capsule_to_white_matter_disease", "internal_capsule_to_white_matter_delivered", "brain_intensity",
]  # fmt: skip


def nifti_bytes(data: np.ndarray, affine: np.ndarray, sform_code: int) -> bytes:
    """Deterministic .nii.gz bytes (gzip header without time stamp or file name)."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_qform(affine, code=sform_code)
    return gzip.compress(image.to_bytes(), compresslevel=3, mtime=0)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, sform_code: int) -> None:
    atomic_write_bytes(path, nifti_bytes(data, affine, sform_code))


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")


def write_tables(out: Path, cohort: pd.DataFrame, sites: list[Site]) -> None:
    """manifest.csv (all sites), sites/<site>/manifest.csv (paths relative to it), truth.csv."""
    manifest = cohort.copy()
    manifest["time"] = manifest["time"].round(2)
    manifest["event"] = manifest["event"].astype("Int64")
    manifest = manifest[MANIFEST_COLUMNS]
    atomic_write_text(out / "manifest.csv", _csv(manifest))
    for site in sites:
        local = manifest[manifest["site"] == site.name].copy()
        site_dir = out / "sites" / site.name
        for column in ("image", "mask"):
            local[column] = [os.path.relpath(out / p, site_dir) for p in local[column]]
        atomic_write_text(site_dir / "manifest.csv", _csv(local))
    truth = cohort[TRUTH_COLUMNS].copy()
    truth["event"] = truth["event"].astype("Int64")
    atomic_write_text(out / "truth.csv", _csv(truth))
