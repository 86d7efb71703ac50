"""Where the tests' IXI scans come from, so a clone with nothing beside it tests itself.

The tests read an IXI folder laid out like `../shared/data/ixi` (CI has it): `demographics.csv`
(`subject, age, sex`), `T1/<subject>_T1.nii.gz` and `labels/<subject>_T1_DLMUSE.nii.gz`, native
space, stored P-S-R like the IXI files. Where that folder is absent, the same layout is made from
the demo data the package ships (ndae/demo_data, 121 IXI subjects already on the 2 mm MNI grid):
each scan is put back into a "native" space by a known similarity transform (`NATIVE_FROM_MNI`:
a head's size, tilt and shift, as a scanner would see it) and its voxel axes are permuted to P-S-R. No voxel is
resampled, so loading a made scan and undoing `NATIVE_FROM_MNI` gives the shipped scan exactly.

Order: `$NDAE_IXI_DIR` (a folder, or `shipped` to force the shipped data), then
`../shared/data/ixi`, then the shipped data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SHARED_IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"
SHIPPED = "shipped"


class MissingTestData(Exception):
    """The folder named by $NDAE_IXI_DIR does not hold the IXI layout."""


def _similarity(scale: float, pitch_deg: float, yaw_deg: float, shift_mm: tuple[float, float, float]) -> np.ndarray:
    pitch, yaw = np.radians(pitch_deg), np.radians(yaw_deg)
    about_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    about_z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = scale * about_z @ about_x
    out[:3, 3] = shift_mm
    return out


# Scanner world from MNI world: heads are smaller than MNI152 (the IXI brains in ../shared are
# 0.81-0.93 of their MNI-registered size, linearly; median 0.89), tilted (10 degrees of nod, 4 of
# turn) and a few cm off centre. Registration has to undo it; the closest axes stay P-S-R. The
# scale (voxels of 1.84 mm) keeps millimetre-sized effects (the disease model's 4 mm tract, its
# cortical thinning) at the share of a structure they have in a native scan; at scale 1 the
# tract's contrast drop in the internal capsule measured 3.0 % instead of the 3.3 % of ../shared.
NATIVE_FROM_MNI = _similarity(0.92, 10.0, 4.0, (6.0, -12.0, 18.0))


def _psr_from_ras(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel map: RAS index = M @ PSR index, with PSR axes (a, b, c) = (ny-1-j, k, i)."""
    m = np.zeros((4, 4))
    m[0, 2] = 1
    m[1, 0], m[1, 3] = -1, shape[1] - 1
    m[2, 1] = 1
    m[3, 3] = 1
    return m


def to_native_psr(data: np.ndarray, ras_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An RAS-stored volume re-expressed as a P-S-R native scan (data, affine)."""
    psr = np.ascontiguousarray(np.transpose(data, (1, 2, 0))[::-1])
    return psr, NATIVE_FROM_MNI @ ras_affine @ _psr_from_ras(data.shape)


def build_from_shipped(target: Path) -> Path:
    """Write the IXI test layout made from the shipped demo data into `target` (about 5 s)."""
    import nibabel as nib
    import pandas as pd

    from ndae.data.demo import demo_dir

    if (target / "demographics.csv").is_file():  # written last: the folder is complete
        return target
    source = demo_dir()
    manifest = pd.read_csv(source / "manifest.csv")
    (target / "T1").mkdir(parents=True, exist_ok=True)
    (target / "labels").mkdir(exist_ok=True)
    for row in manifest.itertuples():
        image = nib.load(source / row.image)
        labels = nib.load(source / row.mask)
        # Shipped intensities are [-1, 1] (background -1); a scanner's are positive, background 0.
        scanner = np.round((image.get_fdata() + 1.0) * 1000.0).astype(np.int16)
        data, affine = to_native_psr(scanner, image.affine)
        nib.save(nib.Nifti1Image(data, affine), target / "T1" / f"{row.subject}_T1.nii.gz")
        label_data, label_affine = to_native_psr(np.asarray(labels.dataobj), labels.affine)
        nib.save(nib.Nifti1Image(label_data, label_affine), target / "labels" / f"{row.subject}_T1_DLMUSE.nii.gz")
    manifest[["subject", "age", "sex"]].to_csv(target / "demographics.csv", index=False)
    (target / "README.md").write_text(
        "Made by tests/ixi_data.py from ndae/demo_data (IXI, CC BY-SA 3.0; see that archive's README).\n"
    )
    return target


def resolve_ixi_dir(build_root: Path, shared: Path | None = None) -> tuple[Path, str]:
    """(folder, where it came from: "env", "shared" or "shipped"); builds under `build_root` if needed."""
    shared = SHARED_IXI if shared is None else shared
    explicit = os.environ.get("NDAE_IXI_DIR", "")
    if explicit and explicit != SHIPPED:
        folder = Path(explicit)
        if not (folder / "demographics.csv").is_file():
            raise MissingTestData(f"NDAE_IXI_DIR={explicit}: no demographics.csv there (unset it to use the shipped data)")
        return folder, "env"
    if explicit != SHIPPED and (shared / "demographics.csv").is_file():
        return shared, "shared"
    return build_from_shipped(build_root / "ixi"), "shipped"
