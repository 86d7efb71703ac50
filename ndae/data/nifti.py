"""Loading and validating T1 NIfTI images.

Every check raises `InvalidImageError` with the file name and the problem, so a consortium
member can fix the one bad scan instead of reading a traceback.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ndae.errors import InvalidImageError

# Voxel sizes outside this range (mm) are almost surely a header error (e.g. metres, or 0).
VOXEL_SIZE_RANGE_MM = (0.2, 8.0)


def load_nifti(path: str | Path, *, reorient: bool = True, is_label: bool = False) -> nib.Nifti1Image:
    """Load a 3-D NIfTI (`.nii` / `.nii.gz`), validate it and reorient it to canonical RAS.

    A 4-D image with a single volume is accepted and squeezed. `is_label` skips the
    intensity checks that make no sense for a label map (constant, non-integer...).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidImageError(f"{path}: file does not exist")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)  # forces the full read: catches truncated gzip
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as error:
        raise InvalidImageError(f"{path}: unreadable or truncated NIfTI ({error})") from error
    except Exception as error:  # nibabel raises a zoo of types for bad headers (incl. degenerate affines)
        raise InvalidImageError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from error

    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidImageError(f"{path}: expected a 3-D image (or 4-D with one volume), got shape {data.shape}")
    if min(data.shape) < 8:
        raise InvalidImageError(f"{path}: image too small to be a brain scan, shape {data.shape}")

    affine = image.affine
    _check_affine(path, affine)
    if not is_label:
        _check_intensities(path, data)
    else:
        data = np.rint(data).astype(np.int16) if np.issubdtype(data.dtype, np.floating) else data

    header = image.header.copy()
    header.set_data_shape(data.shape)
    clean = nib.Nifti1Image(np.asarray(data), affine, header)
    return nib.as_closest_canonical(clean) if reorient else clean


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError(f"{path}: affine contains non-finite values")
    linear = affine[:3, :3]
    voxel_sizes = np.sqrt((linear**2).sum(axis=0))
    # Collinear or zero axes: |det| tiny relative to the product of the axis lengths.
    if np.any(voxel_sizes == 0) or abs(np.linalg.det(linear)) < 1e-3 * np.prod(voxel_sizes):
        raise InvalidImageError(f"{path}: degenerate affine (voxel axes are zero or collinear)")
    low, high = VOXEL_SIZE_RANGE_MM
    if np.any(voxel_sizes < low) or np.any(voxel_sizes > high):
        raise InvalidImageError(
            f"{path}: voxel size {np.round(voxel_sizes, 3).tolist()} mm outside the sane range {low}–{high} mm"
        )


def _check_intensities(path: Path, data: np.ndarray) -> None:
    values = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        count = int((~np.isfinite(values)).sum())
        raise InvalidImageError(f"{path}: {count} non-finite voxels (NaN or Inf)")
    if values.max() == values.min():
        raise InvalidImageError(f"{path}: constant image (every voxel is {values.min():g})")


def voxel_sizes(image: nib.Nifti1Image) -> np.ndarray:
    return np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
