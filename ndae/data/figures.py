"""Figures of prepared subjects (PNG)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ndae.data.preprocess import PreparedSubject
from ndae.io import atomic_write_bytes


def plot_prepared_subject(prepared: PreparedSubject, path: str | Path) -> None:
    """Three orthogonal views through the brain's centre with the brain-mask outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = np.round(np.argwhere(prepared.mask).mean(axis=0)).astype(int)
    views = {
        "sagittal": (prepared.image[centre[0]], prepared.mask[centre[0]]),
        "coronal": (prepared.image[:, centre[1]], prepared.mask[:, centre[1]]),
        "axial": (prepared.image[:, :, centre[2]], prepared.mask[:, :, centre[2]]),
    }
    figure, axes = plt.subplots(1, 3, figsize=(11, 4))
    for axis, (name, (image, mask)) in zip(axes, views.items()):
        # Arrays are RAS voxel order; transpose and flip so superior/anterior is up.
        shown = axis.imshow(image.T[::-1], cmap="gray", vmin=-1, vmax=1)
        axis.contour(mask.T[::-1], levels=[0.5], colors="tab:orange", linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
    figure.colorbar(shown, ax=list(axes), shrink=0.8, pad=0.01, label="normalised intensity (a.u.)")
    figure.suptitle(f"{prepared.subject}: prepared on the MNI152 2 mm grid (orange: brain mask)")
    # The figure shows a patient's brain: private like the cache it sits in.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue(), private=True)
