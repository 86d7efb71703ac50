"""The MNI152 reference space and the fixed output grid every prepared subject lives on.

nilearn ships the 2 mm MNI152 template and brain mask inside the package, so nothing is
downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np

# Output grid: 80 x 96 x 80 voxels of 2 mm (divisible by 16), covering the MNI152 brain mask
# (brain at x -72..72, y -106..72, z -72..82 mm) with a few mm of margin.
GRID_SHAPE = (80, 96, 80)
GRID_VOXEL_MM = 2.0
GRID_ORIGIN_MM = (-80.0, -114.0, -76.0)


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray

    def z_index(self, z_mm: float) -> int:
        """Index of the axial slice nearest to the MNI z coordinate `z_mm`."""
        index = int(round((z_mm - self.affine[2, 3]) / self.affine[2, 2]))
        if not 0 <= index < self.shape[2]:
            raise ValueError(f"MNI z = {z_mm} mm is outside the output grid")
        return index

    def matches(self, image: nib.Nifti1Image, tolerance_mm: float = 0.5) -> bool:
        """True when `image` is already on this grid (no registration or resampling needed)."""
        return tuple(image.shape[:3]) == self.shape and np.allclose(image.affine, self.affine, atol=tolerance_mm)


def output_grid() -> Grid:
    affine = np.diag([GRID_VOXEL_MM, GRID_VOXEL_MM, GRID_VOXEL_MM, 1.0])
    affine[:3, 3] = GRID_ORIGIN_MM
    return Grid(GRID_SHAPE, affine)


@lru_cache(maxsize=1)
def mni_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """(T1 template, brain mask) at 2 mm, from the copy nilearn ships."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    return template, mask
