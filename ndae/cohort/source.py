"""The healthy input of the cohort: read the manifest, keep the scans the disease model can use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ndae.cohort import anatomy as landmarks
from ndae.cohort.seeds import CASE_MIX, stream
from ndae.data.manifest import read_manifest
from ndae.data.nifti import load_nifti
from ndae.errors import ManifestError, NdaeError


def healthy_manifest_path(healthy: str | Path) -> Path:
    """The manifest file itself, given the file or the folder holding manifest.csv."""
    path = Path(healthy)
    return path / "manifest.csv" if path.is_dir() else path


def read_healthy(healthy: str | Path) -> pd.DataFrame:
    """The healthy manifest (or a folder holding manifest.csv), every row with a label map."""
    path = healthy_manifest_path(healthy)
    frame = read_manifest(path)
    if "mask" not in frame.columns:
        raise ManifestError(
            f"{path}: the cohort generator needs a 'mask' column with each scan's MUSE label map "
            "(precentral gyri, ventricles, internal capsule and brainstem are located from it)"
        )
    missing = frame.index[frame["mask"].isna()].tolist()
    if missing:
        rows = ", ".join(f"row {i + 2} ({frame.at[i, 'subject']})" for i in missing)
        raise ManifestError(f"{path}: empty 'mask' (label map) in {rows}")
    if (frame["group"] != "control").any():
        bad = frame.loc[frame["group"] != "control", "subject"].tolist()
        raise ManifestError(f"{path}: the healthy manifest must hold controls only; not controls: {bad}")
    return frame.sort_values("subject").reset_index(drop=True)


def seeded_subset(frame: pd.DataFrame, max_subjects: int | None, seed: int) -> pd.DataFrame:
    """`--max-subjects`: a seeded subset of the healthy scans, in their original order."""
    if max_subjects is None or max_subjects >= len(frame):
        return frame
    keep = np.sort(stream(seed, CASE_MIX, 3).permutation(len(frame))[:max_subjects])
    return frame.iloc[keep].reset_index(drop=True)


def usable_subjects(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop scans whose label map cannot carry the disease model (reason per subject).

    Real segmentations fail now and then (two IXI label maps lack most of one precentral gyrus);
    such a scan is left out of the cohort and listed in cohort.json, not silently used.
    """
    excluded = {}
    for row in frame.itertuples():
        labels = np.asarray(load_nifti(row.mask, is_label=True).dataobj)
        problem = landmarks.label_problem(labels)
        if problem:
            excluded[row.subject] = f"{row.mask}: {problem}"
    if excluded and len(excluded) == len(frame):
        raise NdaeError(f"no usable label map in the healthy manifest; first problem: {next(iter(excluded.values()))}")
    return frame[~frame["subject"].isin(excluded)].reset_index(drop=True), excluded
