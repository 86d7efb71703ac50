"""Affine registration to MNI152 with ANTsPy.

The forward transform (subject → MNI) is kept as ANTs' own `.mat` file so that results on the
output grid can be mapped back to the subject's native image (`to_native`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ndae.data.template import Grid, mni_template

# One ITK thread: a multi-threaded registration sums its metric in a varying order and so gives
# slightly different transforms run to run. ITK reads this once, at its first use in the process,
# so it is set when this module (the only one that calls ANTs) is imported; an explicit setting wins.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@dataclass
class AffineRegistration:
    """A fitted subject → MNI affine, stored as the bytes of ANTs' GenericAffine `.mat` file."""

    transform_mat: bytes

    def _with_file(self, function):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "subject_to_mni.mat"
            path.write_bytes(self.transform_mat)
            return function(str(path))

    def to_grid(self, image: nib.Nifti1Image, grid: Grid, *, is_label: bool = False) -> np.ndarray:
        """Resample a native-space image onto the MNI output grid."""
        import ants

        fixed = _to_ants(nib.Nifti1Image(np.zeros(grid.shape, np.float32), grid.affine))
        moving = _to_ants(image)
        interpolator = "genericLabel" if is_label else "linear"
        warped = self._with_file(
            lambda path: ants.apply_transforms(fixed, moving, [path], interpolator=interpolator)
        )
        return warped.numpy()

    def to_native(self, grid_array: np.ndarray, grid: Grid, native: nib.Nifti1Image, *, is_label: bool = False) -> np.ndarray:
        """Map an array on the output grid (e.g. a deviation map) back to the native image's voxels."""
        import ants

        moving = _to_ants(nib.Nifti1Image(np.asarray(grid_array, np.float32), grid.affine))
        fixed = _to_ants(native)
        interpolator = "genericLabel" if is_label else "linear"
        warped = self._with_file(
            lambda path: ants.apply_transforms(fixed, moving, [path], whichtoinvert=[True], interpolator=interpolator)
        )
        return warped.numpy()


def register_to_mni(brain: nib.Nifti1Image, *, skull_stripped: bool = True) -> AffineRegistration:
    """Affine registration of a (preferably skull-stripped) T1 to the MNI152 2 mm template.

    The template nilearn ships is brain-extracted, so a skull-on image registers less well:
    pass a label map or mask in the manifest where one exists.
    """
    import ants

    _seed_ants()
    template, template_mask = mni_template()
    fixed_data = template.get_fdata(dtype=np.float32)
    if skull_stripped:
        fixed_data = fixed_data * (template_mask.get_fdata() > 0)
    fixed = _to_ants(nib.Nifti1Image(fixed_data, template.affine))
    moving = _to_ants(brain)
    result = ants.registration(fixed, moving, type_of_transform="Affine")
    transform_path = result["fwdtransforms"][0]
    try:
        return AffineRegistration(Path(transform_path).read_bytes())
    finally:
        for path in result["fwdtransforms"] + result["invtransforms"]:
            if os.path.exists(path):
                os.unlink(path)


def _seed_ants() -> None:
    """A fixed sampling seed (with one ITK thread, above), so a scan registers to the same bytes
    in every run and with any number of `prepare` jobs. `ants.registration` ignores a
    `random_seed` argument (it reads the package setting); the setter also reseeds numpy's and
    Python's global generators, whose states are put back."""
    import random

    from ants.config import set_ants_deterministic

    numpy_state, python_state = np.random.get_state(), random.getstate()
    set_ants_deterministic(True, seed_value=1)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _to_ants(image: nib.Nifti1Image):
    import ants

    data = np.asarray(image.get_fdata(dtype=np.float32))
    clean = nib.Nifti1Image(data, image.affine)
    clean.header.set_xyzt_units("mm", "sec")  # ANTs warns on every unit-less header otherwise
    return ants.from_nibabel_nifti(clean)
