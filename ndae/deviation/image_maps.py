"""Image-space deviation maps from a trained run: the NDAE paper's "where does this patient
differ from their normative self".

For each subject: encode → z_sem, invert → x_T, decode the *normative* z_sem (predicted for the
subject's age, sex and site) with the subject's own x_T, and subtract it from the subject's own
reconstruction (`ndae.deviation.maps.deviation_map`). The 2-D slice maps are put back on the MNI
grid at their slice positions, written as NIfTI on the grid and — when the subject was
registered — mapped back to the subject's native image with the kept affine transform.
Regional means over the subject's label map (precentral gyri, lateral ventricles) are tabulated.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ndae.data.cache import load_prepared
from ndae.data.dataset import default_cache_dir, load_slice_dataset
from ndae.data.preprocess import extract_axial_slices
from ndae.data.template import output_grid
from ndae.deviation.maps import deviation_map, regional_summary, save_deviation_nifti, save_deviation_png
from ndae.errors import NdaeError
from ndae.io import atomic_save_nifti, atomic_write_text

CHECKPOINT = Path("dae") / "checkpoint.pt"


def slices_to_volume(slices: np.ndarray, z_mm, grid=None) -> np.ndarray:
    """Inverse of `extract_axial_slices`: [C, H, W] slices back into a grid volume (zeros elsewhere)."""
    grid = grid or output_grid()
    volume = np.zeros(grid.shape, np.float32)
    for slice_2d, z in zip(slices, z_mm):
        volume[:, :, grid.z_index(float(z))] = slice_2d[::-1].T
    return volume


def normative_maps(model, config, data, normative, steps: int) -> np.ndarray:
    """reconstruction − normative decode (`deviation_map`) of every subject of `data` (a SliceDataset),
    with `steps` DDIM steps for the inversion and each decode, at the prepared-slice size
    ([n, C, 96, 80] on the 2 mm grid)."""
    import torch
    import torch.nn.functional as F

    from ndae.model import decode, encode, invert, prepare_images

    x = prepare_images(data.images, config)
    ages = np.asarray(data.ages, np.float32) if config.model.age_conditioned else None
    with torch.no_grad():
        z_sem = encode(model, x)
        x_T = invert(model, x, z_sem, ages, steps)
        covariates = data.manifest[["subject", "site", "age", "sex", "group"]].reset_index(drop=True)
        z_normative = torch.as_tensor(normative.predict(covariates)[0], dtype=torch.float32)
        maps = deviation_map(lambda z, noise: decode(model, z, noise, ages, steps), z_sem, z_normative, x_T)
    return F.interpolate(torch.as_tensor(maps, dtype=torch.float32), size=data.images.shape[2:], mode="bilinear",
                         align_corners=False).numpy()


def write_deviation_maps(run: str | Path, manifest: str | Path, out: str | Path | None = None, *,
                         group: str = "als", max_subjects: int | None = None, cache_dir: str | Path | None = None,
                         steps: int | None = None, native: bool = True, progress: bool = True) -> pd.DataFrame:
    """Deviation maps (PNG + NIfTI) of the manifest's `group` subjects and `deviation_regions.csv`."""
    from ndae.model import load_checkpoint
    from ndae.normative.model import NormativeModel

    run = Path(run)
    out = Path(out) if out else run / "deviation_maps"
    if not (run / CHECKPOINT).exists():
        raise NdaeError(f"{run / CHECKPOINT}: no trained DAE in this run (run `ndae train` first)")
    state = load_checkpoint(run / CHECKPOINT)
    model, config = state.ema.model, state.config
    normative = NormativeModel.load(run / "normative")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(manifest)
    data = load_slice_dataset(manifest, cache_dir, progress=progress)
    data = data.subset(data.groups == group)
    if max_subjects is not None:
        data = data.subset(np.arange(min(max_subjects, len(data))))
    if len(data) == 0:
        raise NdaeError(f"{manifest}: no subjects of group '{group}' to map")

    maps = normative_maps(model, config, data, normative, steps or config.diffusion.sample_steps)

    grid = output_grid()
    # The DAE may use only some of the prepared slices (config.model.slice_channels).
    channels = list(config.model.slice_channels or range(data.images.shape[1]))
    rows = []
    for index, subject in enumerate(data.subjects):
        prepared = load_prepared(cache_dir, subject)
        prepared.slices, prepared.slice_z_mm = prepared.slices[channels], prepared.slice_z_mm[channels]
        brain = prepared.slices > -1.0
        subject_map = np.where(brain, maps[index], 0.0)
        label_slices = np.round(extract_axial_slices(prepared.labels.astype(np.float32), grid, prepared.slice_z_mm))
        summary = regional_summary(subject_map, label_slices)
        summary.insert(0, "subject", subject)
        rows.append(summary)
        volume = slices_to_volume(subject_map, prepared.slice_z_mm, grid)
        save_deviation_nifti(out / f"{subject}_deviation_mni.nii.gz", volume, grid.affine)
        registration = prepared.registration()
        if native and registration is not None:
            from ndae.data.nifti import load_nifti

            native_image = load_nifti(data.manifest["image"].iloc[index])
            native_map = registration.to_native(volume, grid, native_image)
            # Written as ANTs returns it, in the native image's own voxel type (not cast to float32).
            atomic_save_nifti(out / f"{subject}_deviation_native.nii.gz", nib.Nifti1Image(native_map, native_image.affine))
        panels = np.concatenate(list(subject_map), axis=1)  # the C slices side by side
        background = np.concatenate(list(prepared.slices), axis=1)
        save_deviation_png(out / f"{subject}_deviation.png", panels[::-1].T, background[::-1].T,
                           title=f"{subject}: reconstruction − normative decode (red: brighter than normative)")
    table = pd.concat(rows, ignore_index=True)
    atomic_write_text(out / "deviation_regions.csv", table.to_csv(index=False, lineterminator="\n"))
    return table
