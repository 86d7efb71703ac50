"""Loading and validating T1 NIfTI images.

Every check raises `InvalidImageError` with the file name and the problem, so a consortium
member can fix the one bad scan instead of reading a traceback. `image_file_problem` is the
cheap part (a regular file of sane size with a single-file NIfTI header that declares a sane
3-D volume): it reads a few hundred bytes, so it runs before anything hashes or loads a file
(`/dev/zero` or a 50 GB file would otherwise be read for ever) and for every row of a manifest.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ndae.errors import InvalidImageError

# Voxel sizes outside this range (mm) are almost surely a header error (e.g. metres, or 0).
VOXEL_SIZE_RANGE_MM = (0.2, 8.0)
# A T1 scan is tens of MB; a file, or the voxel data its header declares, above this is refused
# before it is read (a 0.5 mm whole head in float32 is ~0.5 GB).
MAX_IMAGE_BYTES = 2 << 30
MIN_SHAPE = 8  # voxels along each axis: anything smaller is not a brain scan


def image_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a usable NIfTI scan, judged from its file type, size and header
    (the voxels are not read); None when it may be loaded."""
    try:
        info = os.stat(path)  # follows symlinks: a link to a regular file is fine
    except FileNotFoundError:
        return "file does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a NIfTI file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, pipe or socket)"
    if info.st_size == 0:
        return "is empty"
    if info.st_size > MAX_IMAGE_BYTES:
        return f"is {info.st_size / 2**30:.1f} GiB, more than the {MAX_IMAGE_BYTES / 2**30:g} GiB a T1 scan can be"
    try:
        image = nib.load(str(path))  # header only: the voxels stay on disk behind an ArrayProxy
    except Exception as error:  # nibabel raises a zoo of types for what is not an image
        return f"not a readable NIfTI header ({type(error).__name__}: {error})"
    if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 is a subclass; .hdr/.img pairs and others are not
        return f"not a single-file NIfTI (.nii or .nii.gz): nibabel reads it as {type(image).__name__}"
    shape = tuple(int(n) for n in image.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return f"expected a 3-D image (or 4-D with one volume), got shape {shape}"
    if min(shape[:3]) < MIN_SHAPE:
        return f"image too small to be a brain scan, shape {shape}"
    declared = math.prod(shape) * image.get_data_dtype().itemsize
    if declared > MAX_IMAGE_BYTES:
        return f"header declares {declared / 2**30:.1f} GiB of voxels (shape {shape}), more than {MAX_IMAGE_BYTES / 2**30:g} GiB"
    offset = int(getattr(image.dataobj, "offset", 0))
    if not str(path).lower().endswith(".gz") and info.st_size < offset + declared:
        return f"truncated: the header declares {offset + declared} bytes, the file has {info.st_size}"
    return None


def check_image_file(path: str | Path) -> None:
    problem = image_file_problem(path)
    if problem:
        raise InvalidImageError(f"{path}: {problem}")


def load_nifti(path: str | Path, *, reorient: bool = True, is_label: bool = False) -> nib.Nifti1Image:
    """Load a 3-D NIfTI (`.nii` / `.nii.gz`), validate it and reorient it to canonical RAS.

    A 4-D image with a single volume is accepted and squeezed. `is_label` skips the
    intensity checks that make no sense for a label map (constant, non-integer...).
    """
    path = Path(path)
    check_image_file(path)
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
    if min(data.shape) < MIN_SHAPE:
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
