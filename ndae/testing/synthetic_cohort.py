"""A small synthetic multi-site cohort already on the output grid (no registration needed).

For tests and benchmarks of the federation plumbing only: ellipsoid "brains" whose size and
intensity texture vary with age, a per-site intensity gain, and in patients a focal loss whose
size grows with a severity that also shortens survival. Follows the cohort contract
(`manifest.csv`, `sites/<site>/manifest.csv`, `truth.csv`, `images/`).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.data.template import output_grid
from ndae.io import atomic_write_bytes, atomic_write_text


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=4)
    image.set_qform(affine, code=4)
    return image.to_bytes()


def make_synthetic_cohort(out: str | Path, sites: int = 3, controls_per_site: int = 6, patients_per_site: int = 6,
                          seed: int = 0) -> Path:
    out = Path(out)
    grid = output_grid()
    rng = np.random.default_rng(seed)
    X, Y, Z = np.meshgrid(*(np.linspace(-1, 1, s) for s in grid.shape), indexing="ij")
    rows, truth = [], []
    for s in range(1, sites + 1):
        site = f"site{s}"
        gain = 1.0 + 0.08 * (s - 2)
        for k in range(controls_per_site + patients_per_site):
            patient = k >= controls_per_site
            subject = f"S{s}{k:03d}"
            age = float(rng.uniform(25, 80))
            radius = 0.85 - 0.002 * (age - 50) + rng.normal(0, 0.02)
            brain = (X / radius) ** 2 + (Y / (radius * 1.1)) ** 2 + (Z / (radius * 0.9)) ** 2 < 1
            texture = np.sin(6 * X + rng.normal(0, 0.3)) * np.cos(5 * Y) + 0.3 * np.cos(8 * Z)
            image = gain * (100 + 20 * texture + 0.2 * (age - 50)) + rng.normal(0, 3, grid.shape)
            severity = float(rng.uniform(0, 1)) if patient else 0.0
            if patient:
                lesion = (X - 0.3) ** 2 + (Y + 0.1) ** 2 + (Z - 0.4) ** 2 < (0.1 + 0.35 * severity) ** 2
                image = np.where(lesion, image * (0.45 + 0.3 * (1 - severity)), image)
            image = np.where(brain, image, 0).astype(np.float32)
            folder = out / "images" / site
            image_path, mask_path = folder / f"{subject}_T1.nii.gz", folder / f"{subject}_labels.nii.gz"
            atomic_write_bytes(image_path, _gz(_nifti_bytes(image, grid.affine)))
            atomic_write_bytes(mask_path, _gz(_nifti_bytes(brain.astype(np.int16), grid.affine)))
            time = event = np.nan
            if patient:
                event_time = rng.exponential(30 * np.exp(-2.0 * severity))
                censor_time = rng.uniform(12, 60)
                time, event = round(min(event_time, censor_time), 2), int(event_time <= censor_time)
            rows.append({"subject": subject, "site": site, "image": f"images/{site}/{subject}_T1.nii.gz",
                         "age": round(age, 2), "sex": "MF"[int(rng.integers(2))],
                         "group": "als" if patient else "control", "mask": f"images/{site}/{subject}_labels.nii.gz",
                         "time": time, "event": event})
            truth.append({"subject": subject, "severity": severity})
    manifest = pd.DataFrame(rows)
    manifest["event"] = manifest["event"].astype("Int64")
    atomic_write_text(out / "manifest.csv", manifest.to_csv(index=False, lineterminator="\n"))
    for site, local in manifest.groupby("site"):
        local = local.copy()
        site_dir = out / "sites" / site
        for column in ("image", "mask"):
            local[column] = [os.path.relpath(out / p, site_dir) for p in local[column]]
        atomic_write_text(site_dir / "manifest.csv", local.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "truth.csv", pd.DataFrame(truth).to_csv(index=False, lineterminator="\n"))
    return out


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)
