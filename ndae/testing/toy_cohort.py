"""A tiny synthetic ALS cohort, already on the 2 mm MNI output grid, with known truth.

Not the project's cohort generator (`ndae.cohort`, which deforms real healthy scans): a
stand-in built from ellipsoids in a few seconds, for tests and for checking that `ndae
evaluate` works on a cohort made elsewhere. Each brain is an ellipsoid of grey matter around
white matter inside a rim of CSF (which anchors the intensity normalisation), with lateral
ventricles (MUSE 51/52), precentral gyri (182/183) and posterior limbs of the internal capsule
(93/94). Age enlarges the ventricles; disease severity s ∈ [0, 1]
enlarges them further, darkens the precentral cortex and the internal capsule. Survival:
Weibull proportional hazards with true linear predictor
    risk = log 2 · (s − 0.5) / 0.2 + log 1.4 · (age − 60) / 10,
administrative censoring. Writes `manifest.csv` (the project's format), `truth.csv`
(`subject, severity, risk, event_time, censor_time, time, event`) and `images/`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.data.template import output_grid
from ndae.io import atomic_write_bytes, atomic_write_text


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def toy_subject(age: float, severity: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T1-like image float32, label map int16) on the output grid."""
    grid = output_grid()
    shape = grid.shape
    centre = np.array([40.0, 54.0, 42.0]) + rng.normal(0, 0.7, 3)  # voxels; MNI (0, -6, 8) mm
    scale = 1.0 + rng.normal(0, 0.03)
    head = _ellipsoid(shape, centre, np.array([34.0, 42.0, 31.0]) * scale)
    brain = _ellipsoid(shape, centre, np.array([33.0, 41.0, 30.0]) * scale)
    white = _ellipsoid(shape, centre, np.array([28.0, 36.0, 25.0]) * scale)
    labels = np.zeros(shape, np.int16)
    image = np.zeros(shape, np.float32)
    x_index = np.arange(shape[0])[:, None, None]
    left = np.broadcast_to(x_index < centre[0], shape)
    labels[head & ~brain] = 1  # sulcal / extra-cerebral CSF rim (MUSE 1): ~7 % of the mask
    image[head & ~brain] = 0.1
    cortex = brain & ~white
    labels[cortex] = 117  # a generic cortical label
    image[cortex] = 0.55
    labels[white & ~left] = 81  # frontal WM R/L stand-ins
    labels[white & left] = 82
    image[white] = 0.9
    # Precentral gyri: the cortex of a coronal band, upper half (z ≥ 56, i.e. MNI z ≥ 36 mm).
    y_index = np.arange(shape[1])[None, :, None]
    z_index = np.arange(shape[2])[None, None, :]
    band = (np.abs(y_index - (centre[1] - 6)) <= 5) & (z_index >= centre[2] + 8)
    precentral = cortex & band
    labels[precentral & ~left] = 182
    labels[precentral & left] = 183
    image[precentral] = 0.55 * (1.0 - 0.45 * severity)
    # Posterior limbs of the internal capsule.
    for side, dx in ((93, 9.0), (94, -9.0)):
        capsule = _ellipsoid(shape, centre + [dx, -4.0, 1.0], (2.5, 6.0, 5.0))
        labels[capsule] = side
        image[capsule] = 0.95 * (1.0 - 0.25 * severity)
    # Lateral ventricles: grow with age and with severity.
    growth = 1.0 + 0.012 * (age - 50.0) + 0.45 * severity + rng.normal(0, 0.05)
    for side, dx in ((51, 4.0), (52, -4.0)):
        ventricle = _ellipsoid(shape, centre + [dx, 2.0, 4.0], np.array([2.5, 11.0, 4.0]) * max(growth, 0.5))
        labels[ventricle] = side
        image[ventricle] = 0.15
    image = image + rng.normal(0, 0.03, shape).astype(np.float32)
    image[labels == 0] = 0.0
    return image.astype(np.float32), labels


def write_toy_cohort(out: str | Path, n_controls: int = 12, n_patients: int = 24, sites: int = 2, seed: int = 0,
                     onset_column: bool = False) -> tuple[Path, Path]:
    """Write the cohort; returns (manifest.csv, truth.csv). Subjects alternate over `sites`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    grid = output_grid()
    rows, truth = [], []
    n = n_controls + n_patients
    for i in range(n):
        patient = i >= n_controls
        subject = f"{'P' if patient else 'C'}{i:03d}"
        age = float(np.round(rng.uniform(45, 80) if patient else rng.uniform(25, 80), 1))
        sex = "F" if rng.random() < 0.5 else "M"
        severity = float(rng.uniform(0, 1)) if patient else 0.0
        image, labels = toy_subject(age, severity, np.random.default_rng([seed, i]))
        image_path, label_path = out / "images" / f"{subject}_T1.nii.gz", out / "images" / f"{subject}_labels.nii.gz"
        for path, data in ((image_path, image), (label_path, labels)):
            nifti = nib.Nifti1Image(data, grid.affine)
            nifti.set_sform(grid.affine, code=4)
            nifti.set_qform(grid.affine, code=4)
            atomic_write_bytes(path, nifti.to_bytes() if path.suffix != ".gz" else _gzip(nifti.to_bytes()))
        row = {"subject": subject, "site": f"site{i % sites + 1}", "image": f"images/{image_path.name}", "age": age,
               "sex": sex, "group": "als" if patient else "control", "mask": f"images/{label_path.name}"}
        if patient:
            risk = np.log(2.0) * (severity - 0.5) / 0.2 + np.log(1.4) * (age - 60.0) / 10.0
            scale = 32.0 / np.log(2) ** (1 / 1.5)
            event_time = scale * (-np.log(rng.uniform()) * np.exp(-risk)) ** (1 / 1.5)
            censor_time = 60.0 - rng.uniform(0, 24.0)
            time, event = min(event_time, censor_time), int(event_time <= censor_time)
            row.update(time=round(float(time), 3), event=event)
            onset = "bulbar" if rng.random() < 0.3 else "limb"
            if onset_column:
                row["onset"] = onset
            truth.append({"subject": subject, "severity": severity, "onset": onset, "risk": float(risk),
                          "event_time": float(event_time), "censor_time": float(censor_time),
                          "time": row["time"], "event": event})
        rows.append(row)
    manifest = pd.DataFrame(rows)
    atomic_write_text(out / "manifest.csv", manifest.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "truth.csv", pd.DataFrame(truth).to_csv(index=False, lineterminator="\n"))
    return out / "manifest.csv", out / "truth.csv"


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)
