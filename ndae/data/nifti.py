"""Loading and validating T1 NIfTI images.

Every check raises `InvalidImageError` with the file name and the problem, so a consortium
member can fix the one bad scan instead of reading a traceback. `image_file_problem` is the
cheap part (a regular file of sane size with a single-file NIfTI header that declares a sane
3-D volume): it reads a few hundred bytes, so it runs before anything hashes or loads a file
(`/dev/zero` or a 50 GB file would otherwise be read for ever) and for every row of a manifest.

The header is also held to what a T1 scan can be before a voxel is read: a bounded voxel count
(a small gzip can declare a billion voxels), one real grey value per voxel (no RGB, no complex),
positive finite voxel sizes in `pixdim` (nibabel would silently read 0 as 1 mm) and an intensity
scaling (`scl_slope`, `scl_inter`) that keeps values in a range registration can work with.
`load_nifti` then refuses, still before reading the voxels, a field of view no head fits in
(an 8-voxel cube, a 9 x 9 x 400 needle), and after reading them, non-finite or absurd values.
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
from nibabel.openers import ImageOpener

from ndae.errors import InvalidImageError

# Voxel sizes outside this range (mm) are almost surely a header error (e.g. metres, or 0).
VOXEL_SIZE_RANGE_MM = (0.2, 8.0)
# A T1 scan is tens of MB; a file, or the voxel data its header declares, above this is refused
# before it is read (a 0.5 mm whole head in float32 is ~0.5 GB).
MAX_IMAGE_BYTES = 2 << 30
MIN_SHAPE = 8  # voxels along each axis: anything smaller is not a brain scan
# A 0.5 mm isotropic whole head is 512^3 voxels; every step after loading holds a few float
# copies of the volume, so the count (not only the stored bytes) is what must be bounded.
MAX_VOXELS = 512**3
# MR intensities are at most a few 10^4 (16-bit scanners, float pipelines); values far beyond
# this make registration's metric overflow float32 and run for ever instead of failing.
MAX_ABS_INTENSITY = 1e9
# The field of view of a head scan: an adult brain is over 100 mm along every axis and a scan
# covers it; a field of view many times longer along one axis than another is not a head.
MIN_EXTENT_MM = 80.0
MAX_ASPECT = 4.0
_NIFTI_MAGIC = (b"n+1\0", b"n+2\0")  # single-file NIfTI-1 / NIfTI-2; a .hdr/.img pair is "ni1"


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
    raw = _raw_header(path)
    problem = _raw_header_problem(raw) if raw is not None else None
    if problem:
        return problem
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
    if math.prod(shape) > MAX_VOXELS:
        return (f"header declares {math.prod(shape):,} voxels (shape {shape}), more than the {MAX_VOXELS:,} "
                "of a 0.5 mm whole-head scan")
    offset = int(getattr(image.dataobj, "offset", 0))
    if not str(path).lower().endswith(".gz") and info.st_size < offset + declared:
        return f"truncated: the header declares {offset + declared} bytes, the file has {info.st_size}"
    return None


def _raw_header(path: str | Path) -> nib.Nifti1Header | None:
    """The single-file NIfTI header exactly as stored: nibabel's loader "fixes" some fields
    (a zero pixdim becomes 1) and refuses others with messages that do not name the field."""
    try:
        with ImageOpener(str(path)) as handle:
            block = handle.read(540)
    except Exception:  # not even the header decompresses: nib.load names the problem next
        return None
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        size = header_class.template_dtype.itemsize
        if len(block) < size:
            continue
        for order in ("<", ">"):
            if (int(np.frombuffer(block[:4], f"{order}i4")[0]) == size
                    and block[344 if size == 348 else 4:][:4] in _NIFTI_MAGIC):
                try:
                    return header_class(block[:size], endianness=order, check=False)
                except Exception:
                    return None
    return None


def _raw_header_problem(header: nib.Nifti1Header) -> str | None:
    """Field-by-field checks of a stored header, before anything trusts it."""
    dtype = header.get_data_dtype()
    if dtype.fields is not None:
        return (f"colour (RGB/RGBA) data, datatype {header['datatype']}: a T1 scan has one grey value per voxel "
                "(convert it to greyscale)")
    if dtype.kind == "c":
        return f"complex data ({dtype}): a T1 scan is real-valued (save its magnitude)"
    if dtype.kind not in "uif":
        return f"data type {dtype} is not a number type a T1 scan is stored in"
    dims = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1:1 + min(max(dims, 1), 3)]]
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        return f"pixdim (voxel size) {pixdim} mm: each must be a positive finite number"
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or math.isnan(slope):  # the NIfTI way of saying "no scaling" (scl_inter unused)
        return None
    if not math.isfinite(slope):
        return f"scl_slope (intensity scale) is {slope}: must be a finite number"
    if not math.isfinite(inter):
        return f"scl_inter (intensity offset) is {inter}: must be a finite number"
    if dtype.kind in "ui" and dtype.itemsize <= 2:  # the whole stored range scaled
        info = np.iinfo(dtype)
        largest = max(abs(slope * info.min + inter), abs(slope * info.max + inter))
    else:  # 32/64-bit or float storage: the range is not the data's, bound the factors themselves
        largest = max(abs(slope), abs(inter))
    if largest > MAX_ABS_INTENSITY:
        return (f"scl_slope {slope:g} and scl_inter {inter:g} scale the stored {dtype} values up to {largest:.3g}; "
                f"MR intensities are within ±{MAX_ABS_INTENSITY:g}")
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
    except Exception as error:  # nibabel raises a zoo of types for bad headers (incl. degenerate affines)
        raise InvalidImageError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from error
    # Geometry first: it is in the header, so a scan no head fits in is refused before its voxels are read.
    _check_affine(path, image.affine)
    _check_head_sized(path, image.shape[:3], image.affine)
    try:
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


def _check_head_sized(path: Path, shape, affine: np.ndarray) -> None:
    extent = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) * np.asarray(shape, float)
    described = " x ".join(f"{v:.0f}" for v in extent)
    if extent.min() < MIN_EXTENT_MM:
        raise InvalidImageError(f"{path}: not a plausible head scan: its field of view is {described} mm "
                                f"(shape {tuple(shape)}); a head scan spans at least {MIN_EXTENT_MM:g} mm along every axis")
    if extent.max() > MAX_ASPECT * extent.min():
        raise InvalidImageError(f"{path}: not a plausible head scan: its field of view is {described} mm, an aspect "
                                f"ratio of {extent.max() / extent.min():.1f} (a head's is at most {MAX_ASPECT:g})")


def _check_intensities(path: Path, data: np.ndarray) -> None:
    # No float64 copy: the volume is bounded, but eight bytes a voxel of it need not be.
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            raise InvalidImageError(f"{path}: {int(finite.size - finite.sum())} non-finite voxels (NaN or Inf)")
        del finite
    low, high = float(data.min()), float(data.max())
    if high == low:
        raise InvalidImageError(f"{path}: constant image (every voxel is {low:g})")
    largest = max(abs(low), abs(high))
    if largest > MAX_ABS_INTENSITY:
        raise InvalidImageError(f"{path}: intensities up to {largest:.3g}; MR intensities are within "
                                f"±{MAX_ABS_INTENSITY:g} (a wrong scale factor or data type?)")


def voxel_sizes(image: nib.Nifti1Image) -> np.ndarray:
    return np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
