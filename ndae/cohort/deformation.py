"""Smooth, fold-free deformations and the resampling that applies them to image and labels.

All displacements are *pull-back* fields in millimetres on the output grid: the output at voxel x
takes the input at x + d(x). A field v ∝ ∇(G_σ * w) points towards a structure with weight map
w; sampling from inside makes the structure grow at its edges (negative amplitude: shrink).
Local fields are used as stationary velocity fields and exponentiated by scaling and squaring
(Arsigny et al. 2006, as in the log-Euclidean / DARTEL registration frameworks), which keeps
the map a diffeomorphism even where a few-millimetre displacement meets a thin structure; the
Jacobian determinant is reported so that tests can check it (> 0: no folding, no tearing).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth(volume: np.ndarray, sigma_mm: float | np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    """Gaussian smoothing with a physical (mm) width, per axis."""
    sigma = np.broadcast_to(np.asarray(sigma_mm, dtype=float), (3,)) / np.asarray(voxel_size, dtype=float)
    return ndimage.gaussian_filter(volume.astype(np.float32, copy=False), sigma=sigma, mode="nearest")


def gradient_mm(field: np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    """∇field in units per millimetre, shape (3, *field.shape)."""
    return np.stack(np.gradient(field, *[float(v) for v in voxel_size])).astype(np.float32)


def structure_displacement(
    weight: np.ndarray, amplitude_mm: float, sigma_mm: float, voxel_size: np.ndarray
) -> np.ndarray:
    """Pull-back field that grows (amplitude > 0) or shrinks (< 0) the structure `weight` ∈ [0, 1].

    Scaled so that the displacement peaks at |amplitude| × max(weight) mm, whatever the
    structure's size (thin young ventricles move as far as wide old ones); where the weight is
    lower (somatotopic focus, asymmetry) its edge moves proportionally less. Computed in the
    structure's bounding box (± 3σ): the field is negligible beyond it.
    """
    field = np.zeros((3, *weight.shape), dtype=np.float32)
    present = np.argwhere(weight != 0)
    if amplitude_mm == 0 or len(present) == 0:
        return field
    margin = np.ceil(3 * sigma_mm / np.asarray(voxel_size)).astype(int) + 1
    low = np.maximum(present.min(axis=0) - margin, 0)
    high = np.minimum(present.max(axis=0) + margin + 1, weight.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    gradient = gradient_mm(smooth(weight[box], sigma_mm, voxel_size), voxel_size)
    peak = float(np.sqrt((gradient**2).sum(axis=0)).max())
    if peak > 0:
        field[(slice(None), *box)] = gradient * (amplitude_mm * float(weight.max()) / peak)
    return field


def atrophy_displacement(brain: np.ndarray, shrink_fraction: float, voxel_size: np.ndarray) -> np.ndarray:
    """Global atrophy: the brain shrinks by `shrink_fraction` (linear) towards its centroid.

    The radial field is tapered outside the brain's bounding ellipsoid, so tissue far outside
    (skull, if the scan is not skull-stripped) barely moves while the brain edge does.
    """
    voxel_size = np.asarray(voxel_size, dtype=np.float32)
    field = np.zeros((3, *brain.shape), dtype=np.float32)
    if shrink_fraction == 0:
        return field
    present = np.argwhere(brain)
    centre = present.mean(axis=0)
    radius = np.maximum((present.max(axis=0) - present.min(axis=0)) / 2, 1.0)
    grids = np.ogrid[tuple(slice(0, n) for n in brain.shape)]
    offsets = [(g - c).astype(np.float32) for g, c in zip(grids, centre)]
    rho = np.sqrt(sum((o / r) ** 2 for o, r in zip(offsets, radius)))
    taper = np.exp(-(np.maximum(rho - 1, 0) / 0.15) ** 2).astype(np.float32)
    for axis in range(3):
        field[axis] = shrink_fraction * offsets[axis] * voxel_size[axis] * taper
    return field


def exponentiate(velocity_mm: np.ndarray, voxel_size: np.ndarray, steps: int = 4) -> np.ndarray:
    """Displacement (mm) of exp(v) by scaling and squaring: d ← d + d∘(id + d), `steps` times.

    Only the bounding box where v is non-zero is integrated (v is exactly 0 elsewhere, so is d).
    """
    magnitude = np.abs(velocity_mm).max(axis=0)
    present = np.argwhere(magnitude > 1e-3)  # mm: below this the flow is the identity
    if len(present) == 0:
        return velocity_mm.copy()
    low, high = present.min(axis=0), present.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    scale = np.asarray(voxel_size, dtype=np.float32)[:, None, None, None]
    displacement = velocity_mm[(slice(None), *box)] / scale / (2**steps)  # voxel units
    grid = np.indices(displacement.shape[1:], dtype=np.float32)
    for _ in range(steps):
        at = grid + displacement
        displacement = displacement + np.stack(
            [ndimage.map_coordinates(component, at, order=1, mode="nearest") for component in displacement]
        )
    out = np.zeros_like(velocity_mm)
    out[(slice(None), *box)] = displacement * scale
    return out


def jacobian_determinant(displacement_mm: np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    """det ∂(x + d(x))/∂x; values ≤ 0 would mean folding (tearing) of the deformation."""
    jacobian = np.empty((3, 3, *displacement_mm.shape[1:]), dtype=np.float32)
    for i in range(3):
        grads = np.gradient(displacement_mm[i], *[float(v) for v in voxel_size])
        for j in range(3):
            jacobian[i, j] = grads[j] + (1.0 if i == j else 0.0)
    j = jacobian
    return (
        j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
        - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
        + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0])
    )


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sampling_coordinates(
    shape: tuple[int, int, int],
    voxel_size: np.ndarray,
    displacement_mm: np.ndarray | None = None,
    rotation_deg: np.ndarray | None = None,
    translation_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel coordinates (3, *shape) at which to sample the input.

    The subject is first deformed (disease, in its own space) and then placed in the scanner
    with a small rigid offset: output(x) = deformed(J(x)) = input(J(x) + d(J(x))).
    """
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    grid = np.indices(shape, dtype=np.float32)
    if rotation_deg is not None or translation_mm is not None:
        centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
        rotation = rotation_matrix(rotation_deg if rotation_deg is not None else np.zeros(3))
        # Rotate in millimetres, so anisotropic voxels stay physical.
        matrix = np.diag(1 / voxel_size) @ rotation @ np.diag(voxel_size)
        shift = np.zeros(3) if translation_mm is None else np.asarray(translation_mm) / voxel_size
        offset = centre + shift - matrix @ centre
        grid = (np.tensordot(matrix.astype(np.float32), grid, axes=1) + offset.astype(np.float32)[:, None, None, None])
        if displacement_mm is not None:
            displacement_mm = np.stack(
                [ndimage.map_coordinates(d, grid, order=1, mode="nearest") for d in displacement_mm]
            )
    if displacement_mm is not None:
        grid = grid + displacement_mm / voxel_size.astype(np.float32)[:, None, None, None]
    return grid


def resample(volume: np.ndarray, coordinates: np.ndarray, order: int) -> np.ndarray:
    """Trilinear (order 1) for intensities, nearest neighbour (order 0) for labels."""
    out = ndimage.map_coordinates(volume, coordinates, order=order, mode="nearest")
    return out.astype(volume.dtype, copy=False)
