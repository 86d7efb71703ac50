"""One subject's images: disease (patients), scanner placement, one resampling, the scanner;
and the measurements of what the simulation did (volumes, one intensity feature three ways)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ndae.cohort import anatomy as landmarks
from ndae.cohort.anatomy import Anatomy, load_anatomy
from ndae.cohort.deformation import jacobian_determinant, resample, sampling_coordinates
from ndae.cohort.disease import DiseaseModel, PatientPhenotype, apply_disease
from ndae.cohort.seeds import SUBJECT, copy_stream
from ndae.cohort.sites import Site, apply_scanner
from ndae.cohort.store import write_nifti


def to_magnitude(anatomy: Anatomy) -> tuple[Anatomy, bool]:
    """Rescale to a magnitude image: background 0, 99th percentile of the brain 1.

    Inputs may be normalised to any range (the demo data: [-1, 1], background -1 or 0);
    scanner effects need non-negative intensities. Returns the rescaled anatomy and whether it
    is skull-stripped (most of the non-brain field of view holds one constant value, which
    becomes 0 and stays 0).
    """
    image = anatomy.image
    outside = anatomy.labels == 0
    brain = image[~outside]
    background = float(np.median(image[outside])) if outside.any() else float(image.min())
    empty = outside & (image == background)
    stripped = bool(outside.any()) and float(empty.sum()) > 0.5 * float(outside.sum())
    low, top = (float(v) for v in np.percentile(brain, [1, 99]))
    zero = min(background, low)
    scaled = np.clip((image - zero) / max(top - zero, 1e-6), 0, None).astype(np.float32)
    if stripped:
        scaled[empty] = 0
    return Anatomy(scaled, anatomy.labels, anatomy.affine, anatomy.sform_code, anatomy.source), stripped


def render(
    anatomy: Anatomy,
    phenotype: PatientPhenotype | None,
    model: DiseaseModel,
    site: Site | None,
    rng: np.random.Generator,
    stripped: bool = True,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Disease (if a patient), scanner placement, one resampling, then the scanner (if a site).

    `anatomy` must be a magnitude image (`to_magnitude`). Returns (image, labels, min Jacobian,
    the image before the scanner effects).
    """
    voxel_size = anatomy.voxel_size
    image, displacement, min_jacobian = anatomy.image, None, 1.0
    if phenotype is not None and phenotype.severity > 0:
        image, displacement = apply_disease(anatomy, phenotype, model)
        min_jacobian = float(jacobian_determinant(displacement, voxel_size).min())
    rotation = translation = None
    if site is not None:
        rotation = rng.uniform(-1, 1, size=3) * site.jitter_rotation_deg
        translation = rng.uniform(-1, 1, size=3) * site.jitter_translation_mm
    coordinates = sampling_coordinates(anatomy.image.shape, voxel_size, displacement, rotation, translation)
    image = resample(image, coordinates, order=1)
    labels = resample(anatomy.labels, coordinates, order=0)
    clean = image
    if site is not None:
        inside = (anatomy.image > 0) | (anatomy.labels > 0)
        support = resample(inside.astype(np.uint8), coordinates, order=0) if stripped else None
        image = apply_scanner(image, support, site, voxel_size, rng)
    return image, labels, min_jacobian, clean


def _label_means(image: np.ndarray, labels: np.ndarray) -> dict:
    def mean(ids):
        values = image[np.isin(labels, ids)]
        return float(values.mean()) if values.size else float("nan")

    return {
        "precentral": mean(landmarks.PRECENTRAL),
        "white_matter": mean(landmarks.LOBAR_WHITE_MATTER),
        "internal_capsule": mean((93, 94)),
        "brain": float(image[labels > 0].mean()),
    }


def _volumes_ml(labels: np.ndarray, voxel_ml: float) -> dict:
    return {
        "precentral": float(np.isin(labels, landmarks.PRECENTRAL).sum() * voxel_ml),
        "ventricles": float(np.isin(labels, landmarks.LATERAL_VENTRICLES).sum() * voxel_ml),
        "brain": float((labels > 0).sum() * voxel_ml),
    }


def render_subject(task: dict) -> dict:
    """One output subject: load, simulate, write image + label map; return measurements.

    A plain function of a plain dict, so worker processes can run it in any order.
    """
    source = load_anatomy(task["image"], task["mask"])
    anatomy, stripped = to_magnitude(source)
    # Scanner positioning and noise: per source scan and copy, so copy 1 is the K = 1 cohort's.
    rng = copy_stream(task["seed"], SUBJECT, task["index"], copy=task["copy"])
    image, labels, min_jacobian, clean = render(anatomy, task["phenotype"], task["disease"], task["site"], rng, stripped)
    # Integer scanner units, as scanners deliver them (and smaller, faster files).
    image = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    out = Path(task["out_dir"])
    write_nifti(out / task["image_path"], image, anatomy.affine, anatomy.sform_code)
    write_nifti(out / task["mask_path"], labels, anatomy.affine, anatomy.sform_code)

    voxel_ml = float(np.prod(anatomy.voxel_size)) / 1000
    before, after = _volumes_ml(anatomy.labels, voxel_ml), _volumes_ml(labels, voxel_ml)
    result = {"subject": task["subject"], "min_jacobian": min_jacobian}
    for key in before:
        result[f"{key}_volume_ml"] = after[key]
        result[f"{key}_volume_change"] = after[key] / before[key] - 1 if before[key] else float("nan")
    # One image feature three ways: the healthy source, after the disease (before the scanner),
    # and as delivered by the site's scanner. Disease effect vs site effect, measured.
    for name, (values, where) in {
        "source": (anatomy.image, anatomy.labels),
        "disease": (clean, labels),
        "delivered": (image.astype(np.float32), labels),
    }.items():
        means = _label_means(values, where)
        result[f"precentral_to_white_matter_{name}"] = means["precentral"] / means["white_matter"]
        result[f"internal_capsule_to_white_matter_{name}"] = means["internal_capsule"] / means["white_matter"]
    result["brain_intensity"] = _label_means(image.astype(np.float32), labels)["brain"]
    return result
