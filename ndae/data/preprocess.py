"""Preprocessing one subject: RAS → brain mask → skull-strip → intensity normalisation →
affine registration to MNI → fixed output grid → axial slices.

The result is a `PreparedSubject`; `ndae.data.cache` stores it so re-runs skip finished work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ndae.data.nifti import load_nifti
from ndae.data.registration import AffineRegistration, register_to_mni
from ndae.data.template import Grid, mni_template, output_grid
from ndae.errors import InvalidImageError

PIPELINE_VERSION = 2
# Axial slices (MNI z, mm) through the corticospinal tract and motor cortex: internal capsule /
# basal ganglia, lateral-ventricle bodies with the corona radiata, centrum semiovale, and the
# precentral "hand knob".
DEFAULT_SLICE_Z_MM = (8.0, 20.0, 38.0, 56.0)


@dataclass(frozen=True)
class PrepareConfig:
    registration: str = "auto"  # "auto": skip when the image is already on the output grid
    percentiles: tuple[float, float] = (1.0, 99.0)
    slice_z_mm: tuple[float, ...] = DEFAULT_SLICE_Z_MM
    min_mask_fraction: float = 0.02  # a brain mask smaller than this is surely wrong

    def __post_init__(self):
        if self.registration not in ("auto", "affine", "none"):
            raise ValueError(f"registration must be auto, affine or none, not {self.registration!r}")

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "pipeline_version": PIPELINE_VERSION}, sort_keys=True)


@dataclass
class PreparedSubject:
    subject: str
    image: np.ndarray  # float32 on the output grid, [-1, 1] inside the brain, -1 outside
    mask: np.ndarray  # uint8 brain mask on the output grid
    labels: np.ndarray  # int16 label map on the output grid (zeros when none was given)
    slices: np.ndarray  # float32 [C, H, W]: axial slices, anterior at the top row
    slice_z_mm: np.ndarray
    grid_affine: np.ndarray
    registered: bool
    transform_mat: bytes = b""  # ANTs subject → MNI affine; empty when not registered
    meta: dict = field(default_factory=dict)

    def registration(self) -> AffineRegistration | None:
        return AffineRegistration(self.transform_mat) if self.transform_mat else None


def prepare_subject(image_path: str, mask_path: str | None, subject: str, config: PrepareConfig = PrepareConfig()) -> PreparedSubject:
    grid = output_grid()
    image = load_nifti(image_path)
    labels_native = _load_mask(mask_path, image, image_path) if mask_path else None

    on_grid = grid.matches(image)
    register = config.registration == "affine" or (config.registration == "auto" and not on_grid)
    if not register and not on_grid:
        raise InvalidImageError(
            f"{image_path}: registration is 'none' but the image is not on the output grid "
            f"(shape {image.shape}, expected {grid.shape} at 2 mm MNI)"
        )

    data = image.get_fdata(dtype=np.float32)
    registration = None
    if labels_native is not None:
        mask_native = np.asarray(labels_native.dataobj) > 0
    elif register:
        # No mask given: register the whole head, then take the template's brain mask back.
        registration = register_to_mni(image, skull_stripped=False)
        _, template_mask = mni_template()
        mask_on_grid = _resample_template_mask(template_mask, grid)
        mask_native = registration.to_native(mask_on_grid, grid, image, is_label=True) > 0
    else:
        raise InvalidImageError(f"{image_path}: no mask given and the image is not registered: cannot find the brain")

    fraction = mask_native.mean()
    if fraction < config.min_mask_fraction:
        raise InvalidImageError(f"{mask_path or image_path}: brain mask covers only {fraction:.1%} of the image")

    normalised = normalise_intensity(data, mask_native, config.percentiles, source=image_path)
    if register:
        if registration is None:
            registration = register_to_mni(nib.Nifti1Image(np.where(mask_native, data, 0), image.affine))
        values = registration.to_grid(nib.Nifti1Image(normalised, image.affine), grid)
        if labels_native is not None:
            labels = registration.to_grid(labels_native, grid, is_label=True).astype(np.int16)
            mask = labels > 0  # one resampling for both: mask and labels agree voxel for voxel
        else:
            labels = np.zeros(grid.shape, np.int16)
            mask = registration.to_grid(nib.Nifti1Image(mask_native.astype(np.float32), image.affine), grid, is_label=True) > 0
    else:
        mask = mask_native
        values = normalised
        labels = np.asarray(labels_native.dataobj).astype(np.int16) if labels_native is not None else np.zeros(grid.shape, np.int16)

    values = np.where(mask, np.clip(values, -1.0, 1.0), -1.0).astype(np.float32)
    slices = extract_axial_slices(values, grid, config.slice_z_mm)
    return PreparedSubject(
        subject=subject,
        image=values,
        mask=mask.astype(np.uint8),
        labels=labels,
        slices=slices,
        slice_z_mm=np.asarray(config.slice_z_mm, np.float32),
        grid_affine=grid.affine,
        registered=register,
        transform_mat=registration.transform_mat if registration else b"",
        meta={"mask_fraction_native": float(fraction)},
    )


def normalise_intensity(data: np.ndarray, mask: np.ndarray, percentiles=(1.0, 99.0), *, source: str = "image") -> np.ndarray:
    """Map the [p_low, p_high] percentiles inside the brain to [-1, 1].

    Percentiles (not min/max) make this robust to residual bias fields and bright outliers
    (vessels, fat) that survive skull-stripping.
    """
    inside = data[mask]
    low, high = np.percentile(inside, percentiles)
    if high <= low:
        raise InvalidImageError(f"{source}: no intensity contrast inside the brain mask")
    scaled = 2.0 * (data - low) / (high - low) - 1.0
    return np.where(mask, np.clip(scaled, -1.0, 1.0), -1.0).astype(np.float32)


def extract_axial_slices(volume: np.ndarray, grid: Grid, z_mm) -> np.ndarray:
    """Axial slices as [C, H, W]: rows run anterior → posterior, columns left → right (RAS x)."""
    indices = [grid.z_index(z) for z in z_mm]
    return np.stack([volume[:, :, k].T[::-1] for k in indices]).astype(np.float32)


def _load_mask(mask_path: str, image: nib.Nifti1Image, image_path: str) -> nib.Nifti1Image:
    labels = load_nifti(mask_path, is_label=True)
    if labels.shape != image.shape or not np.allclose(labels.affine, image.affine, atol=1e-3):
        raise InvalidImageError(
            f"{mask_path}: mask/label map does not match its image {image_path} "
            f"(shape {labels.shape} vs {image.shape}, or a different affine)"
        )
    return labels


def _resample_template_mask(template_mask: nib.Nifti1Image, grid: Grid) -> np.ndarray:
    from nilearn.image import resample_img

    resampled = resample_img(
        template_mask, target_affine=grid.affine, target_shape=grid.shape, interpolation="nearest",
        force_resample=True, copy_header=True,
    )
    return resampled.get_fdata() > 0
