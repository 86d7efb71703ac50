"""Image-space deviation maps: where the subject differs from their normative self.

The map is the subject's reconstruction minus the image decoded from the *normative* z_sem with
the subject's own stochastic code x_T: x_T keeps the subject's individual detail, so the
difference shows what the semantic deviation changes. The decoder is passed in as a callable
`decode(z_sem, x_T) -> image` (numpy or torch), so this module does not depend on the DAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ndae.errors import NdaeError
from ndae.io import atomic_save_figure, atomic_save_nifti

# DLMUSE label ids (MUSE atlas; the ids the project uses are listed in docs/cohort.md)
DEFAULT_REGIONS: dict[str, list[int]] = {
    "precentral": [182, 183, 150, 151],  # precentral gyrus R/L + medial segment R/L
    "lateral_ventricles": [51, 52],
}


def as_numpy(image: Any) -> np.ndarray:
    """numpy or torch (any device, with or without grad) → float64 numpy."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    return np.asarray(image, dtype=np.float64)


def deviation_map(
    decode: Callable[[Any, Any], Any],
    z_sem: Any,
    z_normative: Any,
    x_T: Any,
    reconstruction: Any | None = None,
) -> np.ndarray:
    """reconstruction − decode(z_normative, x_T); the reconstruction defaults to decode(z_sem, x_T)."""
    if reconstruction is None:
        reconstruction = decode(z_sem, x_T)
    reconstruction = as_numpy(reconstruction)
    normative = as_numpy(decode(z_normative, x_T))
    if normative.shape != reconstruction.shape:
        raise NdaeError(
            f"decoded normative image has shape {normative.shape} but the reconstruction "
            f"has {reconstruction.shape}"
        )
    return reconstruction - normative


def regional_summary(
    deviation: np.ndarray,
    labels: np.ndarray,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """Mean (and mean absolute) deviation over the voxels of each region of a label map."""
    deviation, labels = as_numpy(deviation), np.asarray(labels)
    if deviation.shape != labels.shape:
        raise NdaeError(
            f"label map has shape {labels.shape} but the deviation map has {deviation.shape}"
        )
    rows = []
    for name, ids in (regions or DEFAULT_REGIONS).items():
        inside = np.isin(labels, np.asarray(list(ids)))
        values = deviation[inside]
        rows.append(
            {
                "region": name,
                "label_ids": " ".join(str(int(i)) for i in ids),
                "n_voxels": int(inside.sum()),
                "mean_deviation": float(values.mean()) if values.size else np.nan,
                "mean_abs_deviation": float(np.abs(values).mean()) if values.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def save_deviation_nifti(path: str | Path, deviation: np.ndarray, affine: np.ndarray) -> Path:
    """Write the map as NIfTI (a 2-D slice becomes a one-slice volume)."""
    import nibabel as nib

    data = as_numpy(deviation).astype(np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise NdaeError(f"a deviation map must be 2-D or 3-D to write as NIfTI, got {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise NdaeError(f"the affine must be 4×4, got {affine.shape}")
    atomic_save_nifti(path, nib.Nifti1Image(data, affine))
    return Path(path)


def save_deviation_png(
    path: str | Path,
    deviation: np.ndarray,
    background: np.ndarray | None = None,
    title: str | None = None,
    label: str = "reconstruction − normative",
) -> Path:
    """A PNG with a symmetric diverging colour scale (blue below, red above normative);
    3-D maps show the three middle orthogonal slices."""
    data = as_numpy(deviation)
    back = None if background is None else as_numpy(background)
    if data.ndim == 2:
        slices = [(data, back)]
    elif data.ndim == 3:
        slices = [
            (np.take(data, data.shape[axis] // 2, axis=axis),
             None if back is None else np.take(back, back.shape[axis] // 2, axis=axis))
            for axis in range(3)
        ]
    else:
        raise NdaeError(f"a deviation map must be 2-D or 3-D to plot, got {data.shape}")
    figure = deviation_figure(slices, title=title, label=label)
    import matplotlib.pyplot as plt  # after deviation_figure chose the Agg backend

    atomic_save_figure(path, figure)
    plt.close(figure)
    return Path(path)


def deviation_figure(
    panels: Sequence[tuple[np.ndarray, np.ndarray | None]],
    *,
    title: str | None = None,
    label: str = "reconstruction − normative",
    panel_titles: Sequence[str] | None = None,
):
    """The panels (map, background or None; shown transposed, origin lower) side by side on one
    symmetric diverging scale with one colourbar labelled `label`. Returned, not saved, so a
    caller can check or save it; close it with `matplotlib.pyplot.close`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(as_numpy(image), None if under is None else as_numpy(under)) for image, under in panels]
    if not panels:
        raise NdaeError("a deviation figure needs at least one panel")
    limit = max(float(np.nanmax(np.abs(image))) if image.size else 0.0 for image, _ in panels) or 1.0
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for index, (axis, (image, under)) in enumerate(zip(axes[0], panels)):
        if under is not None:
            axis.imshow(under.T, cmap="gray", origin="lower")
        shown = axis.imshow(
            image.T, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower",
            alpha=0.7 if under is not None else 1.0,
        )
        axis.axis("off")
        if panel_titles is not None:
            axis.set_title(panel_titles[index])
    figure.colorbar(shown, ax=list(axes[0]), shrink=0.8, label=label)
    if title:
        figure.suptitle(title)
    return figure
