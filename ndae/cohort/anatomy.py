"""One healthy subject's anatomy (T1 + MUSE label map) and the landmarks the disease model needs.

Everything works in the image's own voxel grid after reorientation to RAS, with physical sizes
taken from the affine, so the generator runs on native-space scans as well as on MNI-registered
ones. Landmarks come from the DLMUSE labels, never from template coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ndae.data.nifti import load_nifti
from ndae.errors import InvalidImageError

# MUSE label ids (see the DLMUSE label table shipped with the IXI data).
PRECENTRAL_RIGHT = (182, 150)  # precentral gyrus, precentral gyrus medial segment
PRECENTRAL_LEFT = (183, 151)
PRECENTRAL = PRECENTRAL_RIGHT + PRECENTRAL_LEFT
LATERAL_VENTRICLES = (51, 52)
# DLMUSE marks sulcal / extra-cerebral CSF as 1 (not in the ROI table); 0 is outside the brain.
SULCAL_CSF = (1,)
CSF_OUTSIDE_BRAIN_TISSUE = (0, 1)
POSTERIOR_LIMB_INTERNAL_CAPSULE = {"right": 93, "left": 94}
BRAINSTEM = 35
VENTRAL_DIENCEPHALON = (61, 62)  # holds the cerebral peduncles the CST runs through
LOBAR_WHITE_MATTER = tuple(range(81, 89))
# Voxels whose T1 signal the corticospinal-tract change may touch: white matter on its course.
CST_TISSUE = LOBAR_WHITE_MATTER + (93, 94, BRAINSTEM) + VENTRAL_DIENCEPHALON
REQUIRED_LABELS = PRECENTRAL + LATERAL_VENTRICLES + (93, 94, BRAINSTEM)


@dataclass
class Anatomy:
    """A subject's T1 (float32) and label map on the same RAS voxel grid."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    sform_code: int = 1
    source: str = ""

    @property
    def voxel_size(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def mask(self, label_ids) -> np.ndarray:
        return np.isin(self.labels, np.asarray(label_ids))

    def world(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices (n × 3) → RAS millimetres."""
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def copy(self) -> "Anatomy":
        return Anatomy(self.image.copy(), self.labels.copy(), self.affine.copy(), self.sform_code, self.source)


def load_anatomy(image_path: str | Path, mask_path: str | Path) -> Anatomy:
    """Load a T1 and its MUSE label map; they must share one grid and hold the labels we use."""
    image = load_nifti(image_path)
    labels = load_nifti(mask_path, is_label=True)
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise InvalidImageError(
            f"{mask_path}: label map grid {labels.shape} does not match its image {image_path} "
            f"grid {image.shape} (shape and affine must be equal)"
        )
    label_data = np.asarray(labels.dataobj)
    problem = label_problem(label_data)
    if problem:
        raise InvalidImageError(f"{mask_path}: not a MUSE label map usable for the ALS model: {problem}")
    sform_code = int(image.header["sform_code"]) or 1
    return Anatomy(
        image=np.asarray(image.dataobj, dtype=np.float32),
        labels=label_data,
        affine=image.affine.copy(),
        sform_code=sform_code,
        source=str(image_path),
    )


def label_problem(labels: np.ndarray) -> str | None:
    """Why a label map cannot carry the ALS model (None if it can).

    Besides absent labels, catches segmentation failures seen in real data (e.g. one
    hemisphere's motor cortex missing or a few voxels): the two precentral gyri must be
    within a factor 2 of each other.
    """
    ids, counts = np.unique(labels, return_counts=True)
    count = dict(zip(ids.tolist(), counts.tolist()))
    missing = [label for label in REQUIRED_LABELS if count.get(label, 0) == 0]
    if missing:
        return (
            f"missing label id(s) {missing} (needs precentral 182/183/150/151, lateral ventricles 51/52, "
            "internal capsule 93/94, brainstem 35)"
        )
    right = sum(count.get(label, 0) for label in PRECENTRAL_RIGHT)
    left = sum(count.get(label, 0) for label in PRECENTRAL_LEFT)
    if not 0.5 <= right / left <= 2.0:
        return f"implausible precentral gyri: right {right} vs left {left} voxels (failed segmentation?)"
    return None


def _coordinates(anatomy: Anatomy, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.argwhere(mask)
    return index, anatomy.world(index.astype(np.float64))


def midline_x(anatomy: Anatomy) -> float:
    """The mid-sagittal x (mm): halfway between the left and right precentral gyri."""
    _, right = _coordinates(anatomy, anatomy.mask(PRECENTRAL_RIGHT))
    _, left = _coordinates(anatomy, anatomy.mask(PRECENTRAL_LEFT))
    return float((right[:, 0].mean() + left[:, 0].mean()) / 2)


def somatotopic_position(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Position of each precentral voxel on the motor homunculus, 0 (face/tongue) to 1 (leg).

    The homunculus runs along the gyrus from inferolateral (bulbar muscles) over the hand knob
    (dorsolateral) to the vertex and the medial surface (leg; MUSE's medial segment 150/151).
    We take the mean of normalised height and normalised closeness to the midline: the
    inferolateral end scores ~0, the medial segment ~1. Returns (voxel indices, position).
    """
    index, world = _coordinates(anatomy, anatomy.mask(PRECENTRAL))
    z = world[:, 2]
    z_low, z_high = np.percentile(z, [2, 98])
    height = np.clip((z - z_low) / max(z_high - z_low, 1e-6), 0, 1)
    lateral = np.abs(world[:, 0] - midline_x(anatomy))
    laterality = np.clip(lateral / max(np.percentile(lateral, 98), 1e-6), 0, 1)
    return index, 0.5 * height + 0.5 * (1 - laterality)


def corticospinal_path(anatomy: Anatomy, side: str, step_mm: float = 1.0) -> np.ndarray:
    """Points (mm, n × 3) along one corticospinal tract: precentral gyrus → posterior limb of the
    internal capsule → cerebral peduncle → lower brainstem, sampled every `step_mm`."""
    precentral = PRECENTRAL_RIGHT if side == "right" else PRECENTRAL_LEFT
    _, motor = _coordinates(anatomy, anatomy.mask(precentral))
    _, capsule = _coordinates(anatomy, anatomy.labels == POSTERIOR_LIMB_INTERNAL_CAPSULE[side])
    _, brainstem = _coordinates(anatomy, anatomy.labels == BRAINSTEM)
    mid = midline_x(anatomy)
    sign = 1.0 if side == "right" else -1.0
    # The tract stays on its own side of the brainstem until the pyramidal decussation.
    own_side = brainstem[sign * (brainstem[:, 0] - mid) >= 0]
    if len(own_side) < 4:
        own_side = brainstem
    top, bottom = np.percentile(own_side[:, 2], [85, 15])
    peduncle = own_side[own_side[:, 2] >= top].mean(axis=0)
    medulla = own_side[own_side[:, 2] <= bottom].mean(axis=0)
    # Start in the upper motor cortex (hand/arm level), not the centroid of the whole gyrus.
    motor_start = motor[motor[:, 2] >= np.percentile(motor[:, 2], 50)].mean(axis=0)
    anchors = np.stack([motor_start, capsule.mean(axis=0), peduncle, medulla])
    points = []
    for start, end in zip(anchors[:-1], anchors[1:]):
        count = max(int(np.ceil(np.linalg.norm(end - start) / step_mm)), 1)
        fraction = np.linspace(0, 1, count, endpoint=False)[:, None]
        points.append(start + fraction * (end - start))
    points.append(anchors[-1:])
    return np.concatenate(points)


def distance_to_path(
    anatomy: Anatomy, mask: np.ndarray, path: np.ndarray, max_distance_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of `mask` within `max_distance_mm` of `path` and their distance (mm) to it."""
    # Only look inside the path's bounding box (in voxels), grown by the maximum distance.
    inverse = np.linalg.inv(anatomy.affine)
    corners = path @ inverse[:3, :3].T + inverse[:3, 3]
    margin = np.ceil(max_distance_mm / anatomy.voxel_size).astype(int) + 1
    low = np.maximum(np.floor(corners.min(axis=0)).astype(int) - margin, 0)
    high = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    index = np.argwhere(mask[box]) + low
    distance, _ = cKDTree(path).query(anatomy.world(index.astype(np.float64)))
    near = distance < max_distance_mm
    return index[near], distance[near]
